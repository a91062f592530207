"""Checkpoint and requeue at a step boundary when SLURM sends the requeue signal.

Lightning's own SLURM handler saves ``hpc_ckpt_N.ckpt`` inside the signal handler, wherever each
rank happens to be: the save's barrier can pair with a different collective on another rank, and a
checkpoint taken mid-step resumes with the logged step one off (measured: steps 0-3, then 5-30).
This callback installs its handler first (Lightning then leaves SIGUSR1 alone); the handler only
notes the signal. At the end of every training batch the ranks agree whether any of them got it
(all-reduce MAX); if so all save the checkpoint together at that step boundary (where Lightning's
own restart logic expects it). Once that step's metrics have reached the loggers (at the next batch
start, or before an epoch-end validation), rank 0 runs ``scontrol requeue`` and every rank exits.
The requeued job resumes from the newest hpc_ckpt in the same run directory (Lightning's SLURM
auto-resume) at exactly that global step, and its logged steps continue without a gap.
If training reaches its last step right then, nothing is requeued: the run simply completes.

A SIGTERM (time limit, preemption) makes Lightning stop every rank at a batch boundary; the
checkpoint is saved there too, so ``scontrol requeue JOB`` later resumes from it.

``SigtermAtStepBoundary`` makes that stop safe. Lightning 2.6's SIGTERM handler broadcasts the
flag from inside the signal handler, wherever the rank is: measured under `scancel --signal=TERM`,
that broadcast paired with DDP's buffer broadcast on the other rank and gloo aborted the job before
any checkpoint. Its replacement only notes the signal; Lightning's own broadcast at the start of
every training batch (from rank 0, in the normal order of collectives) then stops all ranks together.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from trainers.dashboard import finish_dashboard_run

log = logging.getLogger("visage")


def requeue_target(env=os.environ) -> str:
    """What `scontrol requeue` takes: the job id, or ``<array job>_<task>`` for an array task."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def next_hpc_checkpoint(folder: Path) -> Path:
    """``hpc_ckpt_<N+1>.ckpt`` after the newest one: the name Lightning's auto-resume looks for."""
    numbers = [int(m.group(1)) for p in Path(folder).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class RequeueAtStepBoundary(pl.Callback):
    """Under SLURM: on the requeue signal, checkpoint at the next step boundary, requeue, exit."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.active = False
        self.requested = False
        self.saved: tuple[str, int] | None = None  # (checkpoint, global step) once saved
        self._previous_handler = None

    def _slurm_auto_requeue(self, trainer: pl.Trainer) -> bool:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None:  # single-device strategies keep no environment
            return SLURMEnvironment.detect()
        return isinstance(environment, SLURMEnvironment) and environment.auto_requeue

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.active or threading.current_thread() is not threading.main_thread():
            return
        if not self._slurm_auto_requeue(trainer):
            return
        # installed before Trainer.fit registers its handlers, so Lightning keeps its own off SIGUSR1
        self._previous_handler = signal.signal(self.signum, self._note_signal)
        self.active = True
        log.info("rank %d: requeue handler installed for signal %d", trainer.global_rank, self.signum)

    def _note_signal(self, signum, frame) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self.active or self.saved is not None:
            return
        flag = torch.tensor([1.0 if self.requested else 0.0], device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item() == 0:
            return
        # the state Lightning resumes exactly from: a checkpoint taken at on_train_batch_end
        path = trainer.strategy.broadcast(str(next_hpc_checkpoint(Path(trainer.default_root_dir))))
        trainer.save_checkpoint(path)
        self.saved = (path, trainer.global_step)

    # Leave once Lightning has handed this batch's metrics to the loggers: at the next batch start,
    # or before an epoch-end validation that would only delay the requeue.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.saved is not None:
            self._leave(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saved is not None and trainer.training:
            self._leave(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved = None  # training finished right at the signal: nothing left to resume

    def _leave(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:  # what was logged so far reaches the disk
            logger.save()
        # the dashboard run too: wandb's own process dies with the job step when SLURM requeues it
        # (a requeue soon after the start left an empty offline run); the requeued job resumes it
        finish_dashboard_run(0)
        # No collective from here on. The requeue makes SLURM send SIGTERM; Lightning's SIGTERM
        # handler would start a broadcast while ranks are leaving, so SIGTERM simply ends the process.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        path, step = self.saved
        code = self._requeue(path, step) if trainer.is_global_zero else 0
        raise SystemExit(code)

    def _requeue(self, path: str, step: int) -> int:
        target = requeue_target()
        log.warning("requeue signal: saved %s at global step %d; requeueing job %s", path, step, target)
        try:
            done = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
            ok, detail = done.returncode == 0, done.stderr.strip()
        except (OSError, subprocess.SubprocessError) as err:
            ok, detail = False, str(err)
        if ok:
            return 0
        log.error("`scontrol requeue %s` failed (%s); requeue it by hand to resume from %s", target, detail, path)
        return 1

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException on every rank at the same batch boundary
        if self.active and isinstance(exception, SIGTERMException):
            path = trainer.strategy.broadcast(str(next_hpc_checkpoint(Path(trainer.default_root_dir))))
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                log.warning("SIGTERM: saved %s at global step %d; `scontrol requeue %s` resumes from it",
                            path, trainer.global_step, requeue_target())

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.active and stage == "fit":
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
            self.active = False


class SigtermAtStepBoundary(pl.Callback):
    """Replaces Lightning's SIGTERM handler (registered when fit starts, restored by Lightning when
    fit ends) by one without collectives."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 or threading.current_thread() is not threading.main_thread():
            return  # one process: Lightning's handler runs no collective

        def note_sigterm(signum, frame) -> None:
            connector = trainer._signal_connector
            launcher = trainer.strategy.launcher
            if not connector.received_sigterm and launcher is not None:
                launcher.kill(signum)  # ranks this process launched get it too, as Lightning does
            connector.received_sigterm = True  # broadcast from rank 0 at the next batch start

        signal.signal(signal.SIGTERM, note_sigterm)
