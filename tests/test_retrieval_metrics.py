"""Retrieval metrics (faiss search) against a hand example and a direct numpy computation."""
import numpy as np
import pytest
import torch

from modules.metrics import retrieval
from modules.metrics.retrieval import retrieval_metrics


def _unit(angles_deg):
    radians = np.deg2rad(angles_deg)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_hand_example():
    # gallery at 10, 20, 30, 40 degrees from both queries (at 0 degrees), labels 7, 8, 7, 8
    gallery = _unit([40, 10, 30, 20]) * [[1.0], [3.0], [0.5], [2.0]]   # norms must not matter
    gallery_labels = np.array([8, 7, 7, 8])
    queries = _unit([0, 0])
    result = retrieval_metrics(queries, np.array([7, 8]), gallery, gallery_labels, exclude_self=False)
    # ranking by angle: gallery rows 1 (10), 3 (20), 2 (30), 0 (40)
    np.testing.assert_array_equal(result["neighbours"], [[1, 3, 2, 0, -1], [1, 3, 2, 0, -1]])
    np.testing.assert_array_equal(result["neighbour_correct"][:, :4], [[1, 0, 1, 0], [0, 1, 0, 1]])
    # query 7: hits at ranks 1, 3 -> AP (1/1 + 2/3) / 2 = 5/6; query 8: ranks 2, 4 -> (1/2 + 2/4) / 2
    assert result["mAP"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert result["rank1"] == 0.5 and result["rank5"] == 1.0
    assert result["num_valid_queries"] == 2.0
    np.testing.assert_allclose(result["neighbour_similarity"][0, :4], np.cos(np.deg2rad([10, 20, 30, 40])),
                               atol=1e-6)


def _reference(queries, q_labels, gallery, g_labels, exclude_self):
    """Cosine ranking in float64 numpy, AP by its definition, queries without a match dropped."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = q @ g.T
    rank1, rank5, aps, nearest = [], [], [], []
    critical_gap = np.inf   # smallest similarity gap whose order changes a metric or a neighbour
    for i in range(len(q)):
        candidates = [j for j in range(len(g)) if not (exclude_self and j == i)]
        ordered = sorted(candidates, key=lambda j: -similarity[i, j])
        nearest.append(ordered[:5])
        for r in range(len(ordered) - 1):
            first, second = ordered[r], ordered[r + 1]
            if r < 5 or (g_labels[first] == q_labels[i]) != (g_labels[second] == q_labels[i]):
                critical_gap = min(critical_gap, similarity[i, first] - similarity[i, second])
        relevant = [r + 1 for r, j in enumerate(ordered) if g_labels[j] == q_labels[i]]
        if not relevant:
            continue
        rank1.append(relevant[0] <= 1)
        rank5.append(relevant[0] <= 5)
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(relevant)]))
    return np.mean(rank1), np.mean(rank5), np.mean(aps), len(aps), np.array(nearest), critical_gap


@pytest.mark.parametrize("exclude_self", [False, True])
def test_matches_direct_numpy_computation(exclude_self):
    rng = np.random.default_rng(2)   # a seed whose data has no near-ties (checked below)
    centres = rng.normal(size=(30, 24))
    g_labels = np.r_[np.repeat(np.arange(30), 4), np.arange(30, 40)]        # 10 singletons
    gallery = np.r_[centres, rng.normal(size=(10, 24))][g_labels] + rng.normal(size=(130, 24)) * 0.9
    if exclude_self:
        queries, q_labels = gallery, g_labels
    else:
        q_labels = np.r_[np.arange(30), np.arange(40, 45)]                  # 5 unseen identities
        queries = np.r_[centres, rng.normal(size=(5, 24))] + rng.normal(size=(35, 24)) * 0.9
    rank1, rank5, mean_ap, num_valid, nearest, min_gap = _reference(queries, q_labels, gallery, g_labels,
                                                                      exclude_self)
    assert min_gap > 1e-5, "test data must have no near-ties (float32 search)"
    result = retrieval_metrics(torch.tensor(queries), torch.tensor(q_labels), gallery, g_labels,
                               exclude_self=exclude_self)
    assert result["rank1"] == pytest.approx(rank1, abs=1e-12)
    assert result["rank5"] == pytest.approx(rank5, abs=1e-12)
    assert result["mAP"] == pytest.approx(mean_ap, abs=1e-9)
    assert result["num_valid_queries"] == num_valid == (130 - 10 if exclude_self else 30)
    assert result["num_queries"] == len(queries)
    np.testing.assert_array_equal(result["neighbours"], nearest)
    np.testing.assert_array_equal(result["neighbour_correct"], g_labels[nearest] == q_labels[:, None])
    if exclude_self:
        assert not np.any(result["neighbours"] == np.arange(130)[:, None])
    assert 0.0 < rank1 < 1.0 and mean_ap < rank5      # the data is neither trivial nor hopeless


def test_chunked_search_gives_the_same_answer(monkeypatch):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(20), 3)
    embeddings = rng.normal(size=(20, 8))[labels] + rng.normal(size=(60, 8))
    whole = retrieval_metrics(embeddings, labels, embeddings, labels, exclude_self=True)
    monkeypatch.setattr(retrieval, "_MAX_TABLE_ENTRIES", 7 * 60)       # 7 queries per search
    chunked = retrieval_metrics(embeddings, labels, embeddings, labels, exclude_self=True)
    for key in ("rank1", "rank5", "mAP", "num_valid_queries"):
        assert chunked[key] == whole[key]
    np.testing.assert_array_equal(chunked["neighbours"], whole["neighbours"])


def test_rejects_inconsistent_inputs():
    x = np.ones((3, 4))
    with pytest.raises(ValueError):
        retrieval_metrics(x, [0, 1], x, [0, 1, 2], exclude_self=False)
    with pytest.raises(ValueError):
        retrieval_metrics(x, [0, 1, 2], x[:2], [0, 1], exclude_self=True)


def test_ties_rank_optimistically_and_duplicates_never_return_the_query_itself():
    # gallery: 10 degrees (other identity), then two identical items at 20 degrees, one relevant
    gallery = _unit([10, 20, 20, 60])
    result = retrieval_metrics(_unit([0]), [1], gallery, [0, 1, 2, 1], exclude_self=False)
    # relevant items: the tied one (1 + one strictly closer item = rank 2) and 60 degrees (rank 4)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # duplicated embeddings: each copy's nearest neighbour is the other copy, never itself
    embeddings = _unit([0, 0, 0, 90, 180])
    result = retrieval_metrics(embeddings, [0, 0, 1, 2, 3], embeddings, [0, 0, 1, 2, 3], exclude_self=True,
                               ranks=(1, 2))
    assert not np.any(result["neighbours"] == np.arange(5)[:, None])
    assert set(result["neighbours"][0]) == {1, 2} and set(result["neighbours"][1]) == {0, 2}
    assert result["num_valid_queries"] == 2.0
    # the relevant copy ties with an irrelevant one at the top: optimistic ranks put it first,
    # whichever of the two faiss happens to list first
    assert result["rank1"] == 1.0 and result["mAP"] == 1.0


def test_query_missing_from_a_tied_search_result_still_yields_other_neighbours():
    # five identical embeddings: faiss may list the query itself after the k + 1 it returns
    embeddings = np.ones((5, 3))
    result = retrieval_metrics(embeddings, [0] * 5, embeddings, [0] * 5, exclude_self=True, ranks=(1, 2))
    assert result["neighbours"].shape == (5, 2)
    assert not np.any(result["neighbours"] == np.arange(5)[:, None])
    assert np.all(result["neighbours"] >= 0)
    assert result["rank1"] == 1.0 and result["mAP"] == 1.0
