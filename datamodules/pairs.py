"""Balanced verification pairs drawn from identity labels: one drawer for the evaluation of held-out
identities (``modules.metrics.verification``) and for writing ``.bin`` verification sets
(``datamodules.converters.verification_bin``)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def _draw_distinct(rng: np.random.Generator, count: int, available: int, kind: str,
                   draw_one: Callable[[], tuple[int, int] | None],
                   enumerate_all: Callable[[], list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs, uniform among the ``available`` pairs of a kind: a choice
    without replacement from the enumerated pool when it is small, rejection sampling of repeats
    while it is large (rejection would stall near exhaustion)."""
    if count > available:
        raise ValueError(f"not enough distinct pairs: asked for {count} {kind} pairs, the labels hold "
                         f"{available} {kind} pairs")
    if count == 0:
        return []
    if 2 * count > available:
        pool = enumerate_all()
        return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]
    drawn: dict[tuple[int, int], None] = {}
    while len(drawn) < count:
        pair = draw_one()
        if pair is not None:
            drawn.setdefault(pair, None)
    return list(drawn)


def balanced_pairs(labels, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced, distinct same/different pairs of samples, drawn deterministically from their labels.

    ``labels[i]`` is the identity of sample i; samples with a negative label are ignored. There are
    ceil(num_pairs / 2) same-identity pairs and floor(num_pairs / 2) different-identity pairs,
    interleaved same-first, so that every contiguous fold of the 10-fold protocol is balanced. Each
    pair is drawn uniformly among all pairs of its kind (an identity with many images gives many
    same pairs), no pair repeats, no sample is paired with itself, and each pair is (smaller index,
    larger index). Returns ``(idx_a, idx_b, is_same)``: int64, int64, bool arrays of length
    ``num_pairs``; raises ValueError when the labels hold too few distinct pairs of a kind.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(labels >= 0)
    _, inverse, counts = np.unique(labels[usable], return_inverse=True, return_counts=True)
    groups = [usable[inverse == k] for k in range(len(counts))]
    pair_counts = counts * (counts - 1) // 2
    same_available = int(pair_counts.sum())
    different_available = len(usable) * (len(usable) - 1) // 2 - same_available
    group_weights = pair_counts / max(same_available, 1)

    def one_same() -> tuple[int, int]:  # an identity weighted by its pair count, then two of its samples
        group = groups[rng.choice(len(groups), p=group_weights)]
        a, b = (int(group[i]) for i in rng.choice(len(group), size=2, replace=False))
        return min(a, b), max(a, b)

    def all_same() -> list[tuple[int, int]]:
        return [(int(g[i]), int(g[j])) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]

    def one_different() -> tuple[int, int] | None:  # two samples, rejected when they share an identity
        a, b = (int(usable[i]) for i in rng.choice(len(usable), size=2, replace=False))
        return None if labels[a] == labels[b] else (min(a, b), max(a, b))

    def all_different() -> list[tuple[int, int]]:
        return [(int(usable[i]), int(usable[j])) for i in range(len(usable)) for j in range(i + 1, len(usable))
                if labels[usable[i]] != labels[usable[j]]]

    num_same, num_different = (num_pairs + 1) // 2, num_pairs // 2
    same = _draw_distinct(rng, num_same, same_available, "same-identity", one_same, all_same)
    different = _draw_distinct(rng, num_different, different_available, "different-identity", one_different,
                               all_different)
    pairs = np.empty((num_pairs, 2), dtype=np.int64)
    is_same = np.zeros(num_pairs, dtype=bool)
    if num_same:
        pairs[0::2] = same
        is_same[0::2] = True
    if num_different:
        pairs[1::2] = different
    return pairs[:, 0].copy(), pairs[:, 1].copy(), is_same
