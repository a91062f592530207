"""The shared sections of every experiment's typed config and their checks (no torch, no Lightning).

An experiment is ``task`` plus the sections ``run``, ``data``, ``model``, ``optim``, ``trainer``,
``logging`` and ``finetune``. The sections every task shares live here; a task's schema (its
``model`` section and its data knobs) lives with the task and extends ``ExperimentConfig``; its
``check`` classmethod adds the task's checks to the shared ones. Defaults live in these dataclasses
only: the YAML files set what differs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from configs.errors import ParameterError, VisageError
from configs.trainer_settings import TrainerConfig, check_trainer_settings


class ConfigError(VisageError, ValueError):
    """A config that cannot run; the message starts with the key."""

    exit_code = 2


# -- checks shared by every schema -------------------------------------------------------------
def one_of(value: Any, key: str, choices) -> None:
    if value not in tuple(choices):
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def at_least(value: Any, key: str, low: float, inclusive: bool = True) -> None:
    """``value >= low`` (``> low`` when not ``inclusive``); None passes (an unset option)."""
    if value is not None and (value < low if inclusive else value <= low):
        raise ConfigError(f"{key}: must be {'>=' if inclusive else '>'} {low}, got {value}")


def positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        at_least(OmegaConf.select(cfg, key), key, 0, inclusive=False)


def rule(key: str, check, *args) -> None:
    """Run a component's own check and report what it raises under ``key`` (or ``key.parameter``
    for a ``ParameterError``): the component owns the rule, the config names the key."""
    try:
        check(*args)
    except ParameterError as err:
        raise ConfigError(f"{key}.{err.parameter}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


# -- the shared sections -----------------------------------------------------------------------
@dataclass
class RunConfig:
    root: str = "runs"
    name: Optional[str] = None          # default: <task>-<experiment file stem>
    id: Optional[str] = None            # default: slurm-<job> under SLURM, else the next local-N
    seed: int = 0
    resume: Optional[str] = None        # "auto" (last.ckpt of the latest run of this name) or a path


@dataclass
class ShardDataConfig:
    """What every task's data section holds: where the shards are and how they are read."""
    root: Optional[str] = None          # a dataset folder with train/ and val/ splits
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 64
    batch_size: int = 64                # per rank
    num_workers: int = 2
    shuffle_buffer: int = 256
    batches_per_epoch: Optional[int] = None  # default: training samples / global batch
    val_batch_size: int = 128


@dataclass
class OptimConfig:
    name: str = "adam"                  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"           # none | cosine | warmup_poly
    warmup_steps: int = 0


@dataclass
class LoggingConfig:
    wandb: str = "offline"              # offline | online (after `wandb login` or WANDB_API_KEY) | disabled
    project: str = "visage"
    entity: Optional[str] = None
    name: Optional[str] = None          # dashboard run name; default: <run.name>/<run directory>
    group: Optional[str] = None         # dashboard group; default: the sweep (SLURM array), else the training run
    tags: list[str] = field(default_factory=list)
    notes: Optional[str] = None
    pictures: bool = True               # PNG + dashboard pictures at each validation
    picture_samples: int = 16
    progress_every_n_steps: int = 50    # a plain progress line every N steps (stdout when it is not a terminal,
                                        # and <run>/train.log); 0: none


# 'from' is a Python keyword, so this section is a checked dict rather than a dataclass
# min_loaded: the fraction of the embedding network's tensors that finetune.from must fill (0 loaded
# is always an error): weights that do not fit stop the run instead of training from scratch
FINETUNE_DEFAULTS = {"from": None, "prefix_map": {}, "freeze": [], "unfreeze_at_epoch": None, "lr_factor": 0.1,
                     "min_loaded": 0.5}
FINETUNE_TYPES = {"from": (str, type(None)), "prefix_map": (dict, DictConfig), "freeze": (list, tuple),
                  "unfreeze_at_epoch": (int, type(None)), "lr_factor": (int, float), "min_loaded": (int, float)}


@dataclass
class ExperimentConfig:
    """The sections every task shares. A task's schema adds ``model`` and its own ``data`` section."""
    task: str = MISSING
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    finetune: dict[str, Any] = field(default_factory=lambda: dict(FINETUNE_DEFAULTS))

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """Checks that need more than types: choices, paths, combinations."""
        check_trainer(cfg)
        check_shard_data(cfg)
        check_finetune(cfg)
        one_of(cfg.logging.wandb, "logging.wandb", ("offline", "online", "disabled"))
        at_least(cfg.logging.progress_every_n_steps, "logging.progress_every_n_steps", 0)
        one_of(cfg.optim.name, "optim.name", ("adam", "adamw", "sgd"))
        one_of(cfg.optim.scheduler, "optim.scheduler", ("none", "cosine", "warmup_poly"))
        positive(cfg, "optim.lr")
        at_least(cfg.optim.warmup_steps, "optim.warmup_steps", 0)
        at_least(cfg.optim.weight_decay, "optim.weight_decay", 0)
        if cfg.run.resume not in (None, "auto") and not Path(cfg.run.resume).is_file():
            raise ConfigError(f"run.resume: checkpoint {cfg.run.resume} does not exist")


def check_trainer(cfg: DictConfig) -> None:
    rule("trainer", check_trainer_settings, OmegaConf.to_container(cfg.trainer, resolve=True))


def check_shard_data(cfg: DictConfig) -> None:
    """The data basics: sizes, and a dataset to read (a shard folder, or the task's synthetic data)."""
    data = cfg.data
    positive(cfg, "data.batch_size", "data.image_size", "data.val_batch_size", "data.batches_per_epoch")
    at_least(data.num_workers, "data.num_workers", 0)
    at_least(data.shuffle_buffer, "data.shuffle_buffer", 0)
    synthetic = OmegaConf.select(cfg, "data.synthetic")
    if data.root is None and synthetic is None:
        raise ConfigError("data.root: no dataset given; set data.root to a shard folder or data.synthetic")
    if data.root is not None and synthetic is None:
        root = Path(os.path.expanduser(data.root))
        if not root.exists():
            raise ConfigError(f"data.root: {root} does not exist")
        for split in (data.train_split, data.val_split):
            if not (root / split / "index.json").is_file():
                raise ConfigError(f"data.root: {root / split} has no index.json (not a Visage shard split)")


def check_finetune(cfg: DictConfig) -> None:
    section = cfg.finetune
    for key in section:
        if key not in FINETUNE_DEFAULTS:
            raise ConfigError(f"finetune.{key}: unknown key; known: {', '.join(FINETUNE_DEFAULTS)}")
    for key, default in FINETUNE_DEFAULTS.items():
        if key not in section:
            section[key] = default
    plain = OmegaConf.to_container(section, resolve=True)
    for key, types in FINETUNE_TYPES.items():
        value = plain[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ConfigError(f"finetune.{key}: wrong type {type(value).__name__} ({value!r})")
    if not 0 <= plain["min_loaded"] <= 1:
        raise ConfigError(f"finetune.min_loaded: a fraction in [0, 1], got {plain['min_loaded']}")
    if plain["from"] is not None and not Path(plain["from"]).is_file():
        raise ConfigError(f"finetune.from: checkpoint {plain['from']} does not exist")


def to_plain(cfg: DictConfig) -> dict:
    """A plain, resolved dict: what checkpoints and hyperparameters hold (never a DictConfig)."""
    return OmegaConf.to_container(cfg, resolve=True)
