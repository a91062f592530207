"""Batchers that turn a rank's sample stream into batches.

``PKBatcher`` implements the P x K identity sampling of Hermans et al. 2017 over a stream: samples
wait in a pool grouped by identity; a batch takes P distinct identities and K images of each (with
replacement for identities that have fewer than K images in the pool). Because identity-grouped
shards are split across ranks, different ranks draw different identities.
"""
from __future__ import annotations

import random
from typing import Iterator

from datamodules.reading import collate


class PKBatcher:
    def __init__(self, p: int, k: int, pool_size: int = 2048, min_images: int = 2):
        if p < 2 or k < 1:
            raise ValueError(f"P x K sampling needs P >= 2 identities and K >= 1 images, got P={p}, K={k}")
        self.p, self.k, self.min_images = p, k, min_images
        self.pool_size = max(pool_size, 2 * p * k)

    def __call__(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        pool: dict[int, list[dict]] = {}
        size = 0
        for sample in samples:
            pool.setdefault(int(sample["label"]), []).append(sample)
            size += 1
            while size >= self.pool_size:
                batch, used = self._take(pool, rng)
                size -= used
                if batch is not None:
                    yield collate(batch)

    def _take(self, pool: dict[int, list[dict]], rng: random.Random) -> tuple[list[dict] | None, int]:
        eligible = [ident for ident, items in pool.items() if len(items) >= self.min_images]
        if len(eligible) < self.p:
            # the pool is full of identities with too few images: drop the oldest one and read on
            oldest = next(iter(pool))
            return None, len(pool.pop(oldest))
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
