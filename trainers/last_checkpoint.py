"""``last.ckpt`` always holds the weights a fit ended with.

Lightning's ModelCheckpoint saves either at every training-epoch end or, when validation runs
within epochs (``val_check_interval``) or not every epoch (``check_val_every_n_epoch``), after each
validation only. With the second, a run whose ``max_steps`` or ``max_epochs`` falls between two
validations ended with a ``last.ckpt`` several steps old: ``run.resume=auto`` then repeated those
steps and a fine-tune or export took older weights than ``metrics.json`` describes. This checkpoint
also saves at the end of the training epoch in which fit stops (the place Lightning's epoch-end
checkpoints are taken, from which a resume is exact), unless it already saved at that step.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


def fit_stops_after_this_epoch(trainer: pl.Trainer) -> bool:
    """At ``on_train_epoch_end``: whether the fit loop ends once this epoch ends."""
    if trainer.should_stop:  # early stopping, max_time, a stop signal
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: replaced wherever Lightning saves, and once more where fit stops."""

    def __init__(self, dirpath: str):
        super().__init__(dirpath=dirpath, filename="last", save_top_k=1, enable_version_counter=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and fit_stops_after_this_epoch(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
