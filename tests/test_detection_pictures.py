"""Detection pictures: each box in its colour on its edge, missed and ignored faces marked, scores
printed; the precision-recall chart puts the better curve higher and names AP in the legend."""
from __future__ import annotations

import numpy as np

from modules.detection.pictures import (
    DETECTION_COLOUR, FOUND_COLOUR, IGNORED_GREY, MISSED_COLOUR, detection_picture, pr_legend, pr_plot,
)
from modules.metrics.wider_face import evaluate_wider
from modules.pictures import CURVE_COLOURS

MARK = (90, 40, 160)  # the image's own colour: no drawing uses it


def _is(image, colour, tolerance=0):
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tolerance, axis=-1)


def _scene():
    image = np.full((200, 200, 3), MARK, np.uint8)
    gt = [[20, 20, 80, 80],      # found by the first detection (IoU 3025 / 4175 = 0.72)
          [120, 20, 180, 80],    # missed
          [20, 120, 80, 180]]    # ignored
    det = [[25, 25, 85, 85], [120, 120, 170, 170]]
    return image, gt, det, [0.9, 0.3], [0, 2, 3]


def test_boxes_in_their_colours_on_their_edges():
    image, gt, det, scores, settings = _scene()
    picture = detection_picture(image, gt, det, scores, settings)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert np.array_equal(image[0, 0], MARK)                       # the input is not drawn on
    assert _is(picture[20, 58:78], FOUND_COLOUR).all()            # found face: top edge (right of the score)
    assert _is(picture[40:70, 84], DETECTION_COLOUR).all()        # its detection: right edge (x1 - 1)
    assert _is(picture[20, 125:175], MISSED_COLOUR).all()         # missed face: top edge ...
    assert _is(picture[50, 149:152], MISSED_COLOUR).any()         # ... and its cross through the middle
    top = _is(picture[120, 22:78], IGNORED_GREY)                  # ignored face: dashes, not a line
    assert 0.3 < top.mean() < 0.7
    assert not _is(picture, FOUND_COLOUR)[100:, :100].any()        # the ignored face is not green
    # the second detection's score, above it (anti-aliased text: its inked pixels come within a few levels)
    assert _is(picture[100:120, 120:170], DETECTION_COLOUR, tolerance=12).any()
    assert _is(picture[140:160, 169], DETECTION_COLOUR).all()


def test_score_threshold_hides_detections_and_their_finds():
    image, gt, det, scores, settings = _scene()
    picture = detection_picture(image, gt, det, scores, settings, score_threshold=0.95)
    assert not _is(picture, DETECTION_COLOUR).any()
    assert _is(picture[20, 35:78], MISSED_COLOUR).all()            # nothing found it now


def test_pr_plot_better_curve_higher_and_ap_in_the_legend():
    recall = np.linspace(0, 1, 50)
    chart = pr_plot({"easy": (recall, np.full(50, 0.9), 0.9), "hard": (recall, np.full(50, 0.3), 0.3)})
    easy_rows = np.nonzero(_is(chart[:, 300:500], CURVE_COLOURS[0], 40))[0]
    hard_rows = np.nonzero(_is(chart[:, 300:500], CURVE_COLOURS[1], 40))[0]
    assert len(easy_rows) and len(hard_rows) and np.median(easy_rows) < np.median(hard_rows)
    assert pr_legend("easy", 0.91234) == "easy  AP 0.912"
    # from evaluate_wider's results directly
    truth = [{"boxes": [[0, 0, 10, 10]], "face_setting": [0]}]
    found = [{"boxes": [[0, 0, 10, 10]], "scores": [1.0]}]
    chart = pr_plot(evaluate_wider(truth, found))
    assert chart.shape == (540, 720, 3) and _is(chart, CURVE_COLOURS[2], 40).any()
