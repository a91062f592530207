"""Stop signals during training: checkpoint at a step boundary on every rank together, then stop.

The signals (SIGTERM always; under SLURM the requeue signal SIGUSR1) are noted by the handlers of
``trainers.stop_signals``; no collective ever runs inside a handler. Lightning's own handlers are
kept off: its SLURM handler saves ``hpc_ckpt_N.ckpt`` inside the handler, wherever each rank is (the
save's barrier can pair with a different collective on another rank, and a checkpoint taken mid-step
resumes with the logged step one off), and its SIGTERM handler broadcasts from inside the handler
(measured under `scancel --signal=TERM`: that broadcast paired with DDP's buffer broadcast on the
other rank and gloo aborted the job before any checkpoint) and raises on each rank separately.

At the end of every training batch the ranks agree whether any of them got a signal (all-reduce MAX
of two flags); if so all save one checkpoint together at that step boundary, the state Lightning
resumes exactly from: under SLURM ``hpc_ckpt_N.ckpt`` in the run directory (the requeued job's
resume takes the newest that loads, trainers/checkpoint_choice.py), elsewhere ``checkpoints/last.ckpt`` (``run.resume=auto`` takes it).
Once that step's metrics have reached the loggers (at the next batch start, or before an epoch-end
validation), every rank raises ``StoppedAtStep``:

- SIGTERM: exit 143, rank 0 prints where the checkpoint is. SIGTERM never requeues by itself
  (SLURM decides: ``scontrol requeue JOB`` resumes from the checkpoint).
- the requeue signal: rank 0 runs ``scontrol requeue``; exit 0 (1 if the requeue failed). The
  requeued job resumes at exactly that global step, its logged steps continuing without a gap.

A signal that arrives after the last step boundary changes nothing for the requeue signal (the run
simply completes); for SIGTERM the command skips the final validation and exits 143.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.plugins.environments import SLURMEnvironment

from modules.distributed import any_rank
from trainers import stop_signals
from trainers.dashboard import finish_dashboard_run
from trainers.launched_ranks import TERMINATED_EXIT
from trainers.stop_signals import REQUESTS, StoppedAtStep, requeue_job, requeue_target

log = logging.getLogger("visage")


def next_hpc_checkpoint(folder: Path) -> Path:
    """``hpc_ckpt_<N+1>.ckpt`` after the newest one: the name Lightning's auto-resume looks for."""
    numbers = [int(m.group(1)) for p in Path(folder).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def _ignore_sigterm(signum, frame) -> None:
    """Stands in for Lightning's SIGTERM notifier (see the module docstring)."""


class StopAtStepBoundary(pl.Callback):
    """On SIGTERM or (under SLURM) the requeue signal: checkpoint at the next step boundary, stop."""

    def __init__(self) -> None:
        self.active = False
        self.requeue_active = False  # SLURM with Lightning's auto-requeue: the requeue signal counts
        self.saved: tuple[str, int] | None = None  # (checkpoint, global step) once saved
        self.stop: str | None = None  # "terminate" or "requeue" once agreed

    def _slurm_auto_requeue(self, trainer: pl.Trainer) -> bool:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None:  # single-device strategies keep no environment
            return SLURMEnvironment.detect()
        return isinstance(environment, SLURMEnvironment) and environment.auto_requeue

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.active or threading.current_thread() is not threading.main_thread():
            return
        self.requeue_active = self._slurm_auto_requeue(trainer)
        if not stop_signals.installed(self.requeue_active):  # `visage fit` installs them first thing
            stop_signals.install(requeue=self.requeue_active)
        REQUESTS.terminate = REQUESTS.requeue = False  # a signal before this point ended the command
        REQUESTS.stopped_after_training = None
        # Before Trainer.fit registers its handlers: Lightning then leaves the requeue signal alone
        # (a handler is there) and composes its SIGTERM handler from this no-op and ours.
        trainer._signal_connector._sigterm_notifier_fn = _ignore_sigterm
        stop_signals.set_phase(stop_signals.TRAINING)
        self.active, self.saved, self.stop = True, None, None
        log.debug("rank %d: stop signals handled at step boundaries", trainer.global_rank)

    def _checkpoint_path(self, trainer: pl.Trainer) -> Path:
        root = Path(trainer.default_root_dir).resolve()
        return next_hpc_checkpoint(root) if self.requeue_active else root / "checkpoints" / "last.ckpt"

    def _agreed(self, pl_module: pl.LightningModule) -> tuple[bool, bool]:
        """(requeue, terminate) as any rank has seen them: one small all-reduce, the same on all."""
        requeue, terminate = any_rank([REQUESTS.requeue and self.requeue_active, REQUESTS.terminate],
                                      pl_module.device)
        return requeue, terminate

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self.active or self.saved is not None:
            return
        # a step boundary is where the optimizer stepped: mid-accumulation the gradients would be lost
        # (every rank accumulates alike, so all skip the same batches)
        if (batch_idx + 1) % trainer.accumulate_grad_batches and batch_idx + 1 != trainer.num_training_batches:
            return
        requeue, terminate = self._agreed(pl_module)
        if not (requeue or terminate):
            return
        self.stop = "terminate" if terminate else "requeue"  # a job that is ending is not requeued
        # the state Lightning resumes exactly from: a checkpoint taken at on_train_batch_end
        path = trainer.strategy.broadcast(str(self._checkpoint_path(trainer)))
        trainer.save_checkpoint(path)
        self.saved = (path, trainer.global_step)

    # Leave once Lightning has handed this batch's metrics to the loggers: at the next batch start,
    # or before an epoch-end validation that would only delay the stop.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.saved is not None:
            self._leave(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saved is not None and trainer.training:
            self._leave(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training is over, at or after the signal's step boundary or without any signal. A SIGTERM
        that came after the last step boundary still gets its checkpoint (training is complete: a
        resume only validates); the requeue signal is dropped (the run simply completes)."""
        if not self.active:
            return
        _, terminate = self._agreed(pl_module)
        if terminate and self.saved is None:
            path = trainer.strategy.broadcast(str(self._checkpoint_path(trainer)))
            trainer.save_checkpoint(path)
            self.saved = (path, trainer.global_step)
        REQUESTS.stopped_after_training = self.saved if terminate else None
        self.saved = None
        stop_signals.set_phase(stop_signals.FINISHING)

    def _leave(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:  # what was logged so far reaches the disk
            logger.save()
        # the dashboard run too: wandb's own process dies with the job step when SLURM requeues it
        # (a requeue soon after the start left an empty offline run); the requeued job resumes it
        finish_dashboard_run(0)
        path, step = self.saved
        if self.stop == "terminate":
            resume = f"scontrol requeue {requeue_target()}" if self.requeue_active else "run.resume=auto"
            raise StoppedAtStep(TERMINATED_EXIT, f"terminated (SIGTERM): saved {path} at global step {step}; "
                                                 f"{resume} resumes from it")
        code = self._requeue(path, step) if trainer.is_global_zero else 0
        raise StoppedAtStep(code, f"requeue signal: saved {path} at global step {step}")

    def _requeue(self, path: str, step: int) -> int:
        target = requeue_target()
        log.warning("requeue signal: saved %s at global step %d; requeueing job %s", path, step, target)
        done, detail = requeue_job()
        if done:
            return 0
        log.error("`scontrol requeue %s` failed (%s); requeue it by hand to resume from %s", target, detail, path)
        return 1

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._done()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._done()  # Lightning calls no teardown hook after an exception

    def _done(self) -> None:
        if self.active:
            stop_signals.set_phase(stop_signals.FINISHING)
            self.active = False
