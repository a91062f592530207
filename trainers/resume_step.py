"""The logged step axis of a resumed run continues exactly where the checkpoint left it.

Lightning logs training metrics at ``fit_loop.epoch_loop._batches_that_stepped``, which in a run
that never stopped equals ``global_step`` at the start of every batch (automatic optimisation,
one optimiser: one optimiser step per batch that steps). Lightning 2.6 breaks that equality in one
case: a run bounded by ``trainer.max_steps`` resumed from a checkpoint saved in
``on_train_epoch_end`` (where ModelCheckpoint saves by default) replays the end of that epoch and
counts one stepped batch too many, so every later step is logged one too high (measured: an
uninterrupted run logs epoch 2 as steps 8..11, the resumed one as 9..12, leaving a gap at 8).
This callback puts the axis back on ``global_step`` at the first batch after a restore; it must
run before any callback that logs in ``on_train_batch_start`` (it is first in the list).
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger("visage")


class LoggedStepAfterResume(pl.Callback):
    def __init__(self) -> None:
        self.restored = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.restored = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if not self.restored:
            return
        self.restored = False
        if not pl_module.automatic_optimization or len(trainer.optimizers) != 1:
            return  # the equality holds for one optimiser under automatic optimisation only
        loop = trainer.fit_loop.epoch_loop
        if loop._batches_that_stepped != trainer.global_step:
            log.debug("resume: logged step %d realigned to global step %d", loop._batches_that_stepped,
                      trainer.global_step)
            loop._batches_that_stepped = trainer.global_step
