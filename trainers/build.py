"""Config -> (module, datamodule, trainer with loggers and callbacks, run directory)."""
from __future__ import annotations

import atexit
import json
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from configs.schema import to_plain
from trainers.callbacks import BadDataReport, SlurmBookkeeping, ValidationMetricsToDict
from trainers.checkpoint_choice import (checkpoint_to_resume, newest_loadable, require_loadable,
                                        resume_candidates, run_dir_of)
from trainers.checkpoint_io import AtomicCheckpointIO, remove_partial_saves
from trainers.curves import CurvesAtEnd
from trainers.dashboard import DashboardSummary, dashboard_logger
from trainers.ddp import FreezeAwareDDPStrategy
from trainers.last_checkpoint import LastCheckpoint
from trainers.lightning_trainer import make_trainer
from trainers.progress import progress_callbacks
from trainers.requeue import StopAtStepBoundary
from trainers.resume_step import LoggedStepAfterResume
from trainers.run_dir import RUN_DIR_ENV, resolve_run_dir, slurm_run_suffix
from trainers.tasks import load, task

log = logging.getLogger("visage")


def _destroy_process_group() -> None:
    # Lightning registers this only for NCCL; without it gloo runs sometimes abort at exit
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_destroy_process_group)


def is_launcher_or_rank_zero() -> bool:
    """True in the process a user started (Lightning's ddp launcher) or in global rank 0 under srun."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0 \
        and int(os.environ.get("SLURM_PROCID", "0")) == 0


def build_module(config: dict) -> pl.LightningModule:
    return load(task(config["task"]).module)(config)


def build_datamodule(config: dict) -> pl.LightningDataModule:
    return load(task(config["task"]).datamodule)(config["data"], seed=config["run"]["seed"])


# -- run directory and resuming -------------------------------------------------------------------
def choose_run_dir_and_checkpoint(cfg: DictConfig) -> tuple[Path, str | None]:
    """The run directory and the checkpoint to resume from (None: start fresh). Only checkpoints
    that load are chosen (trainers/checkpoint_choice.py); each one passed over is named, with why."""
    say = log.warning if is_launcher_or_rank_zero() else log.debug  # every rank looks: one says it
    resume = cfg.run.resume
    if resume not in (None, "auto"):
        ckpt = require_loadable(Path(resume).resolve())
        run_dir = run_dir_of(ckpt) if ckpt.parent.name == "checkpoints" else resolve_run_dir(
            cfg.run.root, cfg.run.name, cfg.run.id)
        return run_dir, str(ckpt)
    if resume == "auto" and not cfg.run.id and not os.environ.get(RUN_DIR_ENV) and not slurm_run_suffix(os.environ):
        runs = [p for p in (Path(cfg.run.root) / cfg.run.name).glob("*") if p.is_dir()]
        steps = [step for run in runs for step in run.iterdir() if (step / "checkpoints").is_dir()]
        previous = newest_loadable(resume_candidates([*runs, *steps]), say)
        if previous is not None:
            owner = run_dir_of(previous)
            if owner in steps:  # a step of a run of steps: the run resumes step by step (trainers/fitting.py)
                return owner.parent, None
            return owner, str(previous)
    run_dir = resolve_run_dir(cfg.run.root, cfg.run.name, cfg.run.id)
    if resume == "auto" or list(run_dir.glob("hpc_ckpt_*.ckpt")):  # a requeued SLURM job resumes by itself
        ckpt = checkpoint_to_resume(run_dir, say)
        return run_dir, str(ckpt) if ckpt is not None else None
    return run_dir, None


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    run_dir = run_dir.resolve()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # ranks started by Lightning's launcher inherit it
    if is_launcher_or_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_saves(run_dir, run_dir / "checkpoints")  # left by a save that was killed
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


# -- trainer --------------------------------------------------------------------------------------
def _strategy(trainer: DictConfig):
    devices = trainer.devices
    many = trainer.num_nodes > 1 or (isinstance(devices, int) and devices > 1) or OmegaConf.is_list(devices)
    if not many:  # one process needs no process group (and no rendezvous port to collide on)
        return "auto"
    backend = "gloo" if trainer.accelerator == "cpu" else None
    start = "spawn" if trainer.strategy == "ddp_spawn" else "popen"
    # DDP for the parameters that train now (none with a frozen backbone, more after an unfreeze), its
    # ranks watched: a dead or frozen rank ends the run and every process of it
    return FreezeAwareDDPStrategy(start_method=start, process_group_backend=backend,
                                  timeout=timedelta(seconds=trainer.ddp_timeout_s))


def csv_version(run_dir: Path) -> str:
    """``csv`` for a new run, ``csv-1``, ``csv-2``... for each resumption (Lightning's CSV logger would
    overwrite the earlier file); the curve is their concatenation."""
    if not (run_dir / "csv" / "metrics.csv").exists():
        return "csv"
    taken = {p.name for p in run_dir.glob("csv-*")}
    return next(f"csv-{k}" for k in range(1, 10_000) if f"csv-{k}" not in taken)


def _loggers(cfg: DictConfig, run_dir: Path, stage: str, checkpoint: str | None) -> list:
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version=csv_version(run_dir))]
    dashboard = dashboard_logger(cfg, run_dir, stage, checkpoint)
    return loggers + ([dashboard] if dashboard is not None else [])


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    checkpoint: ModelCheckpoint
    metrics: ValidationMetricsToDict
    resume_from: str | None


def build_run(cfg: DictConfig, run_dir: Path, resume_from: str | None = None, extra_callbacks=(),
              stage: str = "fit") -> Run:
    """``stage``: fit, or the evaluation (validate, test, predict) of the checkpoint ``resume_from``:
    an evaluation writes no checkpoints and gets a dashboard run of its own, grouped with the
    checkpoint's training run."""
    pl.seed_everything(cfg.run.seed, workers=True, verbose=False)
    config = to_plain(cfg)
    module = build_module(config)
    datamodule = build_datamodule(config)
    metric, direction = module.monitor  # the task's checkpoint metric and whether higher ("max") is better
    checkpoint = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-step{step:06d}",
                                 monitor=metric, mode=direction, save_top_k=1, auto_insert_metric_name=False)
    # Lightning 2.6's save_last only writes when a best checkpoint was written: keep our own last.ckpt,
    # replaced at every save (no -v1 copies when a resumed run writes into the same folder)
    last = LastCheckpoint(str(run_dir / "checkpoints"))
    metrics = ValidationMetricsToDict(module.monitor)
    progress, bar = progress_callbacks(run_dir, cfg.logging.progress_every_n_steps, metrics,
                                       want_bar=cfg.trainer.enable_progress_bar is not False,
                                       want_summary=cfg.trainer.enable_model_summary is not False)
    fitting = stage == "fit"
    # An evaluation saves no checkpoints: with checkpoint callbacks, loading the evaluated checkpoint
    # warned (twice) that their folder differs from the one it was trained in. Without them Lightning
    # asks for "the callbacks used to create the checkpoint": their state (best paths, fine-tuning
    # phase) is of no use to an evaluation, so in an evaluation's process that request is noise.
    if not fitting:
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")
    for_fit = [checkpoint, last, LearningRateMonitor(logging_interval="step"), CurvesAtEnd(run_dir, metric)]
    callbacks = [LoggedStepAfterResume(), *(for_fit if fitting else []), metrics, *progress, BadDataReport(),
                 DashboardSummary(metrics), SlurmBookkeeping(run_dir, int(os.environ.get("SLURM_RESTART_COUNT", "0"))),
                 StopAtStepBoundary(), *extra_callbacks]
    # the bar only in a terminal (trainers/progress.py); an evaluation writes no checkpoints
    section = {**config["trainer"], "enable_progress_bar": bar}
    trainer = make_trainer(section, strategy=_strategy(cfg.trainer), default_root_dir=str(run_dir),
                           use_distributed_sampler=False, enable_checkpointing=fitting,
                           plugins=[AtomicCheckpointIO()],  # never half-written
                           logger=_loggers(cfg, run_dir, stage, resume_from), callbacks=callbacks)
    return Run(cfg, run_dir, module, datamodule, trainer, checkpoint, metrics, resume_from)


def write_metrics(run: Run, metrics: dict) -> Path:
    path = run.run_dir / "metrics.json"
    summary = {"metrics": metrics, "global_step": run.trainer.global_step, "epoch": run.trainer.current_epoch,
               "world_size": run.trainer.world_size, "best_checkpoint": run.checkpoint.best_model_path or None,
               "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}
    path.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return path
