"""Detection pictures: a scene with its ground truth and detections drawn, and precision-recall charts.

In ``detection_picture``: faces found (IoU >= 0.5 with a shown detection) in FOUND_COLOUR, faces
missed in MISSED_COLOUR with a cross, faces the evaluation ignores (face_setting 3) dashed in
IGNORED_GREY, detections in DETECTION_COLOUR with their score above the box. RGB uint8 arrays,
for a logger or ``modules.pictures.save_png``.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from datamodules.schema import IGNORED
from modules.metrics.wider_face import SettingResult, box_overlaps
from modules.pictures import WHITE, Axis, _put_text, _text_size, curve_plot, to_rgb_uint8

FOUND_COLOUR = (0, 170, 0)
MISSED_COLOUR = (220, 0, 0)
IGNORED_GREY = (150, 150, 150)
DETECTION_COLOUR = (0, 110, 255)
DASH = 5  # pixels drawn, then skipped, along a dashed edge


def dashed_rectangle(canvas: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], colour, thickness: int = 1,
                     dash: int = DASH) -> None:
    """A rectangle outline drawn as dashes of ``dash`` pixels with gaps as long."""
    (x0, y0), (x1, y1) = p0, p1
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        for start in range(0, length + 1, 2 * dash):
            stop = min(start + dash, length)
            t0, t1 = start / max(length, 1), stop / max(length, 1)
            cv2.line(canvas, (round(a[0] + (b[0] - a[0]) * t0), round(a[1] + (b[1] - a[1]) * t0)),
                     (round(a[0] + (b[0] - a[0]) * t1), round(a[1] + (b[1] - a[1]) * t1)), colour, thickness)


def _corners(box) -> tuple[tuple[int, int], tuple[int, int]]:
    """OpenCV pixel corners of a continuous x0 y0 x1 y1 box (its last pixel column is x1 - 1)."""
    x0, y0, x1, y1 = box
    return (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1)


def detection_picture(image, gt_boxes, det_boxes, det_scores, gt_setting: Sequence[int] | None = None,
                      iou_threshold: float = 0.5, score_threshold: float | None = None,
                      max_detections: int = 100) -> np.ndarray:
    """The image with its faces and detections drawn (see the module docstring). ``gt_setting``:
    the faces' face_setting codes (3 = ignored; all counted when None); detections below
    ``score_threshold`` and beyond the ``max_detections`` best are not drawn, nor count as finding
    a face."""
    canvas = to_rgb_uint8(image).copy()
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    det = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:max_detections]
    if score_threshold is not None:
        order = order[scores[order] >= score_threshold]
    det, scores = det[order], scores[order]
    ignored = (np.asarray(gt_setting).reshape(-1) == IGNORED) if gt_setting is not None else np.zeros(len(gt), bool)
    found = np.zeros(len(gt), bool)
    if len(gt) and len(det):
        found = box_overlaps(gt, det).max(axis=1) >= iou_threshold
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for box, is_ignored, is_found in zip(gt, ignored, found):
        p0, p1 = _corners(box)
        if is_ignored:
            dashed_rectangle(canvas, p0, p1, IGNORED_GREY, thickness)
        elif is_found:
            cv2.rectangle(canvas, p0, p1, FOUND_COLOUR, thickness + 1)
        else:
            cv2.rectangle(canvas, p0, p1, MISSED_COLOUR, thickness + 1)
            cv2.line(canvas, p0, p1, MISSED_COLOUR, thickness)
            cv2.line(canvas, (p0[0], p1[1]), (p1[0], p0[1]), MISSED_COLOUR, thickness)
    scale = 0.35 * max(1.0, min(canvas.shape[:2]) / 400)
    for box, score in zip(det, scores):
        p0, p1 = _corners(box)
        cv2.rectangle(canvas, p0, p1, DETECTION_COLOUR, thickness)
        text = f"{score:.2f}"
        text_w, text_h = _text_size(text, scale)
        y = max(0, p0[1] - text_h - 1)
        cv2.rectangle(canvas, (p0[0], y), (p0[0] + text_w + 2, y + text_h), WHITE, -1)
        _put_text(canvas, text, p0[0] + 1, y, colour=DETECTION_COLOUR, scale=scale)
    return canvas


def pr_legend(name: str, ap: float) -> str:
    return f"{name}  AP {ap:.3f}"


def pr_plot(results: dict[str, SettingResult] | dict[str, tuple], size: tuple[int, int] = (720, 540),
            title: str = "precision-recall") -> np.ndarray:
    """Precision-recall curves per setting (``evaluate_wider``'s results, or name -> (recall,
    precision, ap)), with each setting's AP in the legend."""
    curves = {}
    for name, result in results.items():
        recall, precision, ap = ((result.recall, result.precision, result.ap) if isinstance(result, SettingResult)
                                 else result)
        recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
        keep = (recall > 0) | (precision > 0)  # thresholds above every score hold no point
        curves[pr_legend(name, ap)] = (recall[keep], precision[keep])
    return curve_plot(curves, Axis("recall"), Axis("precision"), size=size, title=title, legend="lower left")
