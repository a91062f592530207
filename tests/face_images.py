"""Real photos with faces for detector tests and benchmarks (offline, from scikit-image's data):
the astronaut photo, and 640x480 composites of real faces on a real photo without faces.

A composite pastes onto the coffee photo (no face in it; mirrored or not) three copies of the
astronaut's head with its surroundings at random sizes (50-190 px tall, mirrored or not) and two
LFW faces of ``lfw_subset()`` (tight 25x25 crops, upscaled to 60-110 px, grey), without overlaps.
"""
from __future__ import annotations

import cv2
import numpy as np

CANVAS = (480, 640)  # height, width
ASTRONAUT_HEAD = (slice(20, 220), slice(130, 320))  # rows, columns of the head and some background


def astronaut() -> np.ndarray:
    from skimage import data  # noqa: PLC0415

    return data.astronaut()


def astronaut_640x480() -> np.ndarray:
    """The astronaut photo scaled to 480 rows and centred on a 640x480 black canvas."""
    photo = cv2.resize(astronaut(), (480, 480), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((*CANVAS, 3), np.uint8)
    canvas[:, 80:560] = photo
    return canvas


def _paste_without_overlap(canvas: np.ndarray, patch: np.ndarray, placed: list, rng: np.random.Generator) -> None:
    height, width = patch.shape[:2]
    for _ in range(1000):
        x, y = int(rng.integers(0, canvas.shape[1] - width)), int(rng.integers(0, canvas.shape[0] - height))
        if all(x + width + 4 < px or px + pw + 4 < x or y + height + 4 < py or py + ph + 4 < y
               for px, py, pw, ph in placed):
            break
    placed.append((x, y, width, height))
    canvas[y:y + height, x:x + width] = patch


def face_composite(seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 640x480 RGB composite with 5 real faces, and where each was pasted (x, y, width, height)."""
    from skimage import data  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    canvas = cv2.resize(data.coffee(), CANVAS[::-1], interpolation=cv2.INTER_AREA)
    canvas = np.ascontiguousarray(canvas[:, ::-1] if rng.random() < 0.5 else canvas)
    head = astronaut()[ASTRONAUT_HEAD]
    patches = []
    for _ in range(3):
        height = int(rng.integers(50, 190))
        patch = cv2.resize(head, (round(height * head.shape[1] / head.shape[0]), height), interpolation=cv2.INTER_AREA)
        patches.append(patch[:, ::-1] if rng.random() < 0.5 else patch)
    lfw = data.lfw_subset()
    for _ in range(2):
        side = int(rng.integers(60, 110))
        grey = cv2.resize((lfw[int(rng.integers(100))] * 255).astype(np.uint8), (side, side),
                          interpolation=cv2.INTER_CUBIC)
        patches.append(np.repeat(grey[:, :, None], 3, axis=2))
    placed: list[tuple[int, int, int, int]] = []
    for patch in patches:
        _paste_without_overlap(canvas, patch, placed, rng)
    return canvas, placed
