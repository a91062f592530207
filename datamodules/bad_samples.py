"""Counting bad data: every kind of problem a reader can meet, counted where it was met.

Bad data never crashes a run and is never silent: each kind is counted in the process that met it
(a loader worker, the main process), the counts travel with the batches, and the run logs them.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch

log = logging.getLogger(__name__)

BAD_SAMPLE_KINDS = ("undecodable_image", "bad_json", "missing_field", "bad_shape", "empty_shard",
                    "truncated_shard", "corrupt_shard", "transform_failed")


class BadSampleCounter:
    """Counts skipped samples by kind in one process; ``take()`` returns and clears the counts."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if kind not in self.examples:
            self.examples[kind] = where
            log.warning("skipping bad data (%s): %s", kind, where)

    def take(self) -> tuple[int, ...]:
        """The counts in ``BAD_SAMPLE_KINDS`` order, as plain ints: inside a batch from a loader
        worker a tensor would cost a shared-memory handle of its own (a socket round trip)."""
        out = tuple(self.counts.get(k, 0) for k in BAD_SAMPLE_KINDS)
        self.counts.clear()
        return out


def counts_to_dict(counts: torch.Tensor) -> dict[str, int]:
    return {kind: int(n) for kind, n in zip(BAD_SAMPLE_KINDS, counts.tolist())}
