"""Cutting a rank's endless shard stream into epochs of exactly ``batches_per_epoch`` batches."""
from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch

from datamodules.bad_samples import BAD_SAMPLE_KINDS, merge_bad_events
from datamodules.collate import batch_as_is
from datamodules.loader_workers import WorkerInit, WorkerLoader
from datamodules.shard_stream import ShardStream
from datamodules.starvation import NoTrainingSamples

log = logging.getLogger(__name__)


class EpochLoader:
    """Cuts a rank's ``ShardStream`` into epochs of exactly ``batches_per_epoch`` batches.

    Loader workers persist across epochs (no re-spawning); each worker's stream advances its own
    epoch counter, so epoch e's stream depends only on (seed, e, rank, worker), and each worker
    makes only its share of the epoch's batches (``ShardStream``). ``bad_samples`` counts the samples
    the epoch skipped, each bad sample (or broken shard's loss) once (``datamodules/bad_samples.py``).

    Resuming: the loader's state is ``position``, the place of the next batch it will hand out,
    ``(epoch, index within the epoch)``, counted by the loader itself as it hands batches to the
    trainer. Handing out the last batch of epoch e moves it to ``(e + 1, 0)``, so the state is the
    same whenever Lightning saves it: during a step (the batch it holds counts as taken), after
    a mid-epoch validation, at the end of the training epoch before or after validation, or when
    ``max_steps`` / ``max_epochs`` ended the run there. (Lightning's own counters are ambiguous at
    those moments: ``batches completed`` lags by one inside ``on_train_batch_end``, and an epoch
    whose last batch is done can still be the "current" epoch.) A restored loader starts its next
    pass at that position: it replays that epoch's stream and skips the batches already trained on.
    ``trainer_epoch`` (the trainer's epoch, when there is a trainer) numbers passes that do not
    resume; a resumed pass that disagrees with it is reported, since the two would drift.
    """

    def __init__(self, dataset: ShardStream, batches_per_epoch: int, num_workers: int,
                 trainer_epoch: Callable[[], tuple[int, int] | None] | None = None):
        self.dataset, self.batches_per_epoch, self.num_workers = dataset, batches_per_epoch, num_workers
        self.trainer_epoch = trainer_epoch  # () -> (trainer's epoch, batches it completed in it)
        self.position = (0, 0)
        self._resume_at: tuple[int, int] | None = None
        self.bad_samples = torch.zeros(len(BAD_SAMPLE_KINDS), dtype=torch.long)
        self._bad_seen: set = set()
        self._loader: WorkerLoader | None = None
        self._loader_next_epoch = -1

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _loader_for(self, epoch: int) -> WorkerLoader:
        if self._loader is None or self._loader_next_epoch != epoch:
            self._loader = None  # shuts persistent workers down before new ones start
            self.dataset.epoch, self.dataset.batches_per_epoch = epoch, self.batches_per_epoch
            workers = self.num_workers
            self._loader = WorkerLoader(self.dataset, batch_size=None, num_workers=workers, collate_fn=batch_as_is,
                                        persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                                        worker_init_fn=WorkerInit())
        self._loader_next_epoch = epoch + 1
        return self._loader

    def _start(self) -> tuple[int, int] | None:
        """Epoch and first batch of the pass that begins now; None for a pass that must stay empty."""
        trainer = self.trainer_epoch() if self.trainer_epoch is not None else None
        if trainer is not None and trainer[1] >= self.batches_per_epoch:
            # Lightning, resuming a max_steps run from an end-of-epoch checkpoint, may ask once more
            # for the epoch it already completed: it has no batches left (the resume waits)
            return None
        if self._resume_at is None:
            return (trainer[0] if trainer is not None else self.position[0]), 0
        start, self._resume_at = self._resume_at, None
        if trainer is not None and tuple(trainer) != start:
            log.warning("resume: the training stream stands at epoch %d, batch %d, but the trainer resumes "
                        "epoch %d after %d batches: the data will not match the uninterrupted run",
                        *start, *trainer)
        return start

    def __iter__(self) -> Iterator[dict]:
        begin = self._start()
        if begin is None:
            return
        epoch, start = begin
        self.position = (epoch, start)
        self.bad_samples.zero_()
        self._bad_seen.clear()
        it = iter(self._loader_for(epoch))
        for index in range(self.batches_per_epoch):
            try:
                batch = next(it)
            except NoTrainingSamples as err:  # from a loader worker: its own message, not its traceback
                raise NoTrainingSamples.from_loader(err) from None
            merge_bad_events(self.bad_samples, self._bad_seen, batch["bad_samples"])
            if index >= start:  # the batch counts as taken once the trainer holds it
                last = index + 1 == self.batches_per_epoch
                self.position = (epoch + 1, 0) if last else (epoch, index + 1)
                yield batch

    def state_dict(self) -> dict:
        epoch, batch = self.position
        return {"epoch": epoch, "batch": batch, "batches_per_epoch": self.batches_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        epoch = int(state["epoch"])
        if "batch" in state:
            batch = int(state["batch"])
        else:  # checkpoints before the position: Lightning's completed batches of that epoch
            batch = int(state["batches_done"])
        if batch >= self.batches_per_epoch:  # a finished epoch: the next one starts from its beginning
            epoch, batch = epoch + 1, 0
        self.position = self._resume_at = (epoch, batch)
