"""Counting bad data: every kind of problem a reader can meet, counted in samples where it was met.

Bad data never crashes a run and is never silent: each kind is counted in the process that met it
(a loader worker, the main process), the counts travel with the batches, and the run logs them.

What a count means: samples skipped, each one once. A bad sample (an image that does not decode,
a bad annotation, a failed transform) counts 1. A shard that breaks off (empty, truncated, corrupt
or unreadable) counts the samples its index says it holds beyond those that could be read (a sample
cut in half is read, and then skipped as a bad sample of its own kind); without an index count it
counts 1. ``item`` names what was skipped (a shard and a sample key, or a shard), and a counter
counts an item once however often it is read: the training stream resamples shards, and a shard
read seven times in an epoch is still one shard's worth of lost samples.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Hashable, Iterable

import torch

log = logging.getLogger(__name__)

BAD_SAMPLE_KINDS = ("undecodable_image", "bad_json", "missing_field", "bad_shape", "empty_shard",
                    "truncated_shard", "corrupt_shard", "transform_failed")
KIND_INDEX = {kind: i for i, kind in enumerate(BAD_SAMPLE_KINDS)}

BadEvent = tuple[str, Hashable, int]  # (kind, item or None, samples)


class BadSampleCounter:
    """Counts skipped samples by kind in one process, each ``item`` once per counter.

    ``take()`` returns the events counted since the previous call (they travel inside batches to
    ``merge_bad_events`` in the main process); ``totals()`` the counts in ``BAD_SAMPLE_KINDS`` order.
    """

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}
        self._seen: set = set()
        self._events: list[BadEvent] = []

    def add(self, kind: str, where: str, count: int = 1, item: Hashable | None = None) -> None:
        if item is not None:
            if (kind, item) in self._seen:
                return
            self._seen.add((kind, item))
        self.counts[kind] += count
        if count:
            self._events.append((kind, item, count))
        if kind not in self.examples:
            self.examples[kind] = where
            log.warning("skipping bad data (%s): %s", kind, where)

    def take(self) -> tuple[BadEvent, ...]:
        """The events since the last call, as plain tuples (cheap inside a batch from a worker: a
        tensor would cost a shared-memory handle of its own); usually empty."""
        events, self._events = tuple(self._events), []
        return events

    def totals(self) -> tuple[int, ...]:
        return tuple(self.counts.get(kind, 0) for kind in BAD_SAMPLE_KINDS)


def merge_bad_events(totals: torch.Tensor, seen: set, events: Iterable[BadEvent]) -> None:
    """Adds ``events`` to ``totals`` (a tensor in ``BAD_SAMPLE_KINDS`` order), each item once per
    ``seen`` set: loader workers that share shards do not count the same sample twice."""
    for kind, item, count in events:
        if item is not None:
            if (kind, item) in seen:
                continue
            seen.add((kind, item))
        totals[KIND_INDEX[kind]] += count


def counts_to_dict(counts: torch.Tensor) -> dict[str, int]:
    return {kind: int(n) for kind, n in zip(BAD_SAMPLE_KINDS, counts.tolist())}
