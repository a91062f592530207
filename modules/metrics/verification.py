"""Face verification metrics: pairs, distances, the 10-fold LFW accuracy, TAR@FAR and the ROC.

The protocol follows the one insightface uses for LFW, CFP-FP and AgeDB-30: the embeddings of an
image and its horizontal flip are summed by the caller, L2-normalised here, compared by squared L2
distance (0 = identical, 4 = opposite), and a pair is called "same" when its distance is strictly
below the threshold. Accuracy is measured with 10 contiguous folds (no shuffle): the threshold that
is most accurate on the other 9 folds is applied to the held-out fold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


DEFAULT_THRESHOLDS = np.arange(0.0, 4.0, 0.01)


def _as_numpy(array, dtype=None) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# distances
# ---------------------------------------------------------------------------------------------

def l2_normalise(embeddings) -> np.ndarray:
    """Rows divided by their L2 norm (all-zero rows stay zero), as float64."""
    x = _as_numpy(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pair_distances(emb_a, emb_b) -> np.ndarray:
    """Squared L2 distance between the L2-normalised rows of ``emb_a`` and ``emb_b``, in [0, 4].

    ``||a/|a| - b/|b|||^2 = 2 - 2 cos(a, b)``, computed as a sum of squared differences. The caller
    sums the embeddings of each image and its horizontal flip before calling this.
    """
    a, b = l2_normalise(emb_a), l2_normalise(emb_b)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    return np.sum((a - b) ** 2, axis=1)


# ---------------------------------------------------------------------------------------------
# k-fold accuracy (insightface / LFW protocol)
# ---------------------------------------------------------------------------------------------

@dataclass
class KFoldResult:
    accuracy: float               # mean held-out accuracy over folds
    accuracy_std: float           # population std (ddof=0) of the fold accuracies
    threshold: float              # mean of the per-fold thresholds
    fold_accuracies: np.ndarray   # (folds,) held-out accuracy of each fold
    fold_thresholds: np.ndarray   # (folds,) threshold chosen on the other folds
    fold_bounds: list[tuple[int, int]]  # [start, stop) pair indices of each fold


def _correct_counts(distances: np.ndarray, is_same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t: #(same and d < t) + #(different and d >= t)."""
    pos = np.sort(distances[is_same])
    neg = np.sort(distances[~is_same])
    true_accepts = np.searchsorted(pos, thresholds, side="left")
    true_rejects = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return true_accepts + true_rejects


