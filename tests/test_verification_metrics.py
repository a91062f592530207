"""Verification metrics against hand computations, brute force and scikit-learn."""
import math

import numpy as np

from datamodules.pairs import balanced_pairs
import pytest
import sklearn.metrics
import torch
from sklearn.model_selection import KFold

from modules.metrics.verification import (
    auc,
    fold_bounds,
    kfold_verification,
    pair_distances,
    roc_curve,
    tar_at_far,
    verification_report,
)


# --------------------------------------------------------------------------------------------- pairs

# a small pool (10 positives: drawn by enumeration) and a large one (rejection sampling)
@pytest.mark.parametrize("labels", [
    np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, -1, -1, 4]),
    np.r_[np.repeat(np.arange(50), 4), -np.ones(20, int), np.arange(50, 80)],
])
def test_pairs_are_balanced_distinct_deterministic_and_correctly_labelled(labels):
    a, b, same = balanced_pairs(labels, num_pairs=19, seed=3)
    assert a.dtype == np.int64 and b.dtype == np.int64 and same.dtype == bool
    assert same.sum() == 10 and (~same).sum() == 9
    assert np.all(same[0::2]) and not np.any(same[1::2])             # interleaved, positive first
    assert np.all(a < b)                                               # never an image with itself
    assert len(set(zip(a.tolist(), b.tolist()))) == 19                 # no pair twice
    assert np.all((labels[a] == labels[b]) == same)
    assert np.all(labels[a] >= 0) and np.all(labels[b] >= 0)          # unlabelled samples unused
    again = balanced_pairs(labels, num_pairs=19, seed=3)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    other = balanced_pairs(labels, num_pairs=19, seed=4)
    assert not (np.array_equal(a, other[0]) and np.array_equal(b, other[1]))


def test_pairs_exhaust_the_pool_exactly_and_refuse_more():
    labels = np.array([0, 0, 1, 1, 1, 2])
    # positives available: C(2,2) + C(3,2) = 4
    a, b, same = balanced_pairs(labels, num_pairs=8, seed=0)
    positives = sorted(zip(a[same].tolist(), b[same].tolist()))
    assert positives == [(0, 1), (2, 3), (2, 4), (3, 4)]
    with pytest.raises(ValueError, match="distinct pairs"):
        balanced_pairs(labels, num_pairs=10, seed=0)
    # negatives available: C(6,2) - 4 = 11
    with pytest.raises(ValueError, match="distinct pairs"):
        balanced_pairs(np.array([0, 0, 0, 0, 0, 1]), num_pairs=12, seed=0)


# --------------------------------------------------------------------------------------------- distances

def test_pair_distances_are_squared_l2_of_normalised_embeddings():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(pair_distances(a, b), 2 - 2 * cosine, atol=1e-12)
    np.testing.assert_allclose(pair_distances(torch.tensor(a) * 7, torch.tensor(b)), 2 - 2 * cosine, atol=1e-12)
    assert pair_distances([[1.0, 0.0]], [[-3.0, 0.0]])[0] == pytest.approx(4.0)


# --------------------------------------------------------------------------------------------- k-fold

def _ten_fold_case():
    """20 pairs = 10 folds of (positive, negative); grid 0.1, 0.6, 1.2, 2.0.

    Easy folds: positive 0.2, negative 1.8 (right for 0.6 and 1.2). Fold 0: positive 1.0 (only
    1.2 and 2.0 accept it). Fold 1: negative 0.9 (1.2 and 2.0 accept it wrongly).
    - Held out fold 0: on folds 1-9, 0.6 is right 18/18, 1.2 17/18 -> 0.6; fold 0 scores 1/2.
    - Held out fold 1: on folds 0,2-9, 0.6 17/18, 1.2 18/18 -> 1.2; fold 1 scores 1/2.
      (Had fold 1 been included, 0.6 and 1.2 tie at 19/20, the first wins and fold 1 scores 2/2.)
    - Held out fold 2-9: 0.6 and 1.2 tie at 17/18 -> the first, 0.6; the fold scores 2/2.
    """
    distances = np.tile([0.2, 1.8], 10)
    distances[0] = 1.0
    distances[3] = 0.9
    is_same = np.tile([True, False], 10)
    return distances, is_same, np.array([0.1, 0.6, 1.2, 2.0])


