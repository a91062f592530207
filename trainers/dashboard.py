"""The wandb dashboard of a run: its own dashboard run, grouped, the config logged once, the best value.

- One dashboard run per run directory (``trainers/run_dir.dashboard_run``): requeues and resumes of a
  training run continue it (``resume="allow"``); each evaluation (validate / test / predict) gets a
  new one, grouped with the training run of its checkpoint.
- Group: ``logging.group``; else the sweep (``<run.name>-sweep-<SLURM array job>``) for the tasks of a
  SLURM job array; else the training run (a training run is the group of itself and its evaluations).
- ``logging.wandb=online`` uses whatever credentials wandb finds itself (``WANDB_API_KEY``, the key
  ``wandb login`` wrote to ``~/.netrc`` or ``$NETRC``); with none, the run logs offline and says so.
- The config goes to ``wandb.init`` once (Lightning would log the module's hyper-parameters, the same
  config nested under ``config``, a second time).
- ``best/<monitored metric>`` and ``best/global_step`` in the run's summary, beside the last value.
"""
from __future__ import annotations

import logging
import netrc
import os
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from configs.schema import to_plain
from trainers.callbacks import ValidationMetricsToDict
from trainers.evaluation_config import training_run_dir
from trainers.run_dir import DASHBOARD_FILE, DashboardRun, dashboard_run, new_dashboard_run

log = logging.getLogger("visage")

DEFAULT_HOST = "https://api.wandb.ai"


class DashboardLogger(WandbLogger):
    """Lightning's wandb logger, less two things it does on every run, and with the dashboard run's
    id and group made (or read) only when the run starts talking to wandb: on global rank 0, once,
    after the command has made its run directory. The other ranks never touch ``dashboard.json``.

    ``dashboard``: returns the DashboardRun (a picklable callable: ddp_spawn pickles the logger)."""

    def __init__(self, dashboard: Callable[[], DashboardRun], **kwargs):
        super().__init__(**kwargs)
        # Lightning always hands wandb.init ``anonymous=None``; wandb >= 0.19 warns "The anonymous
        # setting has no effect" for any value given, so leave the setting out
        self._wandb_init.pop("anonymous", None)
        self._dashboard = dashboard

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None and not self._wandb_init.get("id"):
            run = self._dashboard()
            self._id = self._wandb_init["id"] = run.id
            self._wandb_init["group"] = self._wandb_init.get("group") or run.group
        return WandbLogger.experiment.fget(self)

    def log_hyperparams(self, params) -> None:
        """Nothing: the run's config went to ``wandb.init``. (The module's hyper-parameters are that
        config again, ``{"config": ...}``, which Lightning would add as a second copy.)"""


def has_wandb_credentials(env: Mapping[str, str] = os.environ) -> bool:
    """Whether wandb will find a key without asking: WANDB_API_KEY, an identity token file, or a
    ``~/.netrc`` (``$NETRC``) entry for the server's host, where ``wandb login`` writes it."""
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = Path(env["NETRC"]).expanduser() if env.get("NETRC") else Path(env.get("HOME", "~"), ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(requested: str, env: Mapping[str, str] = os.environ) -> str:
    if requested == "online" and not has_wandb_credentials(env):
        log.warning("logging.wandb=online: no wandb credentials (run `wandb login` or set WANDB_API_KEY); "
                    "logging offline instead (`wandb sync` uploads the run later)")
        return "offline"
    return requested


def default_group(cfg: DictConfig, stage: str, checkpoint: str | None, env: Mapping[str, str] = os.environ
                  ) -> str | None:
    """The group a new dashboard run joins unless ``logging.group`` says otherwise (None: its own id)."""
    trained = training_run_dir(Path(checkpoint)) if stage != "fit" and checkpoint else None
    if trained is not None:
        if (trained / DASHBOARD_FILE).is_file():
            return dashboard_run(trained).group
        return f"{trained.parent.name}-{trained.name}"
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{cfg.run.name}-sweep-{env['SLURM_ARRAY_JOB_ID']}"
    return None


def display_name(cfg: DictConfig, run_dir: Path) -> str:
    """``logging.name``, else the run directory below ``run.root`` (``embedder-triplet/local-0``)."""
    if cfg.logging.name:
        return cfg.logging.name
    try:
        return Path(run_dir).resolve().relative_to(Path(cfg.run.root).resolve()).as_posix()
    except ValueError:
        return f"{Path(run_dir).parent.name}/{Path(run_dir).name}"


def dashboard_logger(cfg: DictConfig, run_dir: Path, stage: str = "fit", checkpoint: str | None = None
                     ) -> DashboardLogger | None:
    """The run's wandb logger, or None with ``logging.wandb=disabled``.

    ``stage`` is fit, validate, test or predict; ``checkpoint`` the one an evaluation reads (it names
    the training run to group with). A fit continues the run directory's dashboard run (a requeue, a
    resume); an evaluation starts a new one."""
    if cfg.logging.wandb == "disabled":
        return None
    group = default_group(cfg, stage, checkpoint)
    dashboard = partial(dashboard_run if stage == "fit" else new_dashboard_run, Path(run_dir), group)
    return DashboardLogger(dashboard, save_dir=str(run_dir), project=cfg.logging.project, entity=cfg.logging.entity,
                           name=display_name(cfg, run_dir), group=cfg.logging.group, job_type=stage,
                           tags=list(cfg.logging.tags) or None, notes=cfg.logging.notes, resume="allow",
                           mode=wandb_mode(cfg.logging.wandb), config=to_plain(cfg))


class DashboardSummary(pl.Callback):
    """After each validation of a fit: ``best/<metric>`` and ``best/global_step`` of the task's
    monitored metric in the dashboard run's summary (which keeps the last value of every metric
    itself). The step is the global step, as in the best checkpoint's name (``best-step<N>.ckpt``);
    the charts show that validation at N - 1 (modules/picture_log.py)."""

    def __init__(self, validations: ValidationMetricsToDict):
        self.validations = validations

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        self.validations.update(trainer)
        best = self.validations.best
        if best is None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update({f"best/{self.validations.metric}": best[0], "best/global_step": best[1]})


def finish_dashboard_run(exit_code: int) -> None:
    """Close this process's wandb run, if it has one, with the command's exit code. Left to wandb's
    own exit hook, the closing lines ("wandb sync ...") go to stdout, ANSI-coloured."""
    wandb = sys.modules.get("wandb")  # not imported: no run to close
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
