"""The typed experiment config: defaults.yaml + an experiment file + key=value overrides.

Everything is validated before any heavy work: unknown keys, wrong types, missing data paths and
impossible combinations raise ConfigError naming the key. Sections: run, data, model, optim,
trainer, logging, finetune. ``model`` and parts of ``data`` depend on ``task``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TASKS = ("embedder", "recognizer")
# the face networks of modules.nets.backbones; the embedder also takes "tiny" (TinyNet, its CPU default)
FACE_BACKBONES = ("iresnet_tiny", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


@dataclass
class RunConfig:
    root: str = "runs"
    name: Optional[str] = None          # default: <task>-<experiment file stem>
    id: Optional[str] = None            # default: slurm-<job> under SLURM, else the next local-N
    seed: int = 0
    resume: Optional[str] = None        # "auto" (last.ckpt of the latest run of this name) or a path


@dataclass
class SyntheticFacesConfig:
    identities: int = 1000              # training identities
    val_identities: int = 200           # held-out identities for evaluation
    per_identity: int = 10
    size: int = 112
    difficulty: float = 0.5
    seed: int = 0
    shard_size: int = 1000


@dataclass
class SamplerConfig:
    kind: str = "pk"                    # pk | plain
    p: int = 16                         # identities per batch (pk)
    k: int = 4                          # images per identity (pk)
    pool_size: int = 1024               # samples waiting, grouped by identity (pk)


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    color: float = 0.8                  # probability of brightness/contrast/hue jitter
    affine: float = 0.5                 # probability of a small shift/scale/rotation
    blur: float = 0.1


@dataclass
class DataConfig:
    root: Optional[str] = None          # a dataset folder with train/ and val/ splits
    synthetic: Optional[SyntheticFacesConfig] = None
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 64
    batch_size: int = 64                # per rank
    num_workers: int = 2
    shuffle_buffer: int = 256
    batches_per_epoch: Optional[int] = None  # default: training samples / global batch
    val_batch_size: int = 128
    val_pairs: int = 3000               # verification pairs drawn from the evaluation split
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EmbedderModelConfig:
    backbone: str = "tiny"              # tiny | one of FACE_BACKBONES
    width: int = 32                     # channels of the first stage (tiny)
    embedding_size: int = 128
    normalize: bool = False             # L2-normalise embeddings (FaceNet); batch hard uses raw ones
    mining: str = "batch_hard"          # batch_hard | batch_all | semi_hard
    margin: Optional[float] = None      # None = soft margin (softplus)
    squared: bool = False
    cross_rank_mining: bool = False     # mine over the global batch (all-gather)


@dataclass
class OptimConfig:
    name: str = "adam"                  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"           # none | cosine | warmup_poly
    warmup_steps: int = 0


@dataclass
class TrainerConfig:
    accelerator: str = "auto"           # cpu | gpu | auto
    devices: Any = 1                    # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"              # auto | ddp | ddp_spawn
    precision: str = "32-true"          # 32-true | bf16-mixed | 16-mixed
    max_epochs: Optional[int] = 10
    max_steps: int = -1
    max_time: Optional[str] = None      # "DD:HH:MM:SS": stop (and checkpoint) after this long
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    check_val_every_n_epoch: int = 1
    val_check_interval: Optional[int] = None  # validate every N training batches instead
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    ddp_timeout_s: int = 600            # a hung collective becomes an error after this long
    sync_batchnorm: bool = False
    deterministic: bool = False
    enable_progress_bar: bool = True
    limit_val_batches: Optional[float] = None


@dataclass
class LoggingConfig:
    wandb: str = "offline"              # offline | online | disabled
    project: str = "visage"
    entity: Optional[str] = None
    pictures: bool = True               # PNG + dashboard pictures at each validation
    picture_samples: int = 16


FINETUNE_DEFAULTS = {"from": None, "prefix_map": {}, "freeze": [], "unfreeze_at_epoch": None, "lr_factor": 0.1}


@dataclass
class ExperimentConfig:
    task: str = "embedder"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # 'from' is a Python keyword, so this section is a checked dict rather than a dataclass
    finetune: dict[str, Any] = field(default_factory=lambda: dict(FINETUNE_DEFAULTS))


@dataclass
class EmbedderExperiment(ExperimentConfig):
    model: EmbedderModelConfig = field(default_factory=EmbedderModelConfig)


def schema_for(task: str):
    if task == "embedder":
        return EmbedderExperiment
    if task == "recognizer":
        from modules.recognizer_config import RecognizerExperiment  # noqa: PLC0415 (task-specific)

        return RecognizerExperiment
    raise ConfigError(f"task: unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).split("\n")[0]
    return f"{key}: {message}" if key else message


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None


def find_config(path: str) -> Path:
    """A config path as given, or relative to the bundled configs/ folder."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = CONFIG_DIR / path
    if bundled.is_file():
        return bundled
    raise ConfigError(f"config file {path} does not exist (also looked in {CONFIG_DIR})")


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Merge defaults.yaml, the experiment file and ``key=value`` overrides into a validated config."""
    experiment_path = find_config(path)
    defaults = _read_yaml(CONFIG_DIR / "defaults.yaml")
    experiment = _read_yaml(experiment_path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {_describe(err)}") from None
    task = OmegaConf.select(cli, "task") or OmegaConf.select(experiment, "task") or "embedder"
    schema = OmegaConf.structured(schema_for(str(task)))
    try:
        cfg = OmegaConf.merge(schema, defaults, experiment, cli)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    if cfg.run.name is None:
        cfg.run.name = f"{cfg.task}-{experiment_path.stem}"
    validate(cfg)
    return cfg


def _check_finetune(cfg: DictConfig) -> None:
    section = cfg.finetune
    for key in section:
        if key not in FINETUNE_DEFAULTS:
            raise ConfigError(f"finetune.{key}: unknown key; known: {', '.join(FINETUNE_DEFAULTS)}")
    for key, default in FINETUNE_DEFAULTS.items():
        if key not in section:
            section[key] = default
    checks = {"from": (str, type(None)), "prefix_map": (dict, DictConfig), "freeze": (list, tuple),
              "unfreeze_at_epoch": (int, type(None)), "lr_factor": (int, float)}
    plain = OmegaConf.to_container(section, resolve=True)
    for key, types in checks.items():
        value = plain[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ConfigError(f"finetune.{key}: wrong type {type(value).__name__} ({value!r})")
    if plain["from"] is not None and not Path(plain["from"]).is_file():
        raise ConfigError(f"finetune.from: checkpoint {plain['from']} does not exist")


def _one_of(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")


def validate(cfg: DictConfig) -> None:
    """Checks that need more than types: choices, paths, combinations."""
    _one_of(cfg, "task", TASKS)
    _one_of(cfg, "trainer.accelerator", ("cpu", "gpu", "cuda", "auto"))
    _one_of(cfg, "trainer.strategy", ("auto", "ddp", "ddp_spawn"))
    _one_of(cfg, "trainer.precision", ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"))
    _one_of(cfg, "logging.wandb", ("offline", "online", "disabled"))
    _one_of(cfg, "optim.name", ("adam", "adamw", "sgd"))
    _one_of(cfg, "optim.scheduler", ("none", "cosine", "warmup_poly"))
    _one_of(cfg, "data.sampler.kind", ("pk", "plain"))
    _positive(cfg, "data.batch_size", "data.image_size", "data.val_batch_size", "optim.lr",
              "trainer.num_nodes", "trainer.accumulate_grad_batches", "data.batches_per_epoch")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    devices = cfg.trainer.devices
    if not (devices == "auto" or (isinstance(devices, int) and devices > 0)
            or OmegaConf.is_list(devices)):
        raise ConfigError(f"trainer.devices: expected a positive integer, a list of ids or 'auto', got {devices!r}")
    if cfg.trainer.max_epochs is None and cfg.trainer.max_steps < 0:
        raise ConfigError("trainer.max_steps: set max_steps or max_epochs, or training never ends")
    if cfg.run.resume not in (None, "auto") and not Path(cfg.run.resume).is_file():
        raise ConfigError(f"run.resume: checkpoint {cfg.run.resume} does not exist")
    if cfg.data.sampler.kind == "pk":
        p, k = cfg.data.sampler.p, cfg.data.sampler.k
        if p * k != cfg.data.batch_size:
            raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is not P x K = "
                              f"data.sampler.p ({p}) x data.sampler.k ({k})")
        if p < 2:
            raise ConfigError(f"data.sampler.p: P x K sampling needs at least 2 identities per batch, got {p}")
    if cfg.data.root is None and cfg.data.synthetic is None:
        raise ConfigError("data.root: no dataset given; set data.root to a shard folder or data.synthetic")
    if cfg.data.root is not None and cfg.data.synthetic is None:
        root = Path(os.path.expanduser(cfg.data.root))
        if not root.exists():
            raise ConfigError(f"data.root: {root} does not exist")
        for split in (cfg.data.train_split, cfg.data.val_split):
            if not (root / split / "index.json").is_file():
                raise ConfigError(f"data.root: {root / split} has no index.json (not a Visage shard split)")
    _check_finetune(cfg)
    if cfg.task == "embedder":
        _one_of(cfg, "model.mining", ("batch_hard", "batch_all", "semi_hard"))
        _one_of(cfg, "model.backbone", ("tiny", *FACE_BACKBONES))
        if cfg.model.backbone == "tiny" and cfg.data.image_size % 16:
            raise ConfigError(f"data.image_size: the tiny backbone halves the image 4 times and needs a "
                              f"multiple of 16, got {cfg.data.image_size}")
        if cfg.model.mining != "batch_hard" and cfg.model.margin is None:
            raise ConfigError(f"model.margin: {cfg.model.mining} mining needs a hinge margin (soft margin is "
                              "batch_hard only)")
        if cfg.model.cross_rank_mining and cfg.data.sampler.kind != "pk":
            raise ConfigError("model.cross_rank_mining: needs data.sampler.kind=pk")
    if cfg.task == "recognizer":
        from modules.recognizer_config import validate_recognizer  # noqa: PLC0415 (task-specific)

        validate_recognizer(cfg)


def to_plain(cfg: DictConfig) -> dict:
    """A plain, resolved dict: what checkpoints and hyperparameters hold (never a DictConfig)."""
    return OmegaConf.to_container(cfg, resolve=True)
