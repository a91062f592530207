"""OpenCV's Haar cascade face detector (Viola and Jones, CVPR 2001; Lienhart's frontal-face cascade
``haarcascade_frontalface_default.xml``, shipped with opencv-python-headless 4), the baseline the
MTCNN cascade is compared with, in the cascade's output format: per image ``boxes`` (K, 4)
x0 y0 x1 y1 and ``scores`` (K,), the scores being the level weights of
``detectMultiScale3(..., outputRejectLevels=True)`` (the last stage's sum of each window)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from configs.errors import VisageError

CASCADE_NAME = "haarcascade_frontalface_default.xml"


class HaarCascadeMissing(VisageError, FileNotFoundError):
    """No cascade file where it was looked for."""


def find_cascade(path: str | Path | None = None) -> Path:
    """The cascade file: ``path``, else the one in OpenCV's data folder."""
    candidate = Path(path) if path else Path(cv2.data.haarcascades) / CASCADE_NAME
    if not candidate.is_file():
        raise HaarCascadeMissing(f"no Haar cascade at {candidate} (opencv-python-headless 4 ships "
                                 f"cv2/data/{CASCADE_NAME}; OpenCV 5 does not)")
    return candidate


class HaarFaceDetector:
    """The Haar cascade as a face detector: ``detect(image)`` -> {"boxes": (K, 4) x0 y0 x1 y1,
    "scores": (K,)} for an RGB (or grey) uint8 image; ``min_face`` is the smallest face side in
    pixels searched for."""

    def __init__(self, min_face: int = 20, scale_factor: float = 1.1, min_neighbors: int = 3,
                 cascade_path: str | Path | None = None):
        self.path = find_cascade(cascade_path)
        self.min_face, self.scale_factor, self.min_neighbors = min_face, scale_factor, min_neighbors
        self.classifier = cv2.CascadeClassifier(str(self.path))

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else np.asarray(image)
        found, _, weights = self.classifier.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face, self.min_face), outputRejectLevels=True)
        rects = np.asarray(found, np.float64).reshape(-1, 4)
        scores = np.asarray(weights, np.float64).reshape(-1)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)  # x, y, w, h -> corners
        order = np.argsort(-scores, kind="stable")
        return {"boxes": boxes[order].astype(np.float32), "scores": scores[order].astype(np.float32)}

    def __call__(self, images) -> list[dict[str, np.ndarray]]:
        return [self.detect(image) for image in images]
