"""Random backgrounds for synthetic face crops: colour gradients, blotchy textures, stripes and clutter."""
from __future__ import annotations

import numpy as np
import cv2

AA = cv2.LINE_AA
GRID_SIZES = (2, 2, 3, 4, 6)  # coarse grids give gradients, finer ones blotchy textures


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(0, 255, 3))


def draw_background(rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
    """A (size, size, 3) uint8 RGB background; clutter grows with ``difficulty``."""
    k = GRID_SIZES[rng.integers(len(GRID_SIZES))]
    base = rng.uniform(0, 255, 3)
    grid = (base + (rng.uniform(0, 255, (k, k, 3)) - base) * rng.uniform(0.2, 1.0)).astype(np.uint8)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)  # bilinear colour field
    if rng.uniform() < 0.2:  # stripes
        colour, step = _colour(rng), rng.uniform(0.08, 0.25) * size
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 2 * size, np.sin(angle) * 2 * size
        thickness = max(1, int(step * rng.uniform(0.15, 0.5)))
        for j in range(int(2 * size / step) + 1):
            off = (j - size / step) * step
            cx, cy = size / 2 - np.sin(angle) * off, size / 2 + np.cos(angle) * off
            cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), colour, thickness, AA)
    for _ in range(int(rng.integers(0, 1 + round(5 * difficulty)))):
        kind = rng.integers(4)
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.35) * size
        colour = _colour(rng)
        if kind == 0:
            cv2.rectangle(img, (int(x - r), int(y - r * rng.uniform(0.3, 1.5))),
                          (int(x + r), int(y + r * rng.uniform(0.3, 1.5))), colour, -1, AA)
        elif kind == 1:
            cv2.circle(img, (int(x), int(y)), int(r), colour, -1, AA)
        elif kind == 2:
            a = rng.uniform(0, np.pi)
            dx, dy = r * np.cos(a), r * np.sin(a)
            cv2.line(img, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), colour,
                     max(1, int(rng.uniform(0.01, 0.05) * size)), AA)
        else:
            pts = (np.array([x, y]) + rng.uniform(-r, r, (3, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, AA)
    return img
