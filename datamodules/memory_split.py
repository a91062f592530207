"""An evaluation split held in memory: every rank sees the same list of samples."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset

from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import DecodedSample, decode_sample
from datamodules.schema import SampleError
from datamodules.shard_stream import read_shard


class MemorySplit(Dataset):
    """An evaluation split held in memory as encoded records, decoded on access.

    Bad records are dropped when the split is loaded (counted in ``bad_samples``), so every rank sees
    the same list and a DistributedSampler can give every rank the same number of batches.
    """

    def __init__(self, shards: Iterable[tuple[str, int]], transform: Callable, required: tuple[str, ...]):
        self.transform, self.required = transform, required
        counter = BadSampleCounter()
        self.records: list[dict] = []
        for url, expected in shards:
            for raw in read_shard(url, counter, expected):
                try:
                    decode_sample(raw, required)
                except SampleError as err:
                    counter.add(err.kind, str(err), item=(url, raw.get("__key__")))
                    continue
                self.records.append(raw)
        self.bad_samples = torch.tensor(counter.totals())

    def __len__(self) -> int:
        return len(self.records)

    def decoded(self, index: int) -> DecodedSample:
        return decode_sample(self.records[index], self.required)

    def __getitem__(self, index: int) -> dict:
        sample = self.transform(self.decoded(index))
        sample["index"] = torch.tensor(index)
        return sample
