"""Callbacks every Visage run gets: bad-data reports, pictures, SLURM bookkeeping."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from datamodules.reading import BAD_SAMPLE_KINDS, counts_to_dict
from modules.embedding_eval import held_out_pairs

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
        if trainer.interrupted:
            return
        if trainer.is_global_zero:
            for stale in self.run_dir.glob("hpc_ckpt_*.ckpt"):
                stale.unlink()
        # no rank may look for them (Lightning's SLURM resume does, in a later validate) mid-deletion
        trainer.strategy.barrier("visage-hpc-cleanup")


class Pictures(pl.Callback):
    """After each validation: a sample grid with ground truth, a retrieval panel, the ROC curve of
    every evaluation set, and per set the hardest false matches and non-matches, as PNG files in
    ``<run>/pictures`` and as dashboard images.

    The module provides ``last_evaluation`` (held-out identities) and, when it evaluates more sets
    (the recognizer's ``.bin`` files), ``last_pair_sets``; the datamodule's ``evaluation_image(set,
    index)`` gives their images."""

    def __init__(self, run_dir: Path, samples: int = 16, hardest_pairs: int = 8):
        self.dir = Path(run_dir) / "pictures"
        self.samples, self.hardest_pairs = samples, hardest_pairs

    def on_validation_end(self, trainer, pl_module) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        split = getattr(trainer.datamodule, "val_split", None)
        if not trainer.is_global_zero or evaluation is None or split is None or trainer.sanity_checking:
            return
        from modules import pictures  # noqa: PLC0415 (drawing is only needed here)

        step = trainer.global_step
        images = self._pictures(pictures, evaluation, pl_module.last_eval_labels.cpu().numpy(), split)
        pair_sets = getattr(pl_module, "last_pair_sets", None) or [held_out_pairs(evaluation)]
        images.update(self._pair_pictures(pictures, pair_sets, trainer.datamodule, split))
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            pictures.save_png(self.dir / f"{name}-step{step:06d}.png", image)
            pictures.save_png(self.dir / f"{name}-latest.png", image)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, image in images.items():  # one key each: the pictures differ in size
                    logger.log_image(key=f"pictures/{name}", images=[image], step=step)

    def _pictures(self, pictures, evaluation, labels: np.ndarray, split) -> dict[str, np.ndarray]:
        shown = [split.decoded(i) for i in range(min(self.samples, len(split)))]
        grid = pictures.sample_grid([s.image for s in shown], [s.annotation for s in shown])
        queries = _one_per_identity(labels, 6)
        neighbours, correct = evaluation.neighbours[queries, :5], evaluation.neighbour_correct[queries, :5]
        panel = pictures.retrieval_panel([split.decoded(int(q)).image for q in queries], _DecodedImages(split),
                                         neighbours, correct)
        return {"samples": grid, "retrieval": panel}

    def _pair_pictures(self, pictures, pair_sets, datamodule, split) -> dict[str, np.ndarray]:
        """The ROC curves of all sets on one chart, and a hardest-pairs panel per set."""
        from modules.metrics.verification import roc_curve  # noqa: PLC0415

        def image_of(set_index: int):
            if set_index == 0:
                return lambda i: split.decoded(i).image
            return lambda i: datamodule.evaluation_image(set_index, i)

        curves = {s.name: roc_curve(s.distances, s.is_same)[:2] for s in pair_sets}
        images = {"roc": pictures.roc_plot(curves)}
        for pair_set in pair_sets:
            images[f"hardest-pairs-{pair_set.name}"] = pictures.hardest_pairs_picture(
                pair_set, image_of(pair_set.set_index), self.hardest_pairs)
        return images


class _DecodedImages:
    """Images of a split decoded on access (the panel draws only the few it shows)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.split.decoded(int(index)).image


def _one_per_identity(labels: np.ndarray, count: int) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    return np.sort(first)[:count]


class ValidationMetricsToDict(pl.Callback):
    """Keeps the last validation metrics as plain floats (for metrics.json)."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith("val/") and isinstance(v, (torch.Tensor, float, int))}
