"""Line charts drawn with OpenCV (no plotting library): learning curves, metrics of several runs.

Like ``modules/pictures.py``, a chart is an (H, W, 3) uint8 RGB array on a white background.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from modules.pictures import (BLACK, CURVE_COLOURS, GRID_GREY, WHITE, _canvas, _paste, _put_text, _text_size,
                              _vertical_text)

MARKED_POINTS = 40  # curves of at most this many points get a dot at each


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]; whole numbers
    only when ``integer`` (steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(step, 1.0)
    first = math.ceil(low / step - 1e-9) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"{value:.{decimals}f}"


def line_chart(series: dict[str, tuple], title: str = "", x_label: str = "step", y_label: str = "",
               size: tuple[int, int] = (640, 420)) -> np.ndarray:
    """Curves (name -> (x, y)) on one chart of ``size`` = (width, height) pixels, axes fitted to the
    finite points, a legend in the upper right naming each curve in its colour. A curve of one
    point is drawn as a dot; an empty chart says "no data"."""
    width, height = size
    left, right, top, bottom = 70, 20, 36, 52
    canvas = _canvas(height, width)
    plot_w, plot_h = width - left - right, height - top - bottom
    points = {name: _finite(x, y) for name, (x, y) in series.items()}
    xs = np.concatenate([p[0] for p in points.values()] or [np.zeros(0)])
    ys = np.concatenate([p[1] for p in points.values()] or [np.zeros(0)])
    _put_text(canvas, title, width // 2, 8, scale=0.55, thickness=2, anchor="centre")
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), BLACK, 1)
    if xs.size == 0:
        _put_text(canvas, "no data", left + plot_w // 2, top + plot_h // 2, anchor="centre")
        return canvas
    x_low, x_high = float(xs.min()), float(xs.max())
    y_low, y_high = float(ys.min()), float(ys.max())
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5 * (abs(y_low) or 1.0), y_high + 0.5 * (abs(y_high) or 1.0)
    margin = 0.05 * (y_high - y_low)
    y_low, y_high = y_low - margin, y_high + margin
    if x_high <= x_low:
        x_low, x_high = x_low - 1, x_high + 1
    x_margin = 0.02 * (x_high - x_low)
    x_low, x_high = x_low - x_margin, x_high + x_margin
    whole_x = bool(np.all(xs == np.round(xs)))

    def at(x, y):
        return (left + (np.asarray(x, float) - x_low) / (x_high - x_low) * plot_w,
                top + (1 - (np.asarray(y, float) - y_low) / (y_high - y_low)) * plot_h)

    for axis, (low, high) in (("x", (x_low, x_high)), ("y", (y_low, y_high))):
        ticks = [t for t in nice_ticks(low, high, integer=axis == "x" and whole_x) if low <= t <= high]
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 0
        for tick in ticks:
            label = _tick_label(tick, step)
            if axis == "x":
                x = int(round(float(at(tick, y_low)[0])))
                cv2.line(canvas, (x, top), (x, top + plot_h), GRID_GREY, 1)
                _put_text(canvas, label, x, top + plot_h + 6, anchor="centre")
            else:
                y = int(round(float(at(x_low, tick)[1])))
                cv2.line(canvas, (left, y), (left + plot_w, y), GRID_GREY, 1)
                _put_text(canvas, label, left - 6, y - 7, anchor="right")
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), BLACK, 1)
    _put_text(canvas, x_label, left + plot_w // 2, height - 22, scale=0.5, anchor="centre")
    if y_label:
        label = _vertical_text(y_label, scale=0.5)
        _paste(canvas, label, 4, max(0, top + (plot_h - label.shape[0]) // 2))

    for i, (name, (x, y)) in enumerate(points.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        px, py = at(x, y)
        if len(px) > 1:
            line = np.round(np.stack([px, py], axis=1) * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [line], False, colour, 2, cv2.LINE_AA, shift=4)
        if len(px) <= MARKED_POINTS:  # few points (validations): each one marked
            for x, y in zip(px, py):
                cv2.circle(canvas, (int(round(x)), int(round(y))), 4, colour, -1, cv2.LINE_AA)
    drawn = [np.stack(at(x, y), axis=1) for x, y in points.values() if len(x)]
    _legend(canvas, list(points), (left + 8, top + 8, left + plot_w - 8, top + plot_h - 8), np.concatenate(drawn))
    return canvas


def _finite(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _legend(canvas: np.ndarray, names: list[str], area: tuple[int, int, int, int], points: np.ndarray) -> None:
    """The legend in the corner of ``area`` (x0, y0, x1, y1) that hides the fewest curve points."""
    if not names:
        return
    line_h = 18
    box_w, box_h = max(_text_size(name)[0] for name in names) + 40, line_h * len(names) + 6
    corners = [(area[2] - box_w, area[1]), (area[2] - box_w, area[3] - box_h), (area[0], area[1]),
               (area[0], area[3] - box_h)]

    def hidden(corner) -> int:
        x0, y0 = corner
        return int(np.sum((points[:, 0] >= x0 - 4) & (points[:, 0] <= x0 + box_w + 4)
                          & (points[:, 1] >= y0 - 4) & (points[:, 1] <= y0 + box_h + 4)))

    x0, y0 = min(corners, key=hidden)
    cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), WHITE, -1)
    cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), (160, 160, 160), 1)
    for j, name in enumerate(names):
        y = y0 + 3 + j * line_h + line_h // 2
        cv2.line(canvas, (x0 + 6, y), (x0 + 28, y), CURVE_COLOURS[j % len(CURVE_COLOURS)], 3, cv2.LINE_AA)
        _put_text(canvas, name, x0 + 34, y - 8)


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """Charts in one row (shorter ones padded with white below)."""
    height = max(image.shape[0] for image in images)
    padded = [np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0)), constant_values=255) for image in images]
    return np.concatenate(padded, axis=1)
