"""The WIDER FACE evaluation: a hand-worked case (ignored faces, a duplicate, tied scores), the
official +1-pixel IoU, extremes, invariances, and a literal loop transcription of the official steps."""
from __future__ import annotations

import numpy as np
import pytest

from modules.metrics.wider_face import box_overlaps, evaluate_wider, normalise_scores, voc_ap


def _box(x):
    return [x, 0.0, x + 10.0, 10.0]


# image 1: A (easy), B (hard only), C (ignored: invalid); image 2: D (medium)
GROUND_TRUTH = [
    {"boxes": [_box(0), _box(20), _box(40)], "face_setting": [0, 2, 3]},
    {"boxes": [_box(0)], "face_setting": [1]},
]
# raw scores 0.9 .. 0.1 normalise by (s - 0.1) / 0.8 to 1, 0.875, 0.75, 0.625, 0.625, 0.5 and 0
DETECTIONS = [
    {"boxes": [_box(0), _box(0.5), _box(40), _box(20), [60.0, 60.0, 70.0, 70.0]],
     #           d1 on A   d2 on A again  d3 on C   d4 on B   d5 on nothing (tied with d4)
     "scores": [0.9, 0.8, 0.7, 0.6, 0.6]},
    {"boxes": [_box(0), [50.0, 50.0, 60.0, 60.0]],
     #           d6 on D   d7 on nothing
     "scores": [0.5, 0.1]},
]


def test_hand_worked_case():
    results = evaluate_wider(GROUND_TRUTH, DETECTIONS)
    # hard counts A, B, D (3 faces); C is ignored, so d3 is dropped. Lowering the threshold adds
    #   d1: found 1 of 1 proposals          R 1/3  P 1
    #   d2: duplicate on A: a false positive R 1/3  P 1/2
    #   d3: dropped                          R 1/3  P 1/2
    #   d4 + d5 (tied: enter together): B found, d5 false   R 2/3  P 2/4
    #   d6: D found                          R 1    P 3/5
    #   d7: false                            R 1    P 3/6
    # envelope: 1 up to R 1/3, then 0.6 (the best precision at higher recall) up to R 1:
    # AP = 1/3 * 1 + 1/3 * 0.6 + 1/3 * 0.6 = 0.7333
    hard = results["hard"]
    assert hard.num_faces == 3 and hard.ap == pytest.approx(1 / 3 + 0.4)
    # medium counts A and D; B and C are ignored (d3, d4 dropped):
    #   d1 R 1/2 P 1; d2 R 1/2 P 1/2; d5 R 1/2 P 1/3; d6 R 1 P 2/4; d7 R 1 P 2/5
    # AP = 1/2 * 1 + 1/2 * 1/2 = 0.75
    assert results["medium"].num_faces == 2 and results["medium"].ap == pytest.approx(0.75)
    # easy counts A alone, found by the first detection at precision 1
    assert results["easy"].num_faces == 1 and results["easy"].ap == pytest.approx(1.0)
    # false positives (hard) per image over 2 images: 0 after d1, 1 after d2 (0.5 / image), 2 after
    # d5 (1 / image, recall 2/3, then 1 with d6), 3 after d7 (1.5 / image)
    assert hard.recall_at_fppi == {0.1: pytest.approx(1 / 3), 1.0: pytest.approx(1.0)}
    assert hard.precision[0] == 1.0 and hard.recall[-1] == 1.0 and hard.false_positives[-1] == 3
    # a threshold between d1 and d2 (t = 0.9 includes only score 1): and one between d4 and d6
    assert hard.precision[99] == 1.0 and hard.recall[99] == pytest.approx(1 / 3)   # t = 0.9
    assert hard.precision[399] == 0.5 and hard.recall[399] == pytest.approx(2 / 3)  # t = 0.6


def test_perfect_detections_give_ap_1_and_none_give_0():
    rng = np.random.default_rng(0)
    truth, perfect, nothing = [], [], []
    for _ in range(8):
        x, y = rng.uniform(0, 500, (2, 6))
        size = rng.uniform(8, 80, 6)
        boxes = np.stack([x, y, x + size, y + size], axis=1)
        truth.append({"boxes": boxes, "face_setting": rng.integers(0, 4, 6)})
        perfect.append({"boxes": boxes, "scores": rng.uniform(0.5, 1, 6)})
        nothing.append({"boxes": np.zeros((0, 4)), "scores": np.zeros(0)})
    for result in evaluate_wider(truth, perfect).values():
        assert result.ap == pytest.approx(1.0)
    for result in evaluate_wider(truth, nothing).values():
        assert result.ap == 0.0 and result.recall_at_fppi[1.0] == 0.0


def test_results_do_not_depend_on_the_order_of_images_or_detections():
    rng = np.random.default_rng(1)
    truth, found = [], []
    for _ in range(6):
        boxes = np.array([_box(x) for x in rng.choice(np.arange(0, 300, 15), 5, replace=False)])
        truth.append({"boxes": boxes, "face_setting": rng.integers(0, 4, 5)})
        dets = np.concatenate([boxes + rng.normal(0, 2, boxes.shape), rng.uniform(0, 300, (4, 4))])
        dets[-4:, 2:] = dets[-4:, :2] + 10
        found.append({"boxes": dets, "scores": np.round(rng.uniform(0, 1, len(dets)), 1)})  # many ties
    base = evaluate_wider(truth, found)
    order = rng.permutation(len(truth))
    shuffled = []
    for i in order:
        p = rng.permutation(len(found[i]["scores"]))
        shuffled.append({"boxes": found[i]["boxes"][p], "scores": found[i]["scores"][p]})
    again = evaluate_wider([truth[i] for i in order], shuffled)
    for name in base:
        assert again[name].ap == base[name].ap
        np.testing.assert_array_equal(again[name].precision, base[name].precision)