def fold_bounds(num_pairs: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous folds in order; the first ``num_pairs % folds`` folds hold one extra pair
    (the split of sklearn's ``KFold(shuffle=False)``, which insightface uses)."""
    if folds < 2 or num_pairs < folds:
        raise ValueError(f"need folds >= 2 and at least one pair per fold ({num_pairs} pairs, {folds} folds)")
    sizes = [num_pairs // folds + (k < num_pairs % folds) for k in range(folds)]
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def kfold_verification(distances, is_same, folds: int = 10,
                       thresholds=DEFAULT_THRESHOLDS) -> KFoldResult:
    """Verification accuracy by k contiguous folds (no shuffle).

    For each fold, the threshold with the highest accuracy on the other folds (the first, i.e.
    smallest, on ties) is chosen from ``thresholds``; a pair is "same" when distance < threshold;
    the accuracy of that threshold on the held-out fold is the fold's accuracy.
    """
    d = _as_numpy(distances, np.float64).ravel()
    same = _as_numpy(is_same).astype(bool).ravel()
    grid = np.asarray(thresholds, dtype=np.float64).ravel()
    if d.shape != same.shape:
        raise ValueError(f"{d.size} distances but {same.size} labels")
    bounds = fold_bounds(d.size, folds)
    accuracies, chosen = [], []
    for start, stop in bounds:
        train = np.ones(d.size, dtype=bool)
        train[start:stop] = False
        best = grid[int(np.argmax(_correct_counts(d[train], same[train], grid)))]
        test_d, test_same = d[start:stop], same[start:stop]
        accuracies.append(float(np.mean((test_d < best) == test_same)))
        chosen.append(float(best))
    acc = np.asarray(accuracies)
    thr = np.asarray(chosen)
    return KFoldResult(accuracy=float(acc.mean()), accuracy_std=float(acc.std()),
                       threshold=float(thr.mean()), fold_accuracies=acc, fold_thresholds=thr,
                       fold_bounds=bounds)


# ---------------------------------------------------------------------------------------------
# TAR at FAR, ROC
# ---------------------------------------------------------------------------------------------

class TarAtFar(NamedTuple):
    tar: float        # fraction of same pairs with distance < threshold
    threshold: float  # the largest threshold whose false accept rate does not exceed the target
    far: float        # the false accept rate actually reached at that threshold (<= target)
    resolved: bool    # False when far_target * #negatives < 1: too few negatives to measure it


def tar_at_far(distances, is_same, far: float) -> TarAtFar:
    """True accept rate at a target false accept rate, without interpolation.

    With N different-identity distances sorted n_1 <= ... <= n_N and k = floor(far * N) false
    accepts allowed, the threshold is n_(k+1): at most k negatives lie strictly below it and any
    larger threshold would admit n_(k+1) as well, so it is the largest threshold with measured
    FAR <= far (when k >= N every pair is accepted: threshold +inf). A pair is accepted when its
    distance < threshold. When k = 0 (fewer than 1/far negatives) the result is the TAR at the
    smallest attainable FAR, zero, i.e. below the closest negative, and ``resolved`` is False.
    """
    d = _as_numpy(distances, np.float64).ravel()
    same = _as_numpy(is_same).astype(bool).ravel()
    if d.shape != same.shape:
        raise ValueError(f"{d.size} distances but {same.size} labels")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far}")
    neg = np.sort(d[~same])
    pos = d[same]
    if neg.size == 0 or pos.size == 0:
        raise ValueError("tar_at_far needs both same and different pairs")
    allowed = math.floor(far * neg.size + 1e-9)   # tolerance: 0.29 * 100 is 28.999... in floats
    threshold = float(neg[allowed]) if allowed < neg.size else math.inf
    return TarAtFar(tar=float(np.mean(pos < threshold)), threshold=threshold,
                    far=float(np.mean(neg < threshold)), resolved=allowed >= 1)


def roc_curve(distances, is_same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) at every distinct distance, thresholds ascending.

    Point i counts the pairs with distance <= thresholds[i]; the first point is (0, 0) at -inf and
    the last (1, 1) at the largest distance.
    """
    d = _as_numpy(distances, np.float64).ravel()
    same = _as_numpy(is_same).astype(bool).ravel()
    num_pos, num_neg = int(same.sum()), int((~same).sum())
    if num_pos == 0 or num_neg == 0:
        raise ValueError("roc_curve needs both same and different pairs")
    order = np.argsort(d, kind="stable")
    d_sorted, same_sorted = d[order], same[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(d_sorted)), d.size - 1]
    tp = np.cumsum(same_sorted)[last_of_value]
    fp = np.cumsum(~same_sorted)[last_of_value]
    tpr = np.r_[0.0, tp / num_pos]
    fpr = np.r_[0.0, fp / num_neg]
    thresholds = np.r_[-np.inf, d_sorted[last_of_value]]
    return fpr, tpr, thresholds


def auc(fpr, tpr) -> float:
    """Area under a curve by the trapezoidal rule (fpr ascending)."""
    return float(np.trapezoid(_as_numpy(tpr, np.float64), _as_numpy(fpr, np.float64)))


def far_key(far: float) -> str:
    """Dictionary key of a FAR target: 1e-3 -> '1e-03'."""
    return f"{far:.0e}"


def verification_report(emb_a, emb_b, is_same, fars=(1e-2, 1e-3), folds: int = 10,
                        thresholds=DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Every verification number of one pair set as plain floats, ready for a logger.

    Keys: 'accuracy', 'accuracy_std', 'threshold' (mean per-fold threshold), 'auc', and per FAR
    target f (written as in far_key): 'tar@far=f', 'threshold@far=f', 'resolved@far=f' (1.0 when
    there were enough negatives to measure that FAR, else 0.0).
    """
    distances = pair_distances(emb_a, emb_b)
    same = _as_numpy(is_same).astype(bool).ravel()
    kfold = kfold_verification(distances, same, folds=folds, thresholds=thresholds)
    fpr, tpr, _ = roc_curve(distances, same)
    report = {"accuracy": kfold.accuracy, "accuracy_std": kfold.accuracy_std,
              "threshold": kfold.threshold, "auc": auc(fpr, tpr)}
    for far in fars:
        point = tar_at_far(distances, same, far)
        key = far_key(far)
        report[f"tar@far={key}"] = point.tar
        report[f"threshold@far={key}"] = point.threshold
        report[f"resolved@far={key}"] = float(point.resolved)
    return report
