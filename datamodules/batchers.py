"""Batchers: they turn a rank's stream of samples into batches.

The protocol: ``batcher(samples, rng, batches)`` yields ``batches`` batches (None: as many as the
samples make), reading as few samples past the last batch as it can. Batchers run where the stream
runs, inside loader workers; a batcher whose state changes during training (e.g. LMLE's clusters,
recomputed from the current embeddings) must run in the main process instead, where the module can
update it: see ARCHITECTURE.md, "batchers in the main process".

- ``PlainBatcher``: consecutive samples of the shuffled stream.
- ``KindMixBatcher``: MTCNN batches that mix crop kinds by a fixed ratio (3:1:1:2 negative, positive,
  part, landmark), whatever order the stream brings them in.
- ``PKBatcher``: the P x K identity sampling of Hermans et al. 2017 over a stream: samples wait in a
  pool grouped by identity; a batch takes P distinct identities and K images of each (with
  replacement for identities that have fewer than K images in the pool). Because identity-grouped
  shards are split across ranks, different ranks draw different identities.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator

from datamodules.codecs.crop_kinds import mix_counts
from datamodules.collate import collate
from datamodules.face_config import check_pk


class PlainBatcher:
    """Consecutive samples of the (shuffled) stream, ``batch_size`` at a time.

    It reads no sample past the last batch.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, samples: Iterator[dict], rng: random.Random, batches: int | None = None) -> Iterator[dict]:
        if batches is not None:
            samples = itertools.islice(samples, batches * self.batch_size)
        batch = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []


class PKBatcher:
    """P x K batches from a pool of up to ``pool_size`` samples. Asked for a number of batches, it
    lets the pool run down over the last ones (a batch is drawn once the pool holds what the
    remaining batches need) rather than leave a full pool of decoded samples unused."""

    def __init__(self, p: int, k: int, pool_size: int = 2048, min_images: int = 2):
        check_pk(p, k)
        self.p, self.k, self.min_images = p, k, min_images
        self.pool_size = max(pool_size, 2 * p * k)

    def _fill(self, batches: int | None, made: int) -> int:
        """Pool size at which a batch is drawn: the full pool, or near the end of a known number of
        batches only what the remaining batches need (the pool is drawn down, not thrown away)."""
        if batches is None:
            return self.pool_size
        return min(self.pool_size, (batches - made) * self.p * self.k)

    def __call__(self, samples: Iterator[dict], rng: random.Random, batches: int | None = None) -> Iterator[dict]:
        pool: dict[int, list[dict]] = {}
        size, made = 0, 0
        if batches == 0:
            return
        for sample in samples:
            pool.setdefault(int(sample["label"]), []).append(sample)
            size += 1
            while size >= self._fill(batches, made):
                eligible = [ident for ident, items in pool.items() if len(items) >= self.min_images]
                if len(eligible) >= self.p:
                    batch, used = self._take(pool, eligible, rng)
                    size -= used
                    yield collate(batch)
                    made += 1
                    if made == batches:
                        return
                elif size >= self.pool_size:
                    # the pool is full of identities with too few images: drop the oldest one and read on
                    size -= len(pool.pop(next(iter(pool))))
                else:
                    break  # a drawn-down pool at the end of the batches: read on rather than drop

    def _take(self, pool: dict[int, list[dict]], eligible: list[int], rng: random.Random) -> tuple[list[dict], int]:
        """P identities drawn from ``eligible``, K images of each; returns the batch and the number
        of samples that left the pool."""
        batch, used = [], 0
        for ident in rng.sample(eligible, self.p):
            items = pool[ident]
            if len(items) >= self.k:
                rng.shuffle(items)
                batch.extend(items[:self.k])
                del items[:self.k]
                used += self.k
                if len(items) < self.min_images:  # a lone leftover can never make a positive pair
                    used += len(items)
                    del pool[ident]
            else:
                batch.extend(rng.choice(items) for _ in range(self.k))
                used += len(items)
                del pool[ident]
        return batch, used


class KindMixBatcher:
    """Batches of ``batch_size`` samples whose ``kind`` field follows ``mix`` (kind code -> share) exactly
    (``crop_kinds.mix_counts``): samples wait in one queue per kind. When the pool reaches ``pool_size``
    and a kind still lacks samples (a stream short of landmark crops, say), the batch is completed
    with the kinds that have the most, so the stream never stalls."""

    def __init__(self, batch_size: int, mix: dict[int, int], pool_size: int = 4096):
        self.batch_size, self.want = batch_size, mix_counts(batch_size, mix)
        self.pool_size = max(pool_size, 2 * batch_size)

    def __call__(self, samples: Iterator[dict], rng: random.Random, batches: int | None = None) -> Iterator[dict]:
        pools: dict[int, list[dict]] = {kind: [] for kind in self.want}
        size, made = 0, 0
        if batches == 0:
            return
        for sample in samples:
            pools.setdefault(int(sample["kind"]), []).append(sample)
            size += 1
            complete = all(len(pools[kind]) >= need for kind, need in self.want.items())
            if complete or size >= self.pool_size:
                batch = self._take(pools, rng)
                size -= len(batch)
                yield collate(batch)
                made += 1
                if made == batches:
                    return

    def _take(self, pools: dict[int, list[dict]], rng: random.Random) -> list[dict]:
        batch = []
        for kind, need in self.want.items():
            batch += self._draw(pools[kind], need, rng)
        while len(batch) < self.batch_size:  # a short kind: fill from the fullest queue
            batch += self._draw(max(pools.values(), key=len), self.batch_size - len(batch), rng)
        rng.shuffle(batch)
        return batch

    @staticmethod
    def _draw(pool: list[dict], count: int, rng: random.Random) -> list[dict]:
        taken = []
        for _ in range(min(count, len(pool))):
            index = rng.randrange(len(pool))
            pool[index], pool[-1] = pool[-1], pool[index]
            taken.append(pool.pop())
        return taken