def test_kfold_hand_computed_ten_folds():
    distances, is_same, grid = _ten_fold_case()
    result = kfold_verification(distances, is_same, folds=10, thresholds=grid)
    np.testing.assert_array_equal(result.fold_accuracies, [0.5, 0.5] + [1.0] * 8)
    np.testing.assert_array_equal(result.fold_thresholds, [0.6, 1.2] + [0.6] * 8)
    assert result.accuracy == pytest.approx(0.9)
    assert result.accuracy_std == pytest.approx(0.2)       # sqrt((2 * 0.4^2 + 8 * 0.1^2) / 10)
    assert result.threshold == pytest.approx(0.66)
    assert result.fold_bounds == [(2 * k, 2 * k + 2) for k in range(10)]


def test_kfold_threshold_is_chosen_without_the_held_out_fold():
    distances, is_same, grid = _ten_fold_case()
    result = kfold_verification(distances, is_same, folds=10, thresholds=grid)
    # a leaky choice (all 20 pairs) would pick 0.6 for fold 1 and score it 1.0
    assert result.fold_thresholds[1] == 1.2
    assert result.fold_accuracies[1] == 0.5


def test_kfold_folds_are_contiguous_not_strided_or_shuffled():
    # fold A (pairs 0-3): positives 0.3, negatives 1.0 -> only 0.5 is right on it
    # fold B (pairs 4-7): positives 1.0, negatives 2.0 -> only 1.5 is right on it
    # each fold gets the other's threshold: A with 1.5 accepts its negatives (2/4 right), B with
    # 0.5 rejects its positives (2/4 right). Strided folds (all positives / all negatives) or
    # shuffled folds would give other thresholds.
    distances = np.array([0.3, 1.0, 0.3, 1.0, 1.0, 2.0, 1.0, 2.0])
    is_same = np.array([True, False] * 4)
    result = kfold_verification(distances, is_same, folds=2, thresholds=[0.5, 1.5])
    np.testing.assert_array_equal(result.fold_thresholds, [1.5, 0.5])
    np.testing.assert_array_equal(result.fold_accuracies, [0.5, 0.5])
    assert result.accuracy_std == 0.0
    assert result.threshold == pytest.approx(1.0)


def test_fold_bounds_match_sklearn_kfold_without_shuffle():
    for n, k in [(20, 10), (23, 10), (6000, 10), (7, 3)]:
        expected = [(int(test[0]), int(test[-1]) + 1) for _, test in KFold(n_splits=k, shuffle=False).split(np.zeros(n))]
        assert fold_bounds(n, k) == expected
    with pytest.raises(ValueError):
        fold_bounds(5, 10)


