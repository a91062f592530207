"""Face retrieval metrics: CMC rank-k accuracy and mean average precision, searched with faiss.

Similarity is the cosine (inner product of L2-normalised embeddings, faiss ``IndexFlatIP``); the
gallery is ranked by decreasing similarity. A query whose identity has no image in the gallery
(after leaving the query itself out) cannot be answered and is left out of every metric, as in the
Market-1501 protocol; ``num_valid_queries`` says how many remained.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

# the full similarity table (queries x gallery) for average precision is computed in chunks of
# queries of at most this many entries (80 MB of float32).
_MAX_TABLE_ENTRIES = 20_000_000


def _normalised_float32(embeddings) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, dim), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def _labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).ravel()


def _relevant_ranks(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks of the relevant items, best first, in the ranking by decreasing similarity in
    which exact ties put relevant items first: r_j = j + #(irrelevant items strictly more similar)."""
    relevant_ascending = np.sort(similarity[relevant])
    count = len(relevant_ascending)
    # for every irrelevant item, how many relevant items are strictly less similar than it
    below = np.searchsorted(relevant_ascending, similarity[~relevant], side="left")
    # irrelevant items above the m-th least similar relevant item (m = 1..P): those with below >= m
    above = np.cumsum(np.bincount(below, minlength=count + 1)[::-1])[::-1][1:]
    return np.arange(1, count + 1) + above[::-1]


def retrieval_metrics(query_emb, query_labels, gallery_emb, gallery_labels, exclude_self: bool,
                      ranks: tuple[int, ...] = (1, 5)) -> dict:
    """Rank-k accuracy and mAP of each query against the gallery, plus its nearest neighbours.

    ``exclude_self=True`` means the query set is the gallery (same rows, same order): gallery item i
    is removed from the ranking of query i. Metrics come from the full cosine ranking (computed
    in chunks of queries), where exact ties put relevant items first (optimistic, whatever order a
    search returns them in). For a query with P relevant gallery items at ranks r_1 < ... < r_P:
    rank-k hit when r_1 <= k; average precision (1/P) sum_j j / r_j. Rank-k accuracy and mAP are means over valid queries. The neighbours
    shown come from a faiss ``IndexFlatIP`` search (tied items in faiss's order).

    Returns a dict with floats 'rank{k}' for k in ``ranks``, 'mAP', 'num_queries',
    'num_valid_queries', and arrays for drawing: 'neighbours' (Q, max(ranks)) int64 gallery indices
    best first (-1 where the gallery is shorter), 'neighbour_correct' (Q, max(ranks)) bool,
    'neighbour_similarity' (Q, max(ranks)) float32 cosine, and 'valid' (Q,) bool.
    """
    queries = _normalised_float32(query_emb)
    gallery = _normalised_float32(gallery_emb)
    q_labels, g_labels = _labels(query_labels), _labels(gallery_labels)
    if len(q_labels) != len(queries) or len(g_labels) != len(gallery):
        raise ValueError("one label per embedding is required")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    if exclude_self and len(queries) != len(gallery):
        raise ValueError("exclude_self needs the query set to be the gallery (same length and order)")
    num_q, num_g = len(queries), len(gallery)
    ranked_length = num_g - 1 if exclude_self else num_g
    if ranked_length < 1:
        raise ValueError("the gallery must hold at least one item besides the query")
    top_k = max(ranks)
    shown = min(top_k, ranked_length)

    # nearest neighbours: faiss, one more than needed when the query itself is in the gallery
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    scores, order = index.search(queries, shown + int(exclude_self))
    if exclude_self:
        is_self = order == np.arange(num_q)[:, None]
        # drop the query itself, or the last neighbour when (through ties) it was not returned
        keep = ~is_self
        keep[~is_self.any(axis=1), -1] = False
        order = order[keep].reshape(num_q, shown)
        scores = scores[keep].reshape(num_q, shown)
    neighbours = np.full((num_q, top_k), -1, dtype=np.int64)
    similarity = np.full((num_q, top_k), np.nan, dtype=np.float32)
    neighbours[:, :shown] = order
    similarity[:, :shown] = scores
    correct = np.zeros((num_q, top_k), dtype=bool)
    correct[:, :shown] = g_labels[order] == q_labels[:, None]

    # ranks of the relevant items in the full ranking, in chunks of queries
    average_precision = np.zeros(num_q, dtype=np.float64)
    first_rank = np.zeros(num_q, dtype=np.int64)
    valid = np.zeros(num_q, dtype=bool)
    chunk = max(1, _MAX_TABLE_ENTRIES // num_g)
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        block = queries[start:stop] @ gallery.T
        relevant = g_labels[None, :] == q_labels[start:stop, None]
        if exclude_self:
            rows = np.arange(stop - start)
            block[rows, rows + start] = -np.inf
            relevant[rows, rows + start] = False
        for row in range(stop - start):
            if not relevant[row].any():
                continue
            valid[start + row] = True
            hit_ranks = _relevant_ranks(block[row], relevant[row])
            average_precision[start + row] = np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks)
            first_rank[start + row] = hit_ranks[0]

    metrics: dict = {}
    num_valid = int(valid.sum())
    for k in ranks:
        metrics[f"rank{k}"] = float(np.mean(first_rank[valid] <= k)) if num_valid else float("nan")
    metrics["mAP"] = float(np.mean(average_precision[valid])) if num_valid else float("nan")
    metrics["num_queries"] = float(num_q)
    metrics["num_valid_queries"] = float(num_valid)
    metrics["neighbours"] = neighbours
    metrics["neighbour_correct"] = correct
    metrics["neighbour_similarity"] = similarity
    metrics["valid"] = valid
    return metrics