def test_official_plus_one_pixel_iou_is_an_option():
    # WIDER's x y w h = 0 0 2 2 against 1 0 2 2: continuous IoU 2 / 6; the official +1 pixel gives
    # 2 x 3 = 6 over 9 + 9 - 6 = 12, exactly 0.5, a match
    gt = [{"boxes": [[0.0, 0.0, 2.0, 2.0]], "face_setting": [0]}]
    det = [{"boxes": [[1.0, 0.0, 3.0, 2.0]], "scores": [1.0]}]
    assert box_overlaps(det[0]["boxes"], gt[0]["boxes"])[0, 0] == pytest.approx(1 / 3)
    assert box_overlaps(det[0]["boxes"], gt[0]["boxes"], plus_one_pixel=True)[0, 0] == pytest.approx(0.5)
    assert evaluate_wider(gt, det)["easy"].ap == 0.0
    assert evaluate_wider(gt, det, plus_one_pixel=True)["easy"].ap == pytest.approx(1.0)


def test_voc_ap_and_score_normalisation_by_hand():
    # recall 0.5 at precision 1, then recall 1 at precision 0.5: 0.5 * 1 + 0.5 * 0.5
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    # a dip is filled by the envelope: precision 0.4 at recall 0.5 becomes 0.8
    assert voc_ap([0.5, 0.5, 1.0], [0.4, 0.4, 0.8]) == pytest.approx(0.8)
    a, b = normalise_scores([[2.0, 4.0], [3.0]])
    np.testing.assert_allclose(a, [0.0, 1.0]) and np.testing.assert_allclose(b, [0.5])
    np.testing.assert_allclose(normalise_scores([[7.0], [7.0]])[0], [1.0])


def test_settings_default_to_the_invalid_flag():
    gt = [{"boxes": [_box(0), _box(20)], "face_flags": [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]}]
    det = [{"boxes": [_box(0), _box(20)], "scores": [0.9, 0.8]}]
    result = evaluate_wider(gt, det)
    assert result["easy"].num_faces == 1 and result["easy"].ap == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 boxes but 1"):
        evaluate_wider([{"boxes": [_box(0), _box(20)], "face_setting": [0]}], det)


# --- a literal transcription of the official MATLAB steps, loops and all --------------------------------------

def _official(ground_truth, detections, level, thresh_num=1000):
    scores = [list(map(float, d["scores"])) for d in detections]
    every = [s for image in scores for s in image]
    low, high = min(every), max(every)
    org_pr = np.zeros((thresh_num, 2))
    count_face = 0
    for gt, det, image_scores in zip(ground_truth, detections, scores):
        norm = [(s - low) / (high - low) for s in image_scores]
        order = sorted(range(len(norm)), key=lambda h: -norm[h])
        pred = [(det["boxes"][h], norm[h]) for h in order]
        gt_boxes = gt["boxes"]
        keep = [c <= level for c in gt["face_setting"]]
        count_face += sum(keep)
        recall_list = [0] * len(gt_boxes)
        proposal_list = [1] * len(pred)
        pred_recall = [0] * len(pred)
        for h, (box, _) in enumerate(pred):
            overlaps = [_iou(box, g) for g in gt_boxes]
            if overlaps:
                idx = int(np.argmax(overlaps))
                if overlaps[idx] >= 0.5:
                    if not keep[idx]:
                        recall_list[idx] = -1
                        proposal_list[h] = -1
                    elif recall_list[idx] == 0:
                        recall_list[idx] = 1
            pred_recall[h] = sum(1 for r in recall_list if r == 1)
        for t in range(thresh_num):
            thresh = 1 - (t + 1) / thresh_num
            above = [h for h, (_, s) in enumerate(pred) if s >= thresh]
            if above:
                r_index = above[-1]
                org_pr[t, 0] += sum(1 for p in proposal_list[:r_index + 1] if p == 1)
                org_pr[t, 1] += pred_recall[r_index]
    precision = np.where(org_pr[:, 0] > 0, org_pr[:, 1] / np.maximum(org_pr[:, 0], 1), 0)
    recall = org_pr[:, 1] / count_face
    mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def _iou(a, b):
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih)


def test_against_the_literal_official_steps_on_random_scenes():
    rng = np.random.default_rng(5)
    truth, found = [], []
    for _ in range(5):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        size = rng.uniform(10, 40, (n, 1))
        boxes = np.concatenate([xy, xy + size], axis=1)
        truth.append({"boxes": boxes.tolist(), "face_setting": rng.integers(0, 4, n).tolist()})
        near = boxes + rng.normal(0, 4, boxes.shape)
        far_xy = rng.uniform(0, 200, (3, 2))
        dets = np.concatenate([near, near[: n // 2], np.concatenate([far_xy, far_xy + 20], axis=1)])
        found.append({"boxes": dets.tolist(), "scores": rng.uniform(0, 1, len(dets)).round(2).tolist()})
    results = evaluate_wider(truth, found)
    for level, name in enumerate(("easy", "medium", "hard")):
        assert results[name].ap == pytest.approx(_official(truth, found, level), abs=1e-12)
