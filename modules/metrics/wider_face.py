"""The WIDER FACE evaluation protocol (Yang et al., CVPR 2016) as pure NumPy functions.

Followed from the official MATLAB eval_tools (``evaluation.m``, ``image_evaluation``,
``image_pr_info``, ``dataset_pr_info``, ``VOCap``) and their Python ports:
- scores are min-max normalised over every detection of the whole set;
- per image, detections are taken in decreasing score order; each goes to the ground-truth face it
  overlaps most; at IoU >= 0.5 with a face outside the setting (or invalid), the detection is dropped,
  neither true nor false positive; with a counted face it finds that face, and a later detection on
  an already found face is a false positive; below 0.5 it is a false positive;
- 1,000 thresholds t = 1 - (k + 1) / 1000 (0.999 down to 0): at each, the proposals (kept detections
  with normalised score >= t) and the faces found among them, summed over the images; precision =
  found / proposals, recall = found / faces in the setting;
- AP is the VOC all-point area under the precision envelope of that curve.
Settings nest: a face with ``face_setting`` code c (0 easy, 1 medium, 2 hard, 3 ignored) counts in
setting s when c <= s (``datamodules.schema``).

Where it differs: the official tools read boxes as integer x, y, w, h and give a box w + 1 pixels
(``boxoverlap`` adds 1 to widths and heights of x0 y0 x0 + w y0 + h). Visage boxes are continuous
x0 y0 x1 y1 with width x1 - x0, so IoU is continuous by default; ``plus_one_pixel=True`` adds the
pixel as the official tools do (use it for WIDER's integer boxes, to reproduce official numbers).
Where the official code divides 0 by 0 (no proposal above a threshold) precision is taken as 0,
which leaves AP unchanged (recall is 0 there too); when every score is equal, the normalised scores
are all 1. Beyond the protocol: recall at a fixed number of false positives per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from datamodules.schema import FLAG_INDEX, IGNORED, SETTING_NAMES

SETTINGS = SETTING_NAMES  # easy, medium, hard: the face_setting codes 0, 1, 2


def box_overlaps(boxes_a, boxes_b, plus_one_pixel: bool = False) -> np.ndarray:
    """(N, M) IoU of x0 y0 x1 y1 boxes; ``plus_one_pixel`` counts x1 - x0 + 1 pixels across (official
    WIDER tools). Boxes that do not overlap have IoU 0."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    one = 1.0 if plus_one_pixel else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def normalise_scores(scores: Sequence) -> list[np.ndarray]:
    """Each image's scores min-max normalised over the whole set (all 1 when they are all equal)."""
    arrays = [np.asarray(s, np.float64).reshape(-1) for s in scores]
    every = np.concatenate(arrays) if arrays else np.zeros(0)
    if not len(every):
        return arrays
    low, high = every.min(), every.max()
    if high <= low:
        return [np.ones_like(s) for s in arrays]
    return [(s - low) / (high - low) for s in arrays]


def thresholds(count: int = 1000) -> np.ndarray:
    """t_k = 1 - (k + 1) / count, k = 0 .. count - 1 (official: ``1 - t / thresh_num``)."""
    return 1.0 - np.arange(1, count + 1) / count