def _reference_kfold(distances, is_same, folds, thresholds):
    """Straightforward dense re-computation: sklearn's KFold, a prediction matrix, argmax."""
    accuracies, chosen = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(distances):
        train_acc = [np.mean((distances[train] < t) == is_same[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        chosen.append(best)
        accuracies.append(np.mean((distances[test] < best) == is_same[test]))
    return np.array(accuracies), np.array(chosen)


def test_kfold_matches_dense_reference_on_random_pairs():
    rng = np.random.default_rng(1)
    is_same = rng.random(503) < 0.5
    distances = np.where(is_same, rng.normal(0.9, 0.3, 503), rng.normal(1.5, 0.3, 503)).clip(0, 4)
    distances = np.round(distances, 2)   # ties with grid values: '<' must be strict
    grid = np.arange(0, 4, 0.01)
    result = kfold_verification(distances, is_same, folds=10, thresholds=grid)
    accuracies, chosen = _reference_kfold(distances, is_same, 10, grid)
    np.testing.assert_array_equal(result.fold_thresholds, chosen)
    np.testing.assert_allclose(result.fold_accuracies, accuracies, rtol=0, atol=1e-15)
    assert result.accuracy == pytest.approx(accuracies.mean(), abs=1e-15)
    assert result.accuracy_std == pytest.approx(accuracies.std(), abs=1e-15)


# --------------------------------------------------------------------------------------------- TAR@FAR

def _brute_tar_at_far(distances, is_same, far):
    """Largest candidate threshold whose FAR (neg < t) stays <= far; TAR = pos < t."""
    neg, pos = distances[~is_same], distances[is_same]
    best = None
    for t in sorted(set(distances.tolist())) + [math.inf]:
        if np.sum(neg < t) <= far * len(neg) + 1e-9:
            best = t
    return float(np.mean(pos < best)), best


@pytest.mark.parametrize("far", [1e-2, 1e-3, 0.05, 0.29, 0.5, 1.0])
def test_tar_at_far_matches_brute_force(far):
    rng = np.random.default_rng(2)
    is_same = np.r_[np.ones(300, bool), np.zeros(1000, bool)]
    distances = np.r_[rng.normal(0.8, 0.35, 300), rng.normal(1.6, 0.3, 1000)]
    distances = np.round(distances, 2)  # plenty of ties
    point = tar_at_far(distances, is_same, far)
    tar, threshold = _brute_tar_at_far(distances, is_same, far)
    assert point.tar == tar and point.threshold == threshold
    assert point.far <= far + 1e-12
    assert point.far == np.mean(distances[~is_same] < threshold)
    assert point.resolved


def test_tar_at_far_with_too_few_negatives_is_flagged():
    distances = np.array([0.1, 0.5, 0.9, 0.7, 1.2, 1.4])
    is_same = np.array([True, True, True, False, False, False])
    point = tar_at_far(distances, is_same, 1e-3)   # 3 negatives: the finest FAR is 1/3
    assert not point.resolved
    assert point.threshold == 0.7 and point.far == 0.0
    assert point.tar == pytest.approx(2 / 3)       # 0.1 and 0.5 lie below the closest negative
    assert tar_at_far(distances, is_same, 1 / 3).resolved
    with pytest.raises(ValueError):
        tar_at_far(distances, np.ones(6, bool), 1e-3)


# --------------------------------------------------------------------------------------------- ROC

def test_roc_and_auc_match_sklearn_with_ties():
    rng = np.random.default_rng(4)
    is_same = rng.random(400) < 0.3
    distances = np.round(np.where(is_same, rng.normal(0.8, 0.4, 400), rng.normal(1.4, 0.4, 400)), 1)
    fpr, tpr, thresholds = roc_curve(distances, is_same)
    ref_fpr, ref_tpr, ref_thr = sklearn.metrics.roc_curve(is_same, -distances, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-15)
    np.testing.assert_array_equal(thresholds, -ref_thr)
    assert auc(fpr, tpr) == pytest.approx(sklearn.metrics.roc_auc_score(is_same, -distances), abs=1e-12)


# --------------------------------------------------------------------------------------------- report

def test_verification_report_combines_the_parts_as_plain_floats():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 4)
    embeddings = centres[labels] + rng.normal(size=(160, 16)) * 0.6
    a, b, same = balanced_pairs(labels, 200, seed=0)
    report = verification_report(torch.tensor(embeddings[a]), torch.tensor(embeddings[b]), same,
                                 fars=(1e-2, 1e-3))
    assert set(report) == {"accuracy", "accuracy_std", "threshold", "auc",
                           "tar@far=1e-02", "threshold@far=1e-02", "resolved@far=1e-02",
                           "tar@far=1e-03", "threshold@far=1e-03", "resolved@far=1e-03"}
    assert all(type(v) is float for v in report.values())
    d = pair_distances(embeddings[a], embeddings[b])
    kfold = kfold_verification(d, same)
    assert report["accuracy"] == kfold.accuracy and report["threshold"] == kfold.threshold
    assert report["tar@far=1e-02"] == tar_at_far(d, same, 1e-2).tar
    assert report["resolved@far=1e-02"] == 1.0 and report["resolved@far=1e-03"] == 0.0  # 100 negatives
    assert report["auc"] == pytest.approx(sklearn.metrics.roc_auc_score(same, -d), abs=1e-12)
