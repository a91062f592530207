"""Pixel work on a scene canvas for ``scenes.py``: which pixels a drawing changed (and who owns them),
occluders over a face, a light gain or a blur on a face's own pixels, the ellipse inscribed in a box.
The owner map holds, per pixel, the code of the face that drew it last (-1 background, -2 occluder)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from datamodules.synth.clutter import skin_colour
from datamodules.synth.nuisance import gaussian_blur


def roi(box, grow: float, width: int, height: int) -> tuple[slice, slice]:
    """Row and column slices of ``box`` grown by ``grow`` pixels on every side, clipped to the image."""
    x0, y0 = max(0, int(box[0] - grow)), max(0, int(box[1] - grow))
    x1, y1 = min(width, int(math.ceil(box[2] + grow))), min(height, int(math.ceil(box[3] + grow)))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def paint_tracked(canvas: np.ndarray, owner: np.ndarray, rows: slice, cols: slice, code: int, paint) -> np.ndarray:
    """Run ``paint()`` (drawing into ``canvas``) and give the pixels it changed inside the ROI to
    ``code`` in the owner map. Returns the changed-pixel mask of the ROI."""
    before = canvas[rows, cols].copy()
    paint()
    difference = cv2.absdiff(canvas[rows, cols], before)
    changed = (difference[:, :, 0] | difference[:, :, 1] | difference[:, :, 2]) != 0  # 15x np.any(axis=2)
    owner[rows, cols][changed] = code
    return changed


def draw_occluder(canvas: np.ndarray, rng: np.random.Generator, box) -> None:
    """One occluder over part of a face box: a bar, a block from one side, a blob, a hand or a mask."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
    kind = int(rng.integers(5))
    aa = cv2.LINE_AA
    if kind == 0:  # a bar across the face (a pole, a strap)
        cx, cy, angle = rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * w, math.sin(angle) * h
        cv2.line(canvas, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), colour,
                 max(1, int(rng.uniform(0.08, 0.25) * h)), aa)
    elif kind == 1:  # a block from one side (a sign, a shoulder, the edge of something in front)
        share = rng.uniform(0.1, 0.8)
        side = int(rng.integers(4))
        if side == 0:
            corners = (x0 - w, y0 - h, x0 + share * w, y1 + h)
        elif side == 1:
            corners = (x1 - share * w, y0 - h, x1 + w, y1 + h)
        elif side == 2:
            corners = (x0 - w, y1 - share * h, x1 + w, y1 + h)
        else:
            corners = (x0 - w, y0 - h, x1 + w, y0 + share * h)
        cv2.rectangle(canvas, (int(corners[0]), int(corners[1])), (int(corners[2]), int(corners[3])), colour, -1, aa)
    elif kind == 2:  # a blob
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        axes = (max(1, int(rng.uniform(0.15, 0.45) * w)), max(1, int(rng.uniform(0.15, 0.45) * h)))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, aa)
    elif kind == 3:  # a hand coming from one side
        cy = rng.uniform(y0 + 0.3 * h, y1)
        bx = x0 - 0.1 * w if rng.uniform() < 0.5 else x1 + 0.1 * w
        cv2.ellipse(canvas, (int(bx), int(cy)), (max(1, int(0.5 * w)), max(1, int(0.2 * h))), 0, 0, 360,
                    skin_colour(rng), -1, aa)
    else:  # a mask over the mouth and nose
        top = y0 + rng.uniform(0.5, 0.65) * h
        points = np.array([[x0 + 0.05 * w, top], [x1 - 0.05 * w, top], [x1 - 0.15 * w, y1 - 0.02 * h],
                           [x0 + 0.15 * w, y1 - 0.02 * h]])
        light = tuple(float(c) for c in rng.uniform(170, 255, 3))
        cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], light, aa, 4)


def light(canvas: np.ndarray, mask: np.ndarray, rows: slice, cols: slice, gain: float) -> None:
    """Scale the masked pixels of the ROI by ``gain`` (saturating)."""
    roi = canvas[rows, cols]
    cv2.copyTo(cv2.convertScaleAbs(roi, alpha=gain), mask.view(np.uint8), roi)


def blur_face(canvas: np.ndarray, owner: np.ndarray, code: int, rows: slice, cols: slice, sigma: float) -> None:
    """Blur the pixels the face owns (head and body) inside the ROI, blended in through a feathered
    mask."""
    height, width = canvas.shape[:2]
    x, y, w, h = cv2.boundingRect((owner[rows, cols] == code).view(np.uint8))
    if w == 0 or h == 0:
        return
    pad = int(3 * sigma) + 2
    x, y = x + cols.start, y + rows.start
    rows = slice(max(0, y - pad), min(height, y + h + pad))
    cols = slice(max(0, x - pad), min(width, x + w + pad))
    roi = canvas[rows, cols]
    mask = gaussian_blur((owner[rows, cols] == code).astype(np.float32), sigma)[:, :, None]
    blurred = gaussian_blur(roi, sigma).astype(np.float32)
    canvas[rows, cols] = (roi * (1 - mask) + blurred * mask + 0.5).astype(np.uint8)


def ellipse_pixels(box, width: int, height: int) -> tuple[slice, slice, np.ndarray, float]:
    """Pixels of the ellipse inscribed in ``box`` (pixel centres inside it), within the image, and
    the share of the whole ellipse's area that lies inside the image."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    c0, c1 = max(0, int(math.floor(x0))), min(width, int(math.ceil(x1)))
    r0, r1 = max(0, int(math.floor(y0))), min(height, int(math.ceil(y1)))
    xs = (np.arange(c0, c1) + 0.5 - cx) / rx
    ys = (np.arange(r0, r1) + 0.5 - cy) / ry
    inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
    share = float(inside.sum()) / (math.pi * rx * ry)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1)), inside, min(1.0, share)
