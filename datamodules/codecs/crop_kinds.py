"""The four kinds of MTCNN training crop (Zhang et al. 2016, sec. III-C), as integer codes shared by the
crop sampler (which labels crops) and the multi-task loss (which picks the samples of each term).

A crop's kind follows from its IoU with the nearest face: below 0.3 negative, 0.4 to 0.65 part, above
0.65 positive; crops in the gap [0.3, 0.4) are not used. Landmark crops come from faces annotated with
5 points. Per batch the kinds are mixed negative : positive : part : landmark = 3 : 1 : 1 : 2.

Which loss term sees which kind: face classification on negatives and positives, box regression on
positives and parts, landmark regression on landmark crops. No torch here: the data side imports it.
"""
from __future__ import annotations

import numpy as np

IGNORED = -1  # a crop in the IoU gap between negative and part: neither generated nor trained on
NEGATIVE = 0
POSITIVE = 1
PART = 2
LANDMARK = 3
KIND_NAMES = ("negative", "positive", "part", "landmark")  # the name of each code: KIND_NAMES[POSITIVE]

NEGATIVE_BELOW = 0.3    # IoU < 0.3: negative
PART_FROM = 0.4         # 0.4 <= IoU <= 0.65: part
POSITIVE_ABOVE = 0.65   # IoU > 0.65: positive

MIX = {NEGATIVE: 3, POSITIVE: 1, PART: 1, LANDMARK: 2}  # neg : pos : part : landmark per batch
MIX_BY_NAME = {KIND_NAMES[kind]: share for kind, share in MIX.items()}  # the same mix, keyed as configs write it

CLASSIFIED_KINDS = (NEGATIVE, POSITIVE)  # face cross-entropy; the label is 1 for POSITIVE
BOX_KINDS = (POSITIVE, PART)             # box-offset regression
LANDMARK_KINDS = (LANDMARK,)             # landmark regression


def kind_from_iou(iou):
    """NEGATIVE, PART, POSITIVE or IGNORED for an IoU (a float gives an int, an array an int64 array)."""
    iou_array = np.asarray(iou, dtype=np.float64)
    kinds = np.full(iou_array.shape, IGNORED, dtype=np.int64)
    kinds[iou_array < NEGATIVE_BELOW] = NEGATIVE
    kinds[(iou_array >= PART_FROM) & (iou_array <= POSITIVE_ABOVE)] = PART
    kinds[iou_array > POSITIVE_ABOVE] = POSITIVE
    return int(kinds) if kinds.ndim == 0 else kinds


def mix_counts(batch_size: int, mix: dict[int, int] | None = None) -> dict[int, int]:
    """How many crops of each kind a batch of ``batch_size`` holds by ``mix`` (default the 3:1:1:2 MIX):
    each kind gets ``floor(batch_size * share)``, and the remainder goes to the kinds in the order
    NEGATIVE, POSITIVE, PART, LANDMARK, one each (so the counts always sum to ``batch_size``)."""
    mix = MIX if mix is None else mix
    total = sum(mix.values())
    counts = {kind: batch_size * share // total for kind, share in mix.items()}
    for kind in [k for k in mix if mix[k]][:batch_size - sum(counts.values())]:
        counts[kind] += 1
    return counts
