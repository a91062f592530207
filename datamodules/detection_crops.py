"""Training crops for the MTCNN stages from one scene (Zhang et al. 2016, section 2.3 "training data").

A crop is a window of the scene resized to the stage's input (12, 24 or 48 pixels) with a kind by its
IoU with the scene's faces (codecs/crop_kinds.py): negative below 0.3 with every face, part from 0.4
to 0.65, positive above 0.65; landmark crops are positive-like windows around faces that have 5
points. Positive, part and landmark crops carry the box offsets of their best-IoU face relative to the
window (codecs/box_offsets.encode_boxes); landmark crops carry its points (encode_landmarks).
Windows whose best IoU falls between the bands (0.3 to 0.4), or whose best-IoU face is ignored
(invalid, or smaller than ``min_face``) with an IoU of 0.3 or more, are dropped: ignored faces never
become positives or parts, and are never cut as negatives either.

Windows are whole pixels (x0, y0, x1, y1 integers) so that the targets are exact for the pixels cut;
a window may cross the image border, and the part outside is black (zero padding).

``sample_crops`` draws the windows of one scene (P-Net data; random negatives anywhere, negatives,
parts, positives and landmark crops around faces), by default ``per_face`` positives per usable face
and the other kinds in the ratio ``mix`` (neg:pos:part:landmark = 3:1:1:2). ``crops_from_windows``
labels given windows instead: a cascade stage's detections, the hard examples of R-Net and O-Net.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.codecs.box_offsets import encode_boxes, encode_landmarks
from datamodules.codecs.crop_kinds import (
    IGNORED, KIND_NAMES, LANDMARK, MIX_BY_NAME, NEGATIVE, NEGATIVE_BELOW, PART, POSITIVE, kind_from_iou,
)
from datamodules.layouts import FIVE

ROUNDS = 12  # rounds of candidate windows per kind before giving up on a count
CANDIDATES = 64  # candidate windows per round


@dataclass
class Crops:
    """Crops of one scene, in parallel arrays."""

    images: np.ndarray  # (N, size, size, 3) uint8 RGB
    kinds: np.ndarray  # (N,) crop_kinds codes
    windows: np.ndarray  # (N, 4) whole-pixel windows x0 y0 x1 y1 in the scene
    faces: np.ndarray  # (N,) index of the best-IoU face, -1 for negatives
    ious: np.ndarray  # (N,) IoU with that face (the largest IoU with any face for negatives)
    offsets: np.ndarray  # (N, 4) box offsets of the face in the window; NaN for negatives
    landmarks: np.ndarray  # (N, 5, 2) the face's points as window fractions; NaN where there are none
    sources: np.ndarray  # (N,) index of the given window (crops_from_windows), -1 for sampled ones

    def __len__(self) -> int:
        return len(self.kinds)

    def annotation(self, i: int, decimals: int = 5) -> dict:
        """Crop ``i`` as schema fields (crop_kind, crop_offsets, crop_landmarks; null where none)."""
        offsets, points = self.offsets[i], self.landmarks[i]
        return {"crop_kind": int(self.kinds[i]),
                "crop_offsets": None if np.isnan(offsets).any() else np.round(offsets, decimals).tolist(),
                "crop_landmarks": None if np.isnan(points).any() else np.round(points, decimals).tolist()}


def iou_matrix(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K, N) IoU of every window with every box, continuous coordinates (an empty box: 0)."""
    windows, boxes = np.asarray(windows, np.float64).reshape(-1, 4), np.asarray(boxes, np.float64).reshape(-1, 4)
    low = np.maximum(windows[:, None, :2], boxes[None, :, :2])
    high = np.minimum(windows[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_w = np.prod(np.clip(windows[:, 2:] - windows[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    union = area_w[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def classify_windows(windows: np.ndarray, boxes: np.ndarray, ignored: np.ndarray) -> tuple[np.ndarray, ...]:
    """(kinds, best face, best IoU) of windows against the faces: NEGATIVE, PART, POSITIVE or IGNORED
    (between the bands, or best face ignored with IoU >= NEGATIVE_BELOW)."""
    windows = np.asarray(windows, np.float64).reshape(-1, 4)
    kinds = np.full(len(windows), NEGATIVE, dtype=np.int64)
    if not len(boxes):
        return kinds, np.full(len(windows), -1), np.zeros(len(windows))
    ious = iou_matrix(windows, boxes)
    best = ious.argmax(axis=1)
    best_iou = ious[np.arange(len(windows)), best]
    kinds = kind_from_iou(best_iou)
    kinds[(best_iou >= NEGATIVE_BELOW) & np.asarray(ignored, bool)[best]] = IGNORED
    best = np.where(kinds == NEGATIVE, -1, best)
    return kinds, best, best_iou


def cut_windows(image: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """(K, size, size, 3) crops of whole-pixel windows, black outside the image, resized (area
    averaging when shrinking, bilinear when growing)."""
    height, width = image.shape[:2]
    out = np.zeros((len(windows), size, size, 3), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(windows, dtype=np.int64)):
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        patch = np.zeros((h, w, 3), dtype=np.uint8)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if ix1 > ix0 and iy1 > iy0:
            patch[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
        shrink = w > size or h > size
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out


def _as_points(landmarks, count: int) -> np.ndarray:
    """(N, 5, 2) points, NaN for faces without them, from a list of (5, 2) / None or an array."""
    points = np.full((count, FIVE.num_points, 2), np.nan)
    if landmarks is None:
        return points
    for i, face in enumerate(landmarks):
        if face is not None:
            points[i] = np.asarray(face, dtype=np.float64).reshape(FIVE.num_points, 2)
    return points


def _square_around(rng: np.random.Generator, boxes: np.ndarray, scale: tuple[float, float], shift: float,
                   count: int, min_side: int) -> np.ndarray:
    """``count`` whole-pixel square windows per box: side max(w, h) times a log-uniform ``scale``, centre
    moved by up to ``shift`` times the box's size."""
    w, h = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
    side = np.maximum(w, h) * np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), (len(boxes), count)))
    side = np.maximum(np.round(side), min_side)
    cx = (boxes[:, 0:1] + boxes[:, 2:3]) / 2 + rng.uniform(-shift, shift, side.shape) * w
    cy = (boxes[:, 1:2] + boxes[:, 3:4]) / 2 + rng.uniform(-shift, shift, side.shape) * h
    x0, y0 = np.round(cx - side / 2), np.round(cy - side / 2)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=2).reshape(-1, 4)


def _random_windows(rng: np.random.Generator, width: int, height: int, count: int, min_side: int) -> np.ndarray:
    """Whole-pixel squares inside the image, side from ``min_side`` to half the shorter image side."""
    top = max(min_side, min(width, height) // 2)
    side = rng.integers(min_side, top + 1, count)
    x0 = np.floor(rng.uniform(0, 1, count) * np.maximum(width - side + 1, 1))
    y0 = np.floor(rng.uniform(0, 1, count) * np.maximum(height - side + 1, 1))
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float64)


def default_counts(usable_faces: int, landmark_faces: int, per_face: int = 2, mix: dict | None = None) -> dict[str, int]:
    """Crops per kind for a scene: ``per_face`` positives per usable face and the other kinds by
    ``mix`` relative to them (a scene without usable faces gets the negatives of one face)."""
    mix = {**MIX_BY_NAME, **(mix or {})}
    unit = per_face * max(1, usable_faces) / mix["positive"]
    counts = {kind: int(round(mix[kind] * unit)) for kind in KIND_NAMES}
    if usable_faces == 0:
        counts.update(positive=0, part=0, landmark=0)
    if landmark_faces == 0:
        counts["landmark"] = 0
    return counts


def sample_crops(image: np.ndarray, boxes, landmarks, invalid_mask, size: int, rng: np.random.Generator,
                 counts: dict[str, int] | None = None, per_face: int = 2, mix: dict | None = None,
                 min_face: float = 12.0, min_window: int = 12) -> Crops:
    """Crops of one scene for a stage of input ``size``.

    ``boxes`` (N, 4) x0 y0 x1 y1; ``landmarks``: per face (5, 2) points or None (or an (N, 5, 2)
    array, NaN for none, or None for no face); ``invalid_mask`` (N,) bool: faces to ignore. Faces
    shorter and narrower than ``min_face`` pixels are ignored too. ``counts`` sets the crops per
    kind ({"negative": n, ...}); by default ``default_counts(usable faces, per_face, mix)``. Kinds
    that cannot be filled within ROUNDS rounds of candidates come short."""
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    points = _as_points(landmarks, len(boxes))
    ignored = np.asarray(invalid_mask, bool).reshape(-1) if invalid_mask is not None else np.zeros(len(boxes), bool)
    if len(ignored) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(ignored)} invalid flags")
    small = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < min_face
    ignored = ignored | small
    usable = np.flatnonzero(~ignored)
    with_points = usable[~np.isnan(points[usable]).any(axis=(1, 2))]
    want = counts if counts is not None else default_counts(len(usable), len(with_points), per_face, mix)
    want = {kind: int(want.get(kind, 0)) for kind in KIND_NAMES}

    chosen: dict[int, list[np.ndarray]] = {NEGATIVE: [], POSITIVE: [], PART: [], LANDMARK: []}
    found = {kind: 0 for kind in chosen}

    def take(kind: int, windows: np.ndarray, kinds: np.ndarray, need: int) -> None:
        picked = windows[kinds == kind][:max(0, need - found[kind])]
        if len(picked):
            chosen[kind].append(picked)
            found[kind] += len(picked)

    # negatives: half near the faces (hard), the rest anywhere; all of them anywhere without faces
    near = want["negative"] // 2 if len(usable) else 0
    for _ in range(ROUNDS):
        if found[NEGATIVE] >= near:
            break
        candidates = _square_around(rng, boxes[usable], (0.5, 1.6), 1.2, CANDIDATES // len(usable) + 1, min_window)
        kinds, _, _ = classify_windows(candidates, boxes, ignored)
        take(NEGATIVE, candidates, kinds, near)
    for _ in range(ROUNDS):
        if found[NEGATIVE] >= want["negative"]:
            break
        candidates = _random_windows(rng, width, height, CANDIDATES, min_window)
        kinds, _, _ = classify_windows(candidates, boxes, ignored)
        take(NEGATIVE, candidates, kinds, want["negative"])
    # positives, parts and landmark crops around usable faces
    plans = ((POSITIVE, usable, (0.85, 1.2), 0.12, want["positive"]), (PART, usable, (0.7, 1.4), 0.4, want["part"]),
             (LANDMARK, with_points, (0.85, 1.2), 0.1, want["landmark"]))
    for kind, faces, scale, shift, need in plans:
        for _ in range(ROUNDS if len(faces) else 0):
            if found[kind] >= need:
                break
            per = CANDIDATES // len(faces) + 1
            candidates = _square_around(rng, boxes[faces], scale, shift, per, min_window)
            kinds, best, _ = classify_windows(candidates, boxes, ignored)
            if kind == LANDMARK:  # a positive window whose best face has points
                kinds = np.where((kinds == POSITIVE) & np.isin(best, with_points), LANDMARK, IGNORED)
            # interleave the faces so that a short count spreads over them
            order = np.arange(len(candidates)).reshape(len(faces), per).T.ravel()
            take(kind, candidates[order], kinds[order], need)

    windows = np.concatenate([np.concatenate(chosen[k]) if chosen[k] else np.zeros((0, 4))
                              for k in (NEGATIVE, POSITIVE, PART, LANDMARK)])
    kinds = np.concatenate([np.full(found[k], k) for k in (NEGATIVE, POSITIVE, PART, LANDMARK)]).astype(np.int64)
    return _assemble(image, windows, kinds, boxes, points, ignored, size, np.full(len(kinds), -1))


def crops_from_windows(image: np.ndarray, windows, boxes, landmarks, size: int, invalid_mask=None,
                       min_face: float = 0.0) -> Crops:
    """Label given windows (a cascade stage's detections: its false positives are the next stage's
    hard negatives) by the same IoU bands and cut them. Windows are rounded to whole pixels and
    kept as they are otherwise (square them first, as the cascade does); those in no band are
    dropped (``sources`` says which window each crop came from). Positives of faces with points
    carry them as landmark targets too."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    points = _as_points(landmarks, len(boxes))
    ignored = np.asarray(invalid_mask, bool).reshape(-1) if invalid_mask is not None else np.zeros(len(boxes), bool)
    small = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < min_face
    windows = np.round(np.asarray(windows, np.float64).reshape(-1, 4))
    kinds, _, _ = classify_windows(windows, boxes, ignored | small)
    keep = np.flatnonzero((kinds != IGNORED) & (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1]))
    return _assemble(image, windows[keep], kinds[keep], boxes, points, ignored | small, size, keep)


def _assemble(image, windows, kinds, boxes, points, ignored, size, sources) -> Crops:
    """Targets of the chosen windows against their best-IoU faces, and the cut crops."""
    count = len(kinds)
    offsets = np.full((count, 4), np.nan, dtype=np.float32)
    targets = np.full((count, FIVE.num_points, 2), np.nan, dtype=np.float32)
    if len(boxes) and count:
        ious = iou_matrix(windows, boxes)
        faces = ious.argmax(axis=1)
        best_iou = ious[np.arange(count), faces]
    else:
        faces, best_iou = np.zeros(count, dtype=np.int64), np.zeros(count)
    faces = np.where(kinds == NEGATIVE, -1, faces)
    with_face = np.flatnonzero(faces >= 0)
    if len(with_face):
        offsets[with_face] = encode_boxes(windows[with_face], boxes[faces[with_face]]).numpy()
        has_points = with_face[~np.isnan(points[faces[with_face]]).any(axis=(1, 2))]
        if len(has_points):
            targets[has_points] = encode_landmarks(windows[has_points], points[faces[has_points]]).numpy()
    landmark_rows = kinds == LANDMARK
    if np.isnan(targets[landmark_rows]).any():
        raise AssertionError("a landmark crop without landmark targets")  # sample_crops picks faces with points
    return Crops(cut_windows(image, windows, size), kinds, windows, faces.astype(np.int64), best_iou,
                 offsets, targets, np.asarray(sources, dtype=np.int64))