def image_pr_counts(gt_boxes, counted, det_boxes, det_scores, levels: np.ndarray, iou_threshold: float = 0.5,
                    plus_one_pixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(proposals, found) of one image at each threshold of ``levels``: detections with normalised
    score >= t that were not dropped, and the counted faces they found. ``counted``: (N,) bool, the
    faces in the setting; the others are ignored."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    counted = np.asarray(counted, bool).reshape(-1)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)[order]
    kept = np.ones(len(scores), dtype=bool)
    found_after = np.zeros(len(scores), dtype=np.int64)  # faces found by detections 0..h
    if len(gt_boxes) and len(scores):
        overlaps = box_overlaps(boxes, gt_boxes, plus_one_pixel)
        best = overlaps.argmax(axis=1)  # the first of equal overlaps, as MATLAB's max
        best_overlap = overlaps[np.arange(len(scores)), best]
        found = np.zeros(len(gt_boxes), dtype=bool)
        count = 0
        for h in range(len(scores)):  # in score order: a face is found by its first detection
            if best_overlap[h] >= iou_threshold:
                if not counted[best[h]]:
                    kept[h] = False
                elif not found[best[h]]:
                    found[best[h]] = True
                    count += 1
            found_after[h] = count
    # detections with score >= t: the first n of the sorted list
    n = len(scores) - np.searchsorted(scores[::-1], levels, side="left")
    proposals = np.concatenate([[0], np.cumsum(kept)])[n]
    found = np.concatenate([[0], found_after])[n]
    return proposals, found


def voc_ap(recall, precision) -> float:
    """VOC all-point AP: the area under the precision envelope (the running maximum from the right),
    with recall running from 0 to 1."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


@dataclass
class SettingResult:
    """One setting's evaluation: AP, the PR curve at each threshold, and recall at fixed FPPI."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    false_positives: np.ndarray  # at each threshold, over the whole set
    num_faces: int
    num_images: int
    recall_at_fppi: dict[float, float] = field(default_factory=dict)


def recall_at_fppi(recall: np.ndarray, false_positives: np.ndarray, num_images: int, fppi: float) -> float:
    """The highest recall at a threshold with at most ``fppi`` false positives per image (0 if none)."""
    ok = false_positives <= fppi * num_images + 1e-9
    return float(recall[ok].max()) if ok.any() else 0.0


def _face_codes(gt: dict) -> np.ndarray:
    count = len(np.asarray(gt.get("boxes", []), np.float64).reshape(-1, 4))
    if gt.get("face_setting") is not None:
        codes = np.asarray(gt["face_setting"], np.int64).reshape(-1)
    else:  # no settings: every face counts everywhere, except faces flagged invalid
        codes = np.zeros(count, np.int64)
        for i, flags in enumerate(gt.get("face_flags") or []):
            if flags[FLAG_INDEX["invalid"]]:
                codes[i] = IGNORED
    if len(codes) != count:
        raise ValueError(f"{count} boxes but {len(codes)} face_setting codes")
    return codes


def evaluate_wider(ground_truth: Sequence[dict], detections: Sequence[dict], settings: Sequence[str] = SETTINGS,
                   iou_threshold: float = 0.5, num_thresholds: int = 1000, plus_one_pixel: bool = False,
                   fppi: Sequence[float] = (0.1, 1.0)) -> dict[str, SettingResult]:
    """WIDER-protocol results per setting. ``ground_truth[i]``: image i's ``boxes`` (N, 4) x0 y0 x1 y1
    and ``face_setting`` (N,) codes (schema fields; without them every face counts, except those
    whose ``face_flags`` say invalid). ``detections[i]``: ``boxes`` (K, 4) and ``scores`` (K,), as
    the detectors return them."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists")
    levels = thresholds(num_thresholds)
    scores = normalise_scores([d.get("scores", []) for d in detections])
    codes = [_face_codes(gt) for gt in ground_truth]
    results = {}
    for name in settings:
        level = SETTINGS.index(name)
        proposals = np.zeros(num_thresholds, np.int64)
        found = np.zeros(num_thresholds, np.int64)
        faces = 0
        for gt, det, image_scores, image_codes in zip(ground_truth, detections, scores, codes):
            counted = image_codes <= level
            faces += int(counted.sum())
            p, f = image_pr_counts(gt.get("boxes", []), counted, det.get("boxes", []), image_scores, levels,
                                   iou_threshold, plus_one_pixel)
            proposals += p
            found += f
        precision = np.where(proposals > 0, found / np.maximum(proposals, 1), 0.0)
        recall = found / faces if faces else np.zeros(num_thresholds)
        false_positives = proposals - found
        result = SettingResult(voc_ap(recall, precision) if faces else float("nan"), precision, recall, levels,
                               false_positives, faces, len(ground_truth))
        result.recall_at_fppi = {float(x): recall_at_fppi(recall, false_positives, len(ground_truth), x)
                                 for x in fppi}
        results[name] = result
    return results
