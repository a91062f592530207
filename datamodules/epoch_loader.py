"""Cutting a rank's endless shard stream into epochs of exactly ``batches_per_epoch`` batches."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from datamodules.bad_samples import BAD_SAMPLE_KINDS, merge_bad_events
from datamodules.collate import batch_as_is
from datamodules.shard_stream import ShardStream


class EpochLoader:
    """Cuts a rank's ``ShardStream`` into epochs of exactly ``batches_per_epoch`` batches.

    Loader workers persist across epochs (no re-spawning); each worker's stream advances its own
    epoch counter, so epoch e's stream depends only on (seed, e, rank, worker), and each worker
    makes only its share of the epoch's batches (``ShardStream``). Stateful for Lightning
    (``state_dict``/``load_state_dict`` go into checkpoints): a run resumed mid-epoch replays that
    epoch's stream and skips the batches already trained on. ``bad_samples`` counts the samples the
    epoch skipped, each bad sample (or broken shard's loss) once (``datamodules/bad_samples.py``).
    """

    def __init__(self, dataset: ShardStream, batches_per_epoch: int, num_workers: int,
                 progress: Callable[[], tuple[int, int]] | None = None):
        self.dataset, self.batches_per_epoch, self.num_workers = dataset, batches_per_epoch, num_workers
        self.progress = progress  # () -> (epoch, batches completed in it), from the trainer
        self.epoch, self.skip = 0, 0
        self.bad_samples = torch.zeros(len(BAD_SAMPLE_KINDS), dtype=torch.long)
        self._bad_seen: set = set()
        self._loader: DataLoader | None = None
        self._loader_next_epoch = -1

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _loader_for(self, epoch: int) -> DataLoader:
        if self._loader is None or self._loader_next_epoch != epoch:
            self._loader = None  # shuts persistent workers down before new ones start
            self.dataset.epoch, self.dataset.batches_per_epoch = epoch, self.batches_per_epoch
            workers = self.num_workers
            self._loader = DataLoader(self.dataset, batch_size=None, num_workers=workers, collate_fn=batch_as_is,
                                      persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
        self._loader_next_epoch = epoch + 1
        return self._loader

    def __iter__(self) -> Iterator[dict]:
        if self.progress is not None:
            self.epoch = self.progress()[0]
        skip, self.skip = self.skip, 0
        self.bad_samples.zero_()
        self._bad_seen.clear()
        it = iter(self._loader_for(self.epoch))
        for index in range(self.batches_per_epoch):
            batch = next(it)
            merge_bad_events(self.bad_samples, self._bad_seen, batch["bad_samples"])
            if index >= skip:
                yield batch
        self.epoch += 1

    def state_dict(self) -> dict:
        epoch, done = self.progress() if self.progress is not None else (self.epoch, 0)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.skip = int(state["epoch"]), int(state["batches_done"])
