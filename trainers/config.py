"""Loading an experiment: a YAML file (which may build on another through ``base:``) and
``key=value`` overrides, merged onto the task's typed schema and checked before any heavy work.

Unknown keys, wrong types, missing data paths and impossible combinations raise ConfigError naming
the key. The task's schema comes from the task table (``trainers.tasks``); nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from configs.schema import ConfigError, to_plain  # noqa: F401 (to_plain: what callers store)
from configs.trainer_settings import VISAGE_SETS, TrainerConfig
from trainers.tasks import load, task

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BASE_KEY = "base"  # an experiment file's parent: a path relative to the file, or a bundled config


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    if isinstance(err, ConfigKeyError) and key and dataclasses.is_dataclass(getattr(err, "object_type", None)):
        return _unknown_key(key, err.object_type)
    message = str(err).split("\n")[0]
    return f"{key}: {message}" if key else message


def _unknown_key(key: str, section_type: type) -> str:
    """An unknown key, with the closest known one; a Lightning keyword that Visage sets, with why."""
    parent, _, name = key.rpartition(".")
    if section_type is TrainerConfig and name in VISAGE_SETS:
        return f"{key}: cannot be set in a config: {VISAGE_SETS[name]}"
    known = [f.name for f in dataclasses.fields(section_type)]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else \
        f"known keys{' of ' + parent if parent else ''}: {', '.join(known)}"
    return f"{key}: unknown key; {hint}"


def _read_yaml(path: Path) -> DictConfig:
    try:
        content = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in several types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(content, DictConfig):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections (task, data, model, "
                          f"...), got a {type(content).__name__}")
    return content


def find_config(path: str, relative_to: Path | None = None) -> Path:
    """A config path as given, relative to ``relative_to`` (a parent's folder), or to the bundled configs/."""
    candidates = [Path(path)] + ([relative_to / path] if relative_to is not None else []) + [CONFIG_DIR / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {path} does not exist (also looked in {CONFIG_DIR})")


def read_experiment(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """The experiment file merged onto the chain of files it builds on (``base: other.yaml``)."""
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{BASE_KEY}: config files build on each other in a circle: {chain}")
    experiment = _read_yaml(path)
    parent = experiment.pop(BASE_KEY, None)
    if parent is None:
        return experiment
    if not isinstance(parent, str):
        raise ConfigError(f"{BASE_KEY}: in {path}: expected the path of the config this one builds on, got {parent!r}")
    base = read_experiment(find_config(parent, relative_to=path.parent), (*seen, resolved))
    try:
        return OmegaConf.merge(base, experiment)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_describe(err)}") from None


def parse_overrides(overrides) -> DictConfig:
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {_describe(err)}") from None
    except Exception as err:  # a value that is not YAML (e.g. an unclosed '{') fails in the YAML parser
        bad = next((o for o in overrides if not _parses(o)), overrides[0] if overrides else "")
        raise ConfigError(f"{bad.partition('=')[0]}: the value of override {bad!r} is not valid YAML "
                          f"({type(err).__name__})") from None


def _parses(override: str) -> bool:
    try:
        OmegaConf.from_dotlist([override])
        return True
    except Exception:  # noqa: BLE001 (any parser failure means: this one is bad)
        return False


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The experiment ``path`` with ``key=value`` overrides, on its task's schema, checked."""
    experiment_path = find_config(path)
    return compose(read_experiment(experiment_path), overrides, default_name=experiment_path.stem)


def compose(experiment: DictConfig, overrides=(), default_name: str = "experiment", check: bool = True) -> DictConfig:
    """An experiment (a file's content, or a checkpoint's config) with ``key=value`` overrides on its
    task's schema; checked unless ``check`` is False. ``run.name`` defaults to <task>-<default_name>."""
    cli = parse_overrides(overrides)
    name = OmegaConf.select(cli, "task") or OmegaConf.select(experiment, "task")
    schema = load(task(name).schema)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), experiment, cli)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    if cfg.run.name is None:
        cfg.run.name = f"{cfg.task}-{default_name}"
    if not check:
        return cfg
    try:
        schema.check(cfg)
    except OmegaConfBaseException as err:  # a value a check reads that fails to resolve
        raise ConfigError(_describe(err)) from None
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """A checked config with ``key=value`` overrides on top of ``cfg`` (a loaded experiment)."""
    if not overrides:
        return cfg
    schema = load(task(cfg.task).schema)
    try:
        merged = OmegaConf.merge(cfg, parse_overrides(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    schema.check(merged)
    return merged
