"""Where a task's pictures go after a validation: PNG files in ``<run>/pictures`` and the dashboard.

On the dashboard a validation's pictures carry the step its metrics were logged at: Lightning gives
the loggers the number of batches that stepped the optimizer *before* the current one, so during
fit a validation after global step 4 is logged at step 3 (and a validate of its own at 0). The PNG
files are named by the global step, as the checkpoints are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger


def logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning's logger connector logs the current metrics at (``_LoggerConnector.log_metrics``)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def dashboards(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def save_pictures(trainer: pl.Trainer, images: dict[str, np.ndarray]) -> Path:
    """Each picture as ``<name>-step<global step>.png`` and ``<name>-latest.png`` under the run's
    pictures folder, and as a dashboard image ``pictures/<name>`` at the logged step."""
    from modules import pictures  # noqa: PLC0415 (OpenCV drawing, only where pictures are made)

    folder = Path(trainer.default_root_dir) / "pictures"
    for name, image in images.items():
        pictures.save_png(folder / f"{name}-step{trainer.global_step:06d}.png", image)
        pictures.save_png(folder / f"{name}-latest.png", image)
    step = logged_step(trainer)
    for logger in dashboards(trainer):
        for name, image in images.items():  # one key each: the pictures differ in size
            logger.log_image(key=f"pictures/{name}", images=[image], step=step)
    return folder


def log_line_chart(trainer: pl.Trainer, key: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
                   x_name: str) -> None:
    """Curves (name -> (x, y)) as one interactive dashboard chart (a wandb line series, backed by a
    table) at the logged step."""
    loggers = dashboards(trainer)
    if not loggers or not curves:
        return
    import wandb  # noqa: PLC0415 (a wandb logger exists, so wandb is installed)

    chart = wandb.plot.line_series(xs=[np.asarray(x, dtype=float).tolist() for x, _ in curves.values()],
                                   ys=[np.asarray(y, dtype=float).tolist() for _, y in curves.values()],
                                   keys=list(curves), title=title, xname=x_name)
    for logger in loggers:
        logger.log_metrics({key: chart}, step=logged_step(trainer))
