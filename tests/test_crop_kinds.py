"""The crop kinds' IoU bands and batch mix, by hand."""
import numpy as np

from datamodules.codecs.crop_kinds import (IGNORED, LANDMARK, MIX, NEGATIVE, PART, POSITIVE, kind_from_iou,
                                           mix_counts)


def test_iou_bands_at_their_edges():
    cases = {0.0: NEGATIVE, 0.2999: NEGATIVE, 0.3: IGNORED, 0.3999: IGNORED, 0.4: PART, 0.65: PART,
             0.6501: POSITIVE, 1.0: POSITIVE}
    assert {iou: kind_from_iou(iou) for iou in cases} == cases
    assert isinstance(kind_from_iou(0.5), int)
    array = kind_from_iou(np.array([[0.1, 0.35], [0.5, 0.9]]))
    assert array.dtype == np.int64 and array.tolist() == [[NEGATIVE, IGNORED], [PART, POSITIVE]]


def test_mix_is_3_1_1_2_and_counts_sum_to_the_batch():
    assert MIX == {NEGATIVE: 3, POSITIVE: 1, PART: 1, LANDMARK: 2}
    assert mix_counts(7) == {NEGATIVE: 3, POSITIVE: 1, PART: 1, LANDMARK: 2}
    assert mix_counts(70) == {NEGATIVE: 30, POSITIVE: 10, PART: 10, LANDMARK: 20}
    # 64 = 7 * 9 + 1: floors 27, 9, 9, 18 (63), the one left over goes to NEGATIVE
    assert mix_counts(64) == {NEGATIVE: 28, POSITIVE: 9, PART: 9, LANDMARK: 18}
    # 10: floors 4, 1, 1, 2 (8), remainder 2 -> NEGATIVE, POSITIVE
    assert mix_counts(10) == {NEGATIVE: 5, POSITIVE: 2, PART: 1, LANDMARK: 2}
    assert all(sum(mix_counts(n).values()) == n for n in range(200))
