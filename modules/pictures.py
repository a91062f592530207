"""Pictures for people: samples with their ground truth, retrieval rows, curve charts (ROC,
precision-recall), hard pairs.

Everything is drawn with OpenCV and returned as an (H, W, 3) uint8 RGB array on a white background,
ready for a logger (wandb.Image takes RGB arrays) or for ``save_png``. Inputs may be uint8 or float
images in [0, 1], RGB or grey, HWC numpy arrays or CHW torch tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID_GREY = (225, 225, 225)
QUERY_GREY = (110, 110, 110)
RIGHT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (220, 0, 0)
BOX_COLOUR = (0, 200, 255)
LANDMARK_COLOUR = (255, 40, 40)
KEYPOINT_COLOUR = (255, 140, 0)
SKELETON_COLOUR = (40, 110, 255)
# distinguishable curve colours (RGB), used in order
CURVE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE = 0.45
CAPTION_HEIGHT = 18
GAP = 6


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def to_rgb_uint8(image) -> np.ndarray:
    """An (H, W, 3) uint8 copy of an image given as HWC/CHW/HW, uint8 or float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.transpose(x, (1, 2, 0))
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.stack([x, x, x], axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"cannot read an image of shape {np.shape(image)}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def save_png(path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG (parent folders created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(to_rgb_uint8(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def _canvas(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, dtype=np.uint8)


def _text_size(text: str, scale: float = TEXT_SCALE, thickness: int = 1) -> tuple[int, int]:
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    return width, height + baseline


def _put_text(canvas: np.ndarray, text: str, x: int, y: int, colour=BLACK, scale: float = TEXT_SCALE,
              thickness: int = 1, anchor: str = "left") -> None:
    """Text whose box has its top at ``y``; ``anchor`` places ``x`` at its left, centre or right."""
    width, height = _text_size(text, scale, thickness)
    if anchor == "centre":
        x -= width // 2
    elif anchor == "right":
        x -= width
    (_, ascent), _ = cv2.getTextSize(text, FONT, scale, thickness)
    cv2.putText(canvas, text, (int(x), int(y + ascent)), FONT, scale, colour, thickness, cv2.LINE_AA)


def _fit(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """The image scaled to fit a white size x size tile, centred. Returns (tile, scale, dx, dy):
    a point (x, y) of the image lands at (x * scale + dx, y * scale + dy) of the tile."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    shrink = scale < 1
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    tile = _canvas(size, size)
    dx, dy = (size - new_w) // 2, (size - new_h) // 2
    tile[dy:dy + new_h, dx:dx + new_w] = resized
    return tile, scale, dx, dy


def _paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
    canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile


def _framed(tile: np.ndarray, colour, border: int) -> np.ndarray:
    """The tile inside a solid border of ``border`` pixels."""
    return cv2.copyMakeBorder(tile, border, border, border, border, cv2.BORDER_CONSTANT, value=colour)


# ---------------------------------------------------------------------------------------------
# samples with their ground truth
# ---------------------------------------------------------------------------------------------

def _draw_annotation(tile: np.ndarray, ann: dict, scale: float, dx: int, dy: int,
                     skeleton: Sequence[tuple[int, int]] | None) -> None:
    def at(x, y):
        return int(round(x * scale + dx)), int(round(y * scale + dy))

    radius = max(1, round(tile.shape[0] / 100))
    boxes = list(ann.get("boxes", []))
    if "box" in ann:
        boxes.append(ann["box"])
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(tile, at(x0, y0), at(x1, y1), BOX_COLOUR, 2, cv2.LINE_8)
    for x, y in ann.get("landmarks", []):
        cv2.circle(tile, at(x, y), radius, LANDMARK_COLOUR, -1, cv2.LINE_AA)
    keypoints = ann.get("keypoints", [])
    if len(keypoints):
        for a, b in skeleton or ():
            if a < len(keypoints) and b < len(keypoints) and keypoints[a][2] > 0 and keypoints[b][2] > 0:
                cv2.line(tile, at(*keypoints[a][:2]), at(*keypoints[b][:2]), SKELETON_COLOUR, 2, cv2.LINE_AA)
        for x, y, v in keypoints:
            if v > 0:  # COCO: 1 labelled but hidden (hollow dot), 2 visible (filled dot)
                cv2.circle(tile, at(x, y), radius + 1, KEYPOINT_COLOUR, -1 if v >= 2 else 1, cv2.LINE_AA)


def sample_grid(images: Sequence, annotations: Sequence[dict] | None = None, cols: int = 8,
                tile_size: int = 128, skeleton: Sequence[tuple[int, int]] | None = None,
                captions: Sequence[str | None] | None = None, frames: Sequence | None = None) -> np.ndarray:
    """A grid of samples with their ground truth drawn on them.

    ``annotations[i]`` follows the sample schema (datamodules/schema.py), in the pixel coordinates
    of ``images[i]``: 'box' and 'boxes' as rectangles, 'landmarks' as dots, 'keypoints' [[x, y, v]]
    as dots joined by ``skeleton`` (pairs of keypoint indices) where both ends have v > 0, and
    'identity' as the caption under the tile. Each image is scaled to fit a tile_size square.
    ``captions[i]`` (when given and not None) replaces the caption; ``frames[i]`` (an RGB colour or
    None) draws a frame round the tile and colours its caption, e.g. a prediction right or wrong.
    """
    if len(images) == 0:
        raise ValueError("sample_grid needs at least one image")
    annotations = annotations if annotations is not None else [{} for _ in images]
    captions = captions if captions is not None else [None] * len(images)
    frames = frames if frames is not None else [None] * len(images)
    if not len(annotations) == len(captions) == len(frames) == len(images):
        raise ValueError(f"{len(images)} images but {len(annotations)} annotations, {len(captions)} captions "
                         f"and {len(frames)} frames")
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    cell_w, cell_h = tile_size + GAP, tile_size + CAPTION_HEIGHT + GAP
    canvas = _canvas(rows * cell_h + GAP, cols * cell_w + GAP)
    for i, (image, ann, caption, frame) in enumerate(zip(images, annotations, captions, frames)):
        tile, scale, dx, dy = _fit(to_rgb_uint8(image), tile_size)
        _draw_annotation(tile, ann, scale, dx, dy, skeleton)
        if frame is not None:
            border = max(2, tile_size // 32)
            cv2.rectangle(tile, (0, 0), (tile_size - 1, tile_size - 1), tuple(int(c) for c in frame), 2 * border - 1)
        x, y = GAP + (i % cols) * cell_w, GAP + (i // cols) * cell_h
        _paste(canvas, tile, x, y)
        if caption is None and "identity" in ann:
            caption = f"id {ann['identity']}"
        if caption:
            _put_text(canvas, caption, x + tile_size // 2, y + tile_size + 3, anchor="centre",
                      colour=tuple(int(c) for c in frame) if frame is not None else BLACK)
    return canvas


# ---------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------

def retrieval_panel(query_images: Sequence, gallery_images: Sequence, neighbour_indices,
                    correct_mask, top_k: int = 5, tile_size: int = 96, border: int = 4) -> np.ndarray:
    """One row per query: the query (grey frame), then its top_k gallery neighbours best first,
    framed green (RIGHT_COLOUR) when they share the query's identity and red (WRONG_COLOUR) when not.

    ``neighbour_indices`` (Q, >= top_k) index ``gallery_images`` (-1 leaves the slot empty);
    ``correct_mask`` (Q, >= top_k) bool, e.g. retrieval_metrics' 'neighbours' and 'neighbour_correct'.
    """
    neighbours = np.asarray(neighbour_indices)
    correct = np.asarray(correct_mask, dtype=bool)
    num_q = len(query_images)
    if neighbours.shape[0] != num_q or correct.shape[0] != num_q:
        raise ValueError("one row of neighbours and of correctness per query is required")
    top_k = min(top_k, neighbours.shape[1])
    cell = tile_size + 2 * border
    query_gap = 3 * GAP
    header = CAPTION_HEIGHT + GAP
    width = GAP + cell + query_gap + top_k * (cell + GAP)
    canvas = _canvas(header + num_q * (cell + GAP) + GAP, width)
    gallery_x0 = GAP + cell + query_gap
    _put_text(canvas, "query", GAP + cell // 2, GAP, anchor="centre")
    for rank in range(top_k):
        _put_text(canvas, f"rank {rank + 1}", gallery_x0 + rank * (cell + GAP) + cell // 2, GAP,
                  anchor="centre")
    for q in range(num_q):
        y = header + GAP + q * (cell + GAP)
        tile = _fit(to_rgb_uint8(query_images[q]), tile_size)[0]
        _paste(canvas, _framed(tile, QUERY_GREY, border), GAP, y)
        for rank in range(top_k):
            index = int(neighbours[q, rank])
            if index < 0:
                continue
            tile = _fit(to_rgb_uint8(gallery_images[index]), tile_size)[0]
            colour = RIGHT_COLOUR if correct[q, rank] else WRONG_COLOUR
            _paste(canvas, _framed(tile, colour, border), gallery_x0 + rank * (cell + GAP), y)
    return canvas


# ---------------------------------------------------------------------------------------------
# curve charts: ROC, precision-recall
# ---------------------------------------------------------------------------------------------

def _vertical_text(text: str, scale: float = 0.55) -> np.ndarray:
    width, height = _text_size(text, scale)
    strip = _canvas(height + 4, width + 4)
    _put_text(strip, text, 2, 2, scale=scale)
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)


@dataclass(frozen=True)
class Axis:
    """One axis of a curve chart: its label and range; ``log`` makes it log10 from ``low`` (> 0) to
    ``high`` with a tick per decade and faint minor lines (values below ``low`` sit on the edge);
    otherwise linear with a labelled tick every ``tick`` and a grid line every ``grid``."""

    label: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    tick: float = 0.2
    grid: float = 0.1


def curve_plot(curves: dict[str, tuple], x_axis: Axis, y_axis: Axis, size: tuple[int, int] = (720, 540),
               title: str = "", legend: str = "lower right") -> np.ndarray:
    """Curves (name -> (x, y)) on one chart of ``size`` = (width, height) pixels, each in the next of
    CURVE_COLOURS, with a legend naming them inside the plot (``legend``: "lower right",
    "lower left", "upper right" or "upper left")."""
    width, height = size
    left, right, top, bottom = 78, 24, 40, 58
    canvas = _canvas(height, width)
    plot_w, plot_h = width - left - right, height - top - bottom

    def position(values, axis: Axis) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if axis.log:
            low, high = math.log10(axis.low), math.log10(axis.high)
            return (np.log10(np.clip(values, axis.low, axis.high)) - low) / (high - low)
        return (np.clip(values, axis.low, axis.high) - axis.low) / (axis.high - axis.low)

    def x_of(values) -> np.ndarray:
        return left + position(values, x_axis) * plot_w

    def y_of(values) -> np.ndarray:
        return top + (1.0 - position(values, y_axis)) * plot_h

    def linear_marks(axis: Axis) -> tuple[list[float], list[tuple[float, str]]]:
        steps = int(round((axis.high - axis.low) / axis.grid))
        grid = [axis.low + k * axis.grid for k in range(steps + 1)]
        every = max(1, int(round(axis.tick / axis.grid)))
        return grid, [(value, f"{value:.1f}") for k, value in enumerate(grid) if k % every == 0]

    # grid and ticks: x
    if x_axis.log:
        decades = range(int(math.floor(math.log10(x_axis.low))), int(math.ceil(math.log10(x_axis.high))) + 1)
        minor = [k * 10.0 ** d for d in decades for k in range(2, 10) if k * 10.0 ** d < x_axis.high]
        for value in minor:
            x = int(round(x_of(value)))
            if x > left:
                cv2.line(canvas, (x, top), (x, top + plot_h), (242, 242, 242), 1)
        x_ticks = [(10.0 ** d, "1" if d == 0 else f"1e{d}") for d in decades if 10.0 ** d <= x_axis.high]
    else:
        x_ticks = linear_marks(x_axis)[1]
    for value, label in x_ticks:
        x = int(round(x_of(value)))
        cv2.line(canvas, (x, top), (x, top + plot_h), GRID_GREY, 1)
        cv2.line(canvas, (x, top + plot_h), (x, top + plot_h + 5), BLACK, 1)
        _put_text(canvas, label, x, top + plot_h + 9, anchor="centre")
    # y (linear)
    grid, y_ticks = linear_marks(y_axis)
    for value in grid:
        y = int(round(y_of(value)))
        cv2.line(canvas, (left, y), (left + plot_w, y), GRID_GREY, 1)
    for value, label in y_ticks:
        y = int(round(y_of(value)))
        cv2.line(canvas, (left - 5, y), (left, y), BLACK, 1)
        _put_text(canvas, label, left - 8, y - 7, anchor="right")
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), BLACK, 1)

    # labels
    _put_text(canvas, title, width // 2, 10, scale=0.6, thickness=2, anchor="centre")
    _put_text(canvas, x_axis.label, left + plot_w // 2, height - 24, scale=0.55, anchor="centre")
    y_label = _vertical_text(y_axis.label)
    y0 = top + (plot_h - y_label.shape[0]) // 2
    _paste(canvas, y_label, 8, max(0, y0))

    # curves
    entries = []
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        points = np.stack([x_of(xs), y_of(ys)], axis=1)
        points = np.round(points * 16).astype(np.int32)  # 4 fractional bits for smooth lines
        cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA, shift=4)
        entries.append((name, colour))

    # legend, inside the plot
    if entries:
        line_h = 20
        text_w = max(_text_size(name)[0] for name, _ in entries)
        box_w, box_h = text_w + 46, line_h * len(entries) + 8
        x0 = left + plot_w - box_w - 10 if legend.endswith("right") else left + 10
        y0 = top + plot_h - box_h - 10 if legend.startswith("lower") else top + 10
        cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), WHITE, -1)
        cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), (160, 160, 160), 1)
        for j, (name, colour) in enumerate(entries):
            y = y0 + 4 + j * line_h + line_h // 2
            cv2.line(canvas, (x0 + 8, y), (x0 + 32, y), colour, 3, cv2.LINE_AA)
            _put_text(canvas, name, x0 + 38, y - 8)
    return canvas


def roc_plot(curves: dict[str, tuple], log_fpr: bool = True, size: tuple[int, int] = (720, 540),
             title: str = "ROC", fpr_min: float = 1e-4) -> np.ndarray:
    """ROC curves (name -> (fpr, tpr)) on one chart of ``size`` = (width, height) pixels.

    With ``log_fpr`` the false accept rate axis is log10 from ``fpr_min`` to 1 with a tick per
    decade (points below fpr_min are drawn at the left edge); otherwise linear from 0 to 1. The true
    accept rate axis is linear 0..1. A legend in the lower right names each curve in its colour.
    """
    x_axis = (Axis("false accept rate (log scale)", low=fpr_min, log=True) if log_fpr
              else Axis("false accept rate"))
    return curve_plot(curves, x_axis, Axis("true accept rate"), size=size, title=title, legend="lower right")


# ---------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------

def pair_panel(images_a: Sequence, images_b: Sequence, distances, title: str = "",
               tile_size: int = 96, pairs_per_row: int = 4) -> np.ndarray:
    """Image pairs side by side with their distance written under them ("d = 0.734"), e.g. the
    hardest false matches or non-matches; ``pairs_per_row`` pairs per row, ``title`` above."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    if not len(images_a) == len(images_b) == len(distances):
        raise ValueError("pair_panel needs as many images_a, images_b and distances")
    if len(distances) == 0:
        raise ValueError("pair_panel needs at least one pair")
    cols = max(1, min(pairs_per_row, len(distances)))
    rows = math.ceil(len(distances) / cols)
    pair_w = 2 * tile_size + 2
    cell_w, cell_h = pair_w + 3 * GAP, tile_size + CAPTION_HEIGHT + GAP
    header = (_text_size(title, 0.6, 2)[1] + 2 * GAP) if title else 0
    width = max(cols * cell_w + 2 * GAP, _text_size(title, 0.6, 2)[0] + 2 * GAP if title else 0)
    canvas = _canvas(header + rows * cell_h + GAP, width)
    if title:
        _put_text(canvas, title, width // 2, GAP, scale=0.6, thickness=2, anchor="centre")
    for i, distance in enumerate(distances):
        x = 2 * GAP + (i % cols) * cell_w
        y = header + GAP + (i // cols) * cell_h
        _paste(canvas, _fit(to_rgb_uint8(images_a[i]), tile_size)[0], x, y)
        _paste(canvas, _fit(to_rgb_uint8(images_b[i]), tile_size)[0], x + tile_size + 2, y)
        _put_text(canvas, f"d = {distance:.3f}", x + pair_w // 2, y + tile_size + 3, anchor="centre")
    return canvas


def hardest_pairs_picture(pair_set, image_of, count: int = 8) -> np.ndarray:
    """The hardest false matches (different people, smallest distance) above the hardest
    non-matches (same person, largest distance) of one evaluation set.

    ``pair_set``: a ``modules.embedding_eval.PairSet``; ``image_of(i)``: image ``i`` of that set.
    """
    panels = []
    for same, title in ((False, "hardest false matches (different people, closest)"),
                        (True, "hardest non-matches (same person, farthest)")):
        rows = np.flatnonzero(pair_set.is_same == same)
        if not len(rows):
            continue
        order = np.argsort(pair_set.distances[rows], kind="stable")
        chosen = rows[order[:count] if not same else order[::-1][:count]]
        panels.append(pair_panel([image_of(int(pair_set.idx_a[i])) for i in chosen],
                                 [image_of(int(pair_set.idx_b[i])) for i in chosen],
                                 pair_set.distances[chosen], title=f"{pair_set.name}: {title}"))
    width = max(p.shape[1] for p in panels)
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate(padded, axis=0)
