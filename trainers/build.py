"""Config -> (module, datamodule, trainer with loggers and callbacks, run directory)."""
from __future__ import annotations

import atexit
import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from configs.schema import to_plain
from trainers.callbacks import BadDataReport, SlurmBookkeeping, ValidationMetricsToDict
from trainers.rank_launcher import WatchedDDPStrategy
from trainers.requeue import StopAtStepBoundary
from trainers.resume_step import LoggedStepAfterResume
from trainers.run_dir import RUN_DIR_ENV, dashboard_run_id, resolve_run_dir, slurm_run_suffix
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
def latest_run_with_checkpoint(root: Path, name: str) -> Path | None:
    runs = [p for p in (Path(root) / name).glob("*") if (p / "checkpoints" / "last.ckpt").is_file()]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)


def choose_run_dir_and_checkpoint(cfg: DictConfig) -> tuple[Path, str | None]:
    """The run directory and the checkpoint to resume from (None: start fresh or let SLURM resume)."""
    resume = cfg.run.resume
    if resume not in (None, "auto"):
        ckpt = Path(resume).resolve()
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else resolve_run_dir(
            cfg.run.root, cfg.run.name, cfg.run.id)
        return run_dir, str(ckpt)
    if resume == "auto" and not cfg.run.id and not os.environ.get(RUN_DIR_ENV) and not slurm_run_suffix(os.environ):
        previous = latest_run_with_checkpoint(Path(cfg.run.root), cfg.run.name)
        if previous is not None:
            return previous, str(previous / "checkpoints" / "last.ckpt")
    run_dir = resolve_run_dir(cfg.run.root, cfg.run.name, cfg.run.id)
    if resume == "auto":
        if list(run_dir.glob("hpc_ckpt_*.ckpt")):
            return run_dir, None  # Lightning's SLURM resume picks the newest hpc_ckpt itself
        last = run_dir / "checkpoints" / "last.ckpt"
        return run_dir, str(last) if last.is_file() else None
    return run_dir, None


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    run_dir = run_dir.resolve()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # ranks started by Lightning's launcher inherit it
    if is_launcher_or_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


# -- trainer --------------------------------------------------------------------------------------
def _strategy(trainer: DictConfig):
    devices = trainer.devices
    many = trainer.num_nodes > 1 or (isinstance(devices, int) and devices > 1) or OmegaConf.is_list(devices)
    if not many:  # one process needs no process group (and no rendezvous port to collide on)
        return "auto"
    backend = "gloo" if trainer.accelerator == "cpu" else None
    start = "spawn" if trainer.strategy == "ddp_spawn" else "popen"
    return WatchedDDPStrategy(start_method=start, process_group_backend=backend,
                              timeout=timedelta(seconds=trainer.ddp_timeout_s))


def csv_version(run_dir: Path) -> str:
    """``csv`` for a new run, ``csv-1``, ``csv-2``... for each resumption (Lightning's CSV logger would
    overwrite the earlier file); the curve is their concatenation."""
    if not (run_dir / "csv" / "metrics.csv").exists():
        return "csv"
    taken = {p.name for p in run_dir.glob("csv-*")}
    return next(f"csv-{k}" for k in range(1, 10_000) if f"csv-{k}" not in taken)


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version=csv_version(run_dir))]
    mode = cfg.logging.wandb
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("logging.wandb=online but WANDB_API_KEY is not set: logging offline instead")
        mode = "offline"
    if mode != "disabled":
        loggers.append(WandbLogger(save_dir=str(run_dir), project=cfg.logging.project, entity=cfg.logging.entity,
                                   name=f"{cfg.run.name}/{run_dir.name}", id=dashboard_run_id(run_dir),
                                   mode=mode, config=to_plain(cfg)))
    return loggers


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


def build_run(cfg: DictConfig, run_dir: Path, resume_from: str | None = None, extra_callbacks=()) -> Run:
    pl.seed_everything(cfg.run.seed, workers=True, verbose=False)
    config = to_plain(cfg)
    module = build_module(config)
    datamodule = build_datamodule(config)
    metric, direction = module.monitor  # the task's checkpoint metric and whether higher ("max") is better
    checkpoint = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-step{step:06d}",
                                 monitor=metric, mode=direction, save_top_k=1, auto_insert_metric_name=False)
    # Lightning 2.6's save_last only writes when a best checkpoint was written: keep our own last.ckpt,
    # replaced at every validation (no -v1 copies when a resumed run writes into the same folder)
    last = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="last", save_top_k=1,
                           enable_version_counter=False)
    metrics = ValidationMetricsToDict()
    callbacks = [LoggedStepAfterResume(), checkpoint, last, metrics, BadDataReport(),
                 LearningRateMonitor(logging_interval="step"),
                 SlurmBookkeeping(run_dir, int(os.environ.get("SLURM_RESTART_COUNT", "0"))),
                 StopAtStepBoundary(), *extra_callbacks]
    t = cfg.trainer
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices if not OmegaConf.is_list(t.devices) else list(t.devices),
        num_nodes=t.num_nodes, strategy=_strategy(t), precision=t.precision, max_epochs=t.max_epochs,
        max_steps=t.max_steps, max_time=t.max_time, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, check_val_every_n_epoch=t.check_val_every_n_epoch,
        val_check_interval=t.val_check_interval, log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=t.num_sanity_val_steps, sync_batchnorm=t.sync_batchnorm,
        deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        limit_val_batches=t.limit_val_batches, fast_dev_run=t.fast_dev_run, default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        logger=_loggers(cfg, run_dir), callbacks=callbacks)
    return Run(cfg, run_dir, module, datamodule, trainer, checkpoint, metrics, resume_from)


def write_metrics(run: Run, metrics: dict) -> Path:
    path = run.run_dir / "metrics.json"
    summary = {"metrics": metrics, "global_step": run.trainer.global_step, "epoch": run.trainer.current_epoch,
               "world_size": run.trainer.world_size, "best_checkpoint": run.checkpoint.best_model_path or None,
               "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}
    path.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return path
