"""Callbacks every Visage run gets: bad-data reports, SLURM bookkeeping, the last validation metrics.

A task's own callbacks (its pictures) come from its module's ``configure_callbacks()``."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from datamodules.bad_samples import BAD_SAMPLE_KINDS, counts_to_dict
from trainers.stop_signals import REQUESTS

log = logging.getLogger("visage")


class BadDataReport(pl.Callback):
    """Logs, each epoch, how many samples of each kind of bad data every rank skipped (summed)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        split = getattr(trainer.datamodule, "val_split", None)
        if split is not None and int(split.bad_samples.sum()) and trainer.is_global_zero:
            log.warning("evaluation split: skipped %s", _nonzero(counts_to_dict(split.bad_samples)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        counts = getattr(loader, "bad_samples", None)
        if counts is None:
            return
        total = trainer.strategy.reduce(counts.clone().float(), reduce_op="sum")
        report = {kind: int(n) for kind, n in zip(BAD_SAMPLE_KINDS, total.tolist())}
        for kind, n in report.items():
            pl_module.log(f"data/skipped_{kind}", float(n), rank_zero_only=True, sync_dist=False)
        if sum(report.values()) and trainer.is_global_zero:
            log.warning("epoch %d: skipped bad training samples: %s", trainer.current_epoch, _nonzero(report))


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if v) or "none"


class SlurmBookkeeping(pl.Callback):
    """Logs the SLURM restart count; removes stale hpc_ckpt_* files once a run has completed.

    Lightning resumes from the newest hpc_ckpt_* in the run directory and never deletes them, so a
    finished run must clean up or a later run in the same directory would silently resume.
    """

    def __init__(self, run_dir: Path, restart_count: int):
        self.run_dir, self.restart_count = Path(run_dir), restart_count

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.log("slurm/restart_count", float(self.restart_count), rank_zero_only=True, sync_dist=False)
        if trainer.is_global_zero and self.restart_count:
            log.info("SLURM restart %d: resumed at global step %d", self.restart_count, trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or REQUESTS.stopped_after_training:  # a SIGTERM's checkpoint is kept
            return
        if trainer.is_global_zero:
            for stale in self.run_dir.glob("hpc_ckpt_*.ckpt"):
                stale.unlink()
        # no rank may look for them (Lightning's SLURM resume does, in a later validate) mid-deletion
        trainer.strategy.barrier("visage-hpc-cleanup")


class ValidationMetricsToDict(pl.Callback):
    """Keeps the last validation metrics as plain floats (for metrics.json) with the global step they
    were measured at, and, during fit, the best value of the monitored metric and its step (kept in
    checkpoints: it survives resumes and requeues).

    Callbacks that report validations (progress lines, the dashboard summary) are given this one
    and call ``update`` first: updating twice for one validation changes nothing."""

    def __init__(self, monitor: tuple[str, str] | None = None):
        self.metrics: dict[str, float] = {}
        self.step: int | None = None
        self.metric, self.direction = monitor or (None, "max")
        self.best: tuple[float, int] | None = None  # (value, global step)

    def update(self, trainer) -> None:
        if trainer.sanity_checking:
            return
        self.metrics = scalar_metrics(trainer.callback_metrics, "val/")
        self.step = trainer.global_step
        value = self.metrics.get(self.metric)
        if trainer.state.fn == "fit" and value is not None and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.direction == "max" else value < self.best[0])
            if better or self.best == (value, self.step):
                self.best = (value, self.step)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.update(trainer)

    def state_dict(self) -> dict:
        return {"best": list(self.best) if self.best else None}

    def load_state_dict(self, state_dict: dict) -> None:
        best = state_dict.get("best")
        self.best = (float(best[0]), int(best[1])) if best else None


def scalar_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """The one-number metrics whose names start with ``prefix``, as plain floats."""
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, (torch.Tensor, float, int))
            and (not isinstance(v, torch.Tensor) or v.numel() == 1)}
