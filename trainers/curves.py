"""The learning-curve picture of a run, drawn from its CSV log when fit ends.

Two charts side by side: the training loss (every logged step, and its running mean when there are
many) and the task's monitored metric at each validation, against the logged step. Written as
``<run>/pictures/curves-latest.png`` (and ``curves-step<N>.png``) and logged to the dashboard as ``pictures/curves``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from modules.charts import line_chart, side_by_side
from trainers.csv_log import read_metrics

LOSS = "train/loss"


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last ``window`` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    index = np.arange(1, len(values) + 1)
    return (sums[index] - sums[np.maximum(index - window, 0)]) / np.minimum(index, window)


def curves_picture(run_dir: Path, metric: str) -> np.ndarray:
    metrics = read_metrics(run_dir)
    loss: dict[str, tuple] = {}
    if LOSS in metrics:
        steps, values = metrics[LOSS]
        loss[LOSS] = (steps, values)
        if len(values) >= 20:
            window = max(5, len(values) // 20)
            loss[f"running mean of {window}"] = (steps, running_mean(values, window))
    monitored = {metric: metrics[metric]} if metric in metrics else {}
    return side_by_side([line_chart(loss, title="training loss", y_label="loss"),
                         line_chart(monitored, title=f"{metric} at each validation", y_label=metric)])


class CurvesAtEnd(pl.Callback):
    """When fit ends (not interrupted), on global rank 0: the curves picture of the run."""

    def __init__(self, run_dir: Path, metric: str):
        self.run_dir, self.metric = Path(run_dir), metric

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:  # what was logged so far reaches the CSV file
            logger.save()
        from modules.picture_log import save_pictures  # noqa: PLC0415

        save_pictures(trainer, {"curves": curves_picture(self.run_dir, self.metric)})
