"""Our verification and retrieval metrics give torchmetrics' values (an independent implementation).

torchmetrics is a test dependency only: ours are faster (benchmarks/bench_metrics_vs_torchmetrics.py:
its binary_roc / binary_auroc take about 2-3x as long at a million pairs, its retrieval metrics
20-70x as long) and give the same numbers, which these tests check.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from modules.metrics.retrieval import retrieval_metrics
from modules.metrics.verification import auc, roc_curve, tar_at_far


def pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances of same pairs around 1.0 and different pairs around 1.8 (continuous: no ties)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    distances = np.where(same, rng.normal(1.0, 0.3, n), rng.normal(1.8, 0.3, n)).clip(0, 4)
    return distances, same


@pytest.mark.parametrize("n, seed", [(6000, 0), (20000, 1)])
def test_roc_auc_and_tar_at_far_equal_torchmetrics(n, seed):
    distances, same = pairs(n, seed)
    # torchmetrics scores: higher = more alike, so the negated distance; "accept" is score >= t
    scores, target = torch.from_numpy(-distances), torch.from_numpy(same.astype(np.int64))
    fpr, tpr, _ = roc_curve(distances, same)
    ref_fpr, ref_tpr, _ = binary_roc(scores, target)
    np.testing.assert_allclose(fpr, ref_fpr.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(tpr, ref_tpr.double().numpy(), atol=1e-6)
    assert auc(fpr, tpr) == pytest.approx(float(binary_auroc(scores, target)), abs=1e-6)
    for far in (1e-2, 1e-3):
        # the highest TAR torchmetrics' curve reaches without exceeding the FAR
        expected = float(ref_tpr[ref_fpr <= far + 1e-12].max())
        assert tar_at_far(distances, same, far).tar == pytest.approx(expected, abs=1e-6)


def embeddings(n: int, identities: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, identities, n)
    centres = rng.normal(size=(identities, 32))
    return centres[labels] + rng.normal(scale=1.2, size=(n, 32)), labels


@pytest.mark.parametrize("exclude_self", [True, False])
def test_rank_k_and_map_equal_torchmetrics(exclude_self):
    everything, all_labels = embeddings(520, 60, seed=2)
    emb, labels = everything[:400], all_labels[:400]
    # a query set of its own, or the gallery itself with each query left out of its own ranking
    queries, q_labels = (emb, labels) if exclude_self else (everything[400:], all_labels[400:])
    ours = retrieval_metrics(queries, q_labels, emb, labels, exclude_self=exclude_self)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    # torchmetrics counts a relevant item with a score <= 0 as not retrieved: shift the cosine into
    # [1, 3] (the same ranking)
    similarity = q @ g.T + 2.0
    relevant = torch.from_numpy(q_labels)[:, None] == torch.from_numpy(labels)[None, :]
    keep = torch.ones_like(relevant)
    if exclude_self:
        keep.fill_diagonal_(False)
    query_of = torch.arange(len(q))[:, None].expand_as(relevant)
    preds, target, indexes = similarity[keep], relevant[keep], query_of[keep]
    skip = {"empty_target_action": "skip"}  # queries without a match are left out, as ours are
    assert ours["mAP"] == pytest.approx(float(RetrievalMAP(**skip)(preds, target, indexes=indexes)), abs=1e-6)
    for k in (1, 5):
        reference = RetrievalHitRate(top_k=k, **skip)(preds, target, indexes=indexes)
        assert ours[f"rank{k}"] == pytest.approx(float(reference), abs=1e-6)  # torchmetrics: float32
    assert ours["num_valid_queries"] == float(target.view(len(q), -1).any(dim=1).sum())
