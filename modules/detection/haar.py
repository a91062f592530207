"""OpenCV's Haar cascade face detector (Viola and Jones, CVPR 2001; Lienhart's frontal-face cascade),
the baseline the MTCNN cascade is compared with, with the cascade's output format: per image
``boxes`` (K, 4) x0 y0 x1 y1 and ``scores`` (K,).

Two back ends evaluate the same ``haarcascade_frontalface_default.xml``:
- ``opencv``: ``cv2.CascadeClassifier.detectMultiScale3(..., outputRejectLevels=True)``, its level
  weights (the last stage's sum) as scores. OpenCV 4 ships the class and the file
  (``cv2.data.haarcascades``); OpenCV 5 ships neither.
- ``numpy``: the same algorithm written here, for OpenCV 5: a pyramid of the grey image (each scale
  resized by 1 / s, s = scale_factor^k, the 24 x 24 window stepped by 2 pixels up to s = 2 and by 1
  beyond), each window's features normalised by its standard deviation times its area (over the
  window less a 1-pixel border), boosted stumps summed per stage and the window dropped below the
  stage threshold; the windows that pass every stage are grouped as ``groupRectangles`` does
  (similar rectangles: corners within eps = 0.2 of their mean size; groups with more than
  ``min_neighbors`` members, averaged; a group inside a larger, better supported one dropped), the
  score of a group its members' best last-stage sum.
``backend="auto"`` takes OpenCV's class where it exists.

The cascade file: ``cascade_path``, else ``$VISAGE_HAAR_CASCADE``, else OpenCV's data folder. Under
OpenCV 5, take it from an OpenCV 4 wheel without installing it::

    pip download --no-deps opencv-python-headless==4.12.0.88 -d /tmp/ocv4
    unzip -j /tmp/ocv4/opencv_python_headless-*.whl cv2/data/haarcascade_frontalface_default.xml
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from configs.errors import VisageError

CASCADE_NAME = "haarcascade_frontalface_default.xml"
CASCADE_ENV = "VISAGE_HAAR_CASCADE"
GROUP_EPS = 0.2  # OpenCV's grouping tolerance
DENSE_SHARE = 0.25  # above this share of windows still in, a stage is evaluated over the whole grid


class HaarCascadeMissing(VisageError, FileNotFoundError):
    """No cascade file where it was looked for."""


def find_cascade(path: str | Path | None = None) -> Path:
    """The cascade file: ``path``, else $VISAGE_HAAR_CASCADE, else OpenCV's data folder."""
    candidates = [Path(path)] if path else []
    if not path and os.environ.get(CASCADE_ENV):
        candidates.append(Path(os.environ[CASCADE_ENV]))
    data = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not path and data:
        candidates.append(Path(data) / CASCADE_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise HaarCascadeMissing(f"no {CASCADE_NAME} (looked in {looked}): OpenCV 5 does not ship it; take it from an "
                             f"OpenCV 4 wheel (pip download --no-deps opencv-python-headless==4.12.0.88, unzip "
                             f"cv2/data/{CASCADE_NAME}) and pass cascade_path or set {CASCADE_ENV}")


@dataclass(frozen=True)
class HaarCascade:
    """A boosted cascade of Haar stumps, as arrays."""

    width: int
    height: int
    stage_thresholds: np.ndarray  # (S,)
    stage_slices: tuple[tuple[int, int], ...]  # each stage's stumps: [start, stop)
    stump_features: np.ndarray  # (W,) feature index of each stump
    stump_thresholds: np.ndarray  # (W,)
    stump_leaves: np.ndarray  # (W, 2): value when the feature is below / not below the threshold
    rects: np.ndarray  # (F, 3, 4) x y w h of each feature's rectangles (unused ones are zero)
    weights: np.ndarray  # (F, 3)
    rect_counts: np.ndarray  # (F,) rectangles each feature uses (2 or 3)


def _numbers(element, tag: str) -> list[float]:
    return [float(v) for v in element.find(tag).text.split()]


def load_cascade(path: str | Path) -> HaarCascade:
    """Parse an OpenCV cascade file of the new format (``opencv-cascade-classifier``, HAAR, BOOST)
    whose weak classifiers are stumps."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot().find("cascade")
        if root is None or root.findtext("featureType", "").strip() != "HAAR":
            raise ValueError("not a HAAR opencv-cascade-classifier")
        width, height = int(root.findtext("width")), int(root.findtext("height"))
        thresholds, slices, features, stump_thresholds, leaves = [], [], [], [], []
        for stage in root.find("stages"):
            thresholds.append(float(stage.findtext("stageThreshold")))
            start = len(features)
            for weak in stage.find("weakClassifiers"):
                left, right, feature, threshold = _numbers(weak, "internalNodes")
                if (left, right) != (0, -1):
                    raise ValueError("only stumps (internalNodes 0 -1 feature threshold) are read")
                features.append(int(feature))
                stump_thresholds.append(threshold)
                leaves.append(_numbers(weak, "leafValues"))
            slices.append((start, len(features)))
        feature_rects = []
        for feature in root.find("features"):
            if (feature.findtext("tilted") or "0").strip() == "1":
                raise ValueError("tilted features are not read")
            feature_rects.append([[float(v) for v in r.text.split()] for r in feature.find("rects")])
    except (ElementTree.ParseError, ValueError, TypeError, AttributeError) as err:
        raise VisageError(f"{path}: not a readable Haar cascade ({err})") from None
    if any(len(r) not in (2, 3) for r in feature_rects):
        raise VisageError(f"{path}: Haar features hold 2 or 3 rectangles")
    rects = np.zeros((len(feature_rects), 3, 4), np.int64)
    weights = np.zeros((len(feature_rects), 3))
    for i, feature in enumerate(feature_rects):
        for j, (x, y, w, h, weight) in enumerate(feature):
            rects[i, j], weights[i, j] = (x, y, w, h), weight
    return HaarCascade(width, height, np.array(thresholds), tuple(slices), np.array(features), np.array(stump_thresholds),
                       np.array(leaves), rects, weights, np.array([len(r) for r in feature_rects]))


def _corner_offsets(rects: np.ndarray, stride: int) -> np.ndarray:
    """(..., 4) flat offsets of a rectangle's integral-image corners: (y0, x0), (y0, x1), (y1, x0), (y1, x1)."""
    x, y, w, h = rects[..., 0], rects[..., 1], rects[..., 2], rects[..., 3]
    return np.stack([y * stride + x, y * stride + x + w, (y + h) * stride + x, (y + h) * stride + x + w], axis=-1)


def _rect_sums(integral: np.ndarray, origins: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    corners = integral[origins.reshape((-1,) + (1,) * offsets.ndim) + offsets[None]]
    return corners[..., 0] - corners[..., 1] - corners[..., 2] + corners[..., 3]


def _dense_feature_values(integral: np.ndarray, cascade: "HaarCascade", features: np.ndarray, rows: int, cols: int,
                          step: int) -> np.ndarray:
    """(K, rows * cols) weighted rectangle sums of ``features`` in every window of the grid (window
    origins every ``step`` pixels), by strided slices of the 2-D integral image: far cheaper than
    gathering corners while most windows are still in."""
    span_y, span_x = (rows - 1) * step + 1, (cols - 1) * step + 1

    def corner(y, x):
        return integral[y:y + span_y:step, x:x + span_x:step]

    out = np.zeros((len(features), rows, cols))
    for k, f in enumerate(features):
        for (x, y, w, h), weight in zip(cascade.rects[f][:cascade.rect_counts[f]], cascade.weights[f]):
            out[k] += weight * (corner(y, x) - corner(y, x + w) - corner(y + h, x) + corner(y + h, x + w))
    return out.reshape(len(features), -1)


def cascade_windows(cascade: HaarCascade, grey: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the windows of ``grey`` (one pyramid level) that pass every stage, and their last
    stage's sum."""
    height, width = grey.shape
    if width < cascade.width or height < cascade.height:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    total2d, squares = cv2.integral2(grey, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
    stride = width + 1
    total, squares = total2d.ravel(), squares.ravel()
    ys, xs = np.mgrid[0:height - cascade.height + 1:step, 0:width - cascade.width + 1:step]
    grid = ys.shape
    xs, ys = xs.ravel(), ys.ravel()
    origins = ys * stride + xs
    # the normalising window: 1 pixel in from each side; nf = sqrt(area * sum(x^2) - sum(x)^2)
    inner = np.array([1, 1, cascade.width - 2, cascade.height - 2])
    inner_offsets = _corner_offsets(inner, stride)
    area = float(inner[2] * inner[3])
    sums, sq = _rect_sums(total, origins, inner_offsets), _rect_sums(squares, origins, inner_offsets)
    nf = area * sq - sums * sums
    norm = np.where(nf > 0, np.sqrt(np.maximum(nf, 0)), 1.0)
    offsets = _corner_offsets(cascade.rects, stride)  # (F, 3, 4)
    stage_sum = np.zeros(len(origins))
    alive = np.arange(len(origins))  # positions in the full grid of the windows still in
    for threshold, (start, stop) in zip(cascade.stage_thresholds, cascade.stage_slices):
        if not len(alive):
            break
        features = cascade.stump_features[start:stop]
        if len(alive) > DENSE_SHARE * len(origins):  # most windows still in: every window by slicing
            values = _dense_feature_values(total2d, cascade, features, grid[0], grid[1], step)[:, alive]
        else:  # gather the survivors' corners, leaving out the third rectangle where it is unused
            values = np.empty((len(features), len(alive)))
            for used in (2, 3):
                columns = cascade.rect_counts[features] == used
                chosen = features[columns]
                values[columns] = np.einsum("nkr,kr->kn", _rect_sums(total, origins[alive], offsets[chosen][:, :used]),
                                            cascade.weights[chosen][:, :used])
        below = values < cascade.stump_thresholds[start:stop][:, None] * norm[alive][None, :]
        left, right = cascade.stump_leaves[start:stop, 0], cascade.stump_leaves[start:stop, 1]
        stage_sum = right.sum() + (left - right) @ below  # each stump adds left when below, else right
        keep = stage_sum >= threshold
        alive, stage_sum = alive[keep], stage_sum[keep]
    return np.stack([xs[alive], ys[alive]], axis=1), stage_sum


def _similar(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """OpenCV's SimilarRects on (N, 4) x y w h against (M, 4): every edge within eps of the mean size."""
    delta = eps * (np.minimum(a[:, None, 2], b[None, :, 2]) + np.minimum(a[:, None, 3], b[None, :, 3])) * 0.5
    near = [np.abs(a[:, None, 0] - b[None, :, 0]), np.abs(a[:, None, 1] - b[None, :, 1]),
            np.abs(a[:, None, 0] + a[:, None, 2] - b[None, :, 0] - b[None, :, 2]),
            np.abs(a[:, None, 1] + a[:, None, 3] - b[None, :, 1] - b[None, :, 3])]
    return np.all(np.stack(near) <= delta[None], axis=0)


def group_rectangles(rects: np.ndarray, weights: np.ndarray, min_neighbors: int,
                     eps: float = GROUP_EPS) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``groupRectangles`` with weights: classes of transitively similar x y w h rectangles,
    those with more than ``min_neighbors`` members averaged (rounded), a class lying inside another
    with more support dropped; each class's weight is its best member's."""
    rects = np.asarray(rects, np.float64).reshape(-1, 4)
    if not len(rects):
        return np.zeros((0, 4)), np.zeros(0)
    parent = np.arange(len(rects))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(_similar(rects, rects, eps), 1))):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    labels = np.array([root(i) for i in range(len(rects))])
    classes = np.unique(labels)
    counts = np.array([np.sum(labels == c) for c in classes])
    means = np.array([np.round(rects[labels == c].mean(axis=0)) for c in classes])
    best = np.array([weights[labels == c].max() for c in classes])
    out, scores = [], []
    for i, (r1, n1) in enumerate(zip(means, counts)):
        if n1 <= min_neighbors:
            continue
        inside = False
        for j, (r2, n2) in enumerate(zip(means, counts)):
            if j == i or n2 <= min_neighbors:
                continue
            dx, dy = round(r2[2] * eps), round(r2[3] * eps)
            if (r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                    and r1[1] + r1[3] <= r2[1] + r2[3] + dy and (n2 > max(3, n1) or n1 < 3)):
                inside = True
                break
        if not inside:
            out.append(r1)
            scores.append(best[i])
    return np.array(out, np.float64).reshape(-1, 4), np.array(scores, np.float64)


class HaarFaceDetector:
    """The Haar cascade as a face detector: ``detect(image)`` -> {"boxes": (K, 4) x0 y0 x1 y1,
    "scores": (K,)} for an RGB (or grey) uint8 image; ``min_face`` is the smallest face side in
    pixels searched for."""

    def __init__(self, min_face: int = 20, scale_factor: float = 1.1, min_neighbors: int = 3,
                 cascade_path: str | Path | None = None, backend: str = "auto"):
        if backend not in ("auto", "opencv", "numpy"):
            raise ValueError(f"backend must be auto, opencv or numpy, got {backend!r}")
        if backend == "auto":
            backend = "opencv" if hasattr(cv2, "CascadeClassifier") else "numpy"
        if backend == "opencv" and not hasattr(cv2, "CascadeClassifier"):
            raise VisageError(f"OpenCV {cv2.__version__} has no CascadeClassifier: use backend='numpy'")
        self.path = find_cascade(cascade_path)
        self.backend, self.min_face, self.scale_factor, self.min_neighbors = backend, min_face, scale_factor, min_neighbors
        if backend == "opencv":
            self.classifier = cv2.CascadeClassifier(str(self.path))
        else:
            self.cascade = load_cascade(self.path)

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else np.asarray(image)
        if self.backend == "opencv":
            found, _, weights = self.classifier.detectMultiScale3(
                grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(self.min_face, self.min_face), outputRejectLevels=True)
            rects = np.asarray(found, np.float64).reshape(-1, 4)
            scores = np.asarray(weights, np.float64).reshape(-1)
        else:
            rects, scores = self._detect_numpy(grey)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)  # pixel columns x .. x + w - 1
        order = np.argsort(-scores, kind="stable")
        return {"boxes": boxes[order].astype(np.float32), "scores": scores[order].astype(np.float32)}

    def __call__(self, images) -> list[dict[str, np.ndarray]]:
        return [self.detect(image) for image in images]

    def _detect_numpy(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cascade
        height, width = grey.shape
        rects, weights = [], []
        scale = 1.0
        while True:
            window_w, window_h = round(c.width * scale), round(c.height * scale)
            if window_w > width or window_h > height:
                break
            if window_w >= self.min_face and window_h >= self.min_face:
                size = (round(width / scale), round(height / scale))
                level = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
                where, sums = cascade_windows(c, level, 2 if scale <= 2 else 1)
                for (x, y), weight in zip(where, sums):
                    rects.append((round(x * scale), round(y * scale), window_w, window_h))
                    weights.append(weight)
            scale *= self.scale_factor
        return group_rectangles(np.array(rects, np.float64), np.array(weights), self.min_neighbors)
