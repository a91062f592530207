"""Progress a person can read in a SLURM output file, and the bar for a terminal.

Lightning's progress bar redraws itself with carriage returns: in a file (a SLURM job's stdout) that
is one huge line per epoch of ANSI-coloured frames (about 22 KB per 100 steps), and with ``rich``
installed Lightning silently switches to its Rich bar. So a run chooses explicitly:

- stdout is a terminal: Lightning's tqdm bar (``TerminalBar``, without the meaningless ``v_num``);
- stdout is not a terminal: no bar at all, whether or not ``rich`` is installed.

In both cases ``ProgressLines`` writes one plain line every ``logging.progress_every_n_steps``
steps and one line after each validation to ``<run>/train.log`` (global rank 0, appended across
resumes and requeues); when stdout is not a terminal it prints the same lines there too::

    2026-05-04 10:31:07 epoch=0 step=50/600 train/loss=0.4123 lr=3.00e-04 samples/s=412.5 data_wait=12% eta=0:05:12
    2026-05-04 10:31:20 validation epoch=0 step=100 val/accuracy=0.8125 best=0.8125@100 val/auc=0.8934 ...

``data_wait`` is the share of the wall time since the previous line that the training loop spent
between the end of one batch and the start of the next (waiting for the loader and the transfer to
the device); ``eta`` extrapolates the time per step of this process so far (validations included).
"""
from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary, TQDMProgressBar
import torch

from trainers.callbacks import ValidationMetricsToDict, scalar_metrics

TRAIN_LOG = "train.log"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


class TerminalBar(TQDMProgressBar):
    """Lightning's tqdm bar without ``v_num`` (the last four characters of the loggers' joined
    versions, e.g. ``al-0`` of ``csv_embedder-triplet-local-0``: it names nothing)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def progress_callbacks(run_dir: Path, every_n_steps: int, validations: ValidationMetricsToDict,
                       want_bar: bool = True, want_summary: bool = True) -> tuple[list[pl.Callback], bool]:
    """The progress callbacks of a run and the Trainer's ``enable_progress_bar``.

    The model summary callback is given explicitly too (when wanted): without one Lightning picks its
    Rich table whenever ``rich`` is installed."""
    terminal = stdout_is_terminal()
    callbacks: list[pl.Callback] = [ProgressLines(Path(run_dir) / TRAIN_LOG, every_n_steps, validations,
                                                  to_stdout=not terminal)]
    if want_summary:
        callbacks.insert(0, ModelSummary())
    bar = want_bar and terminal
    if bar:
        callbacks.append(TerminalBar())
    return callbacks, bar


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def format_value(value: float) -> str:
    """4 significant decimals for ordinary numbers, scientific notation for tiny or huge ones."""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


class ProgressLines(pl.Callback):
    """Plain progress lines (see the module docstring), written on global rank 0 only."""

    def __init__(self, log_path: Path, every_n_steps: int, validations: ValidationMetricsToDict, to_stdout: bool):
        self.log_path, self.every_n_steps, self.to_stdout = Path(log_path), every_n_steps, to_stdout
        self.validations = validations  # the last validation metrics and the best monitored value
        self._reset_window(time.monotonic())
        self._fit_start, self._fit_start_step, self._last_batch_end = 0.0, 0, None
        self._paused_at: float | None = None
        self._last_step = -1

    # -- output -------------------------------------------------------------------------------------
    def emit(self, trainer: pl.Trainer, text: str) -> None:
        if not trainer.is_global_zero:
            return
        line = f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}"
        if self.to_stdout:
            print(line, flush=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(line + "\n")

    # -- training -----------------------------------------------------------------------------------
    def _reset_window(self, now: float) -> None:
        self._window_start, self._window_wait, self._window_samples = now, 0.0, 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        now = time.monotonic()
        self._fit_start, self._fit_start_step, self._last_batch_end = now, trainer.global_step, now
        self._last_step = trainer.global_step
        self._reset_window(now)
        total = _total_steps(trainer)
        self.emit(trainer, f"fit: starting at step={trainer.global_step}/{total} epoch={trainer.current_epoch} "
                           f"world_size={trainer.world_size} log={self.log_path}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if self._last_batch_end is not None:
            self._window_wait += now - self._last_batch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        self._last_batch_end = now
        if not self.every_n_steps:
            return
        self._window_samples += batch_size(batch) * trainer.world_size
        for key, value in trainer.progress_bar_metrics.items():
            if key.startswith("train") and isinstance(value, (int, float)) and math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0:
            self.emit(trainer, self._training_line(trainer, now))
            self._reset_window(now)
        self._last_step = step

    def _training_line(self, trainer: pl.Trainer, now: float) -> str:
        step, total = trainer.global_step, _total_steps(trainer)
        window = max(now - self._window_start, 1e-9)
        parts = [f"epoch={trainer.current_epoch}", f"step={step}/{total}"]
        parts += [f"{key}={format_value(self._sums[key] / self._counts[key])}" for key in sorted(self._sums)]
        if trainer.optimizers:
            parts.append(f"lr={trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"samples/s={self._window_samples / window:.1f}")
        parts.append(f"data_wait={min(self._window_wait / window, 1.0):.0%}")
        done = step - self._fit_start_step
        remaining = (total - step) if isinstance(total, int) else math.inf
        eta = (now - self._fit_start) / done * remaining if done > 0 else math.inf
        parts.append(f"eta={format_duration(eta)}")
        return " ".join(parts)

    # -- validation (and test) ----------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused_at = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused_at is not None and trainer.training:  # validation time is no step time
            now = time.monotonic()
            self._window_start += now - self._paused_at
            self._last_batch_end = now
        self._paused_at = None
        if not trainer.sanity_checking:
            self._evaluation_line(trainer, "validation", "val/")

    def on_test_end(self, trainer, pl_module) -> None:
        self._evaluation_line(trainer, "test", "test/")

    def _evaluation_line(self, trainer: pl.Trainer, kind: str, prefix: str) -> None:
        metrics = scalar_metrics(trainer.callback_metrics, prefix)
        if not metrics:
            return
        parts = [kind]
        if trainer.state.fn == "fit":  # an evaluation of a checkpoint has no step of its own
            parts += [f"epoch={trainer.current_epoch}", f"step={trainer.global_step}"]
        tracker = self.validations
        tracker.update(trainer)
        monitored = prefix + tracker.metric.split("/", 1)[-1] if tracker.metric else None
        if monitored in metrics:  # the task's monitored metric first, with the best so far during fit
            parts.append(f"{monitored}={format_value(metrics.pop(monitored))}")
            if kind == "validation" and trainer.state.fn == "fit" and tracker.best is not None:
                parts.append(f"best={format_value(tracker.best[0])}@{tracker.best[1]}")
        parts += [f"{key}={format_value(value)}" for key, value in sorted(metrics.items())]
        self.emit(trainer, " ".join(parts))


def batch_size(batch) -> int:
    """The length of the first tensor in a batch (a tensor, or a dict / list / tuple holding them);
    0 when there is none. (Lightning's ``extract_batch_size`` warns on every dict with two tensors.)"""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = batch_size(item)
        if size:
            return size
    return 0


def _total_steps(trainer: pl.Trainer):
    """The number of optimizer steps the fit will run, or "?" when no bound is known yet."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 (no loader yet, or an unbounded stream)
        return "?"
    return int(total) if math.isfinite(total) else "?"
