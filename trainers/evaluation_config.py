"""What an evaluation runs with: the checkpoint's own config for the data and the model, the command
line's overrides on top, and where its files go.

A checkpoint holds the config it was trained with (``hyper_parameters.config``). ``visage validate |
test | predict [CONFIG] --ckpt C [key=value ...]`` takes from it what defines the data and the model
(``task``, ``data``, ``model``, ``run``: its name and seed); the other sections (``trainer``,
``optim``, ``logging``) come from CONFIG when one is given, else from the checkpoint too. Every
data or model setting where CONFIG (with the overrides) and the checkpoint differ is reported, one
line per key, with the value used: the checkpoint's, or the command line's where it overrides it.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from configs.schema import FINETUNE_DEFAULTS, ConfigError, to_plain
from trainers.config import compose, find_config, parse_overrides, read_experiment
from trainers.run_dir import RUN_DIR_ENV, slurm_run_suffix

FROM_CHECKPOINT = ("task", "data", "model", "run")  # what defines the data and the model evaluated
COMPARED = ("task", "data", "model", "run.seed")    # the settings whose difference is reported


@dataclass(frozen=True)
class Difference:
    key: str
    given: Any          # CONFIG's value (with the command line's overrides), or the command line's alone
    checkpoint: Any
    source: str         # "file" or "command line": where ``given`` comes from
    used: str           # "checkpoint" or "command line"

    def line(self) -> str:
        return (f"{self.key}: {self.source} {self.given!r}, checkpoint {self.checkpoint!r}: "
                f"using the {self.used}'s")


def split_arguments(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """CONFIG is optional: a first argument of the form key=value that is no file is an override."""
    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    return config, list(overrides)


def override_keys(overrides: list[str]) -> list[str]:
    return [o.partition("=")[0].strip() for o in overrides]


def overridden(key: str, keys: list[str]) -> bool:
    """The key, or a section holding it, is set on the command line."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(flatten(v, f"{prefix}.{k}"))
        return flat or {prefix: {}}
    return {prefix: value}


def compared_settings(plain: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key in COMPARED:
        section, _, sub = key.partition(".")
        value = plain.get(section)
        flat.update(flatten(value.get(sub) if sub and isinstance(value, dict) else value, key))
    return flat


def differences(given: dict, checkpoint: dict, keys: list[str], source: str) -> list[Difference]:
    ours, theirs = compared_settings(given), compared_settings(checkpoint)
    return [Difference(key, ours.get(key), theirs.get(key), "command line" if overridden(key, keys) else source,
                       "command line" if overridden(key, keys) else "checkpoint")
            for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]


def evaluation_config(config: str | None, overrides: list[str], saved: dict | None,
                      ckpt: str | None) -> tuple[DictConfig, list[Difference]]:
    """The checked config of an evaluation and the data / model settings where the given CONFIG (or
    the command line) and the checkpoint's config differ."""
    if saved is None:  # no checkpoint, or one that holds no config: the file as it is
        if config is None:
            raise ConfigError(f"config: --ckpt {ckpt} holds no config (hyper_parameters.config); give the "
                              "experiment config it was trained with")
        return compose(read_experiment(find_config(config)), overrides, default_name=Path(config).stem), []
    keys = override_keys(overrides)
    parse_overrides(overrides)  # a malformed override fails here, naming its key
    theirs = to_plain(compose(OmegaConf.create(saved), check=False))
    experiment = copy.deepcopy(theirs)
    source = "command line"
    if config is not None:
        path = find_config(config)
        file_experiment = read_experiment(path)
        file_task = OmegaConf.select(file_experiment, "task")
        if file_task is not None and file_task != theirs["task"]:
            raise ConfigError(f"task: {path} is a {file_task} experiment but the checkpoint {ckpt} was trained "
                              f"as {theirs['task']!r}; give its own config or none")
        ours = to_plain(compose(file_experiment, overrides, default_name=path.stem, check=False))
        experiment.update({k: v for k, v in ours.items() if k not in FROM_CHECKPOINT})
        source = "file"
    else:
        ours = to_plain(compose(OmegaConf.create(theirs), overrides, check=False))
    # an evaluation neither resumes nor fine-tunes: the weights are the checkpoint's
    experiment["run"].update({"id": None, "resume": None})
    experiment["finetune"] = copy.deepcopy(FINETUNE_DEFAULTS)
    cfg = compose(OmegaConf.create(experiment), overrides)
    return cfg, differences(ours, theirs, keys, source)


def training_run_dir(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` or ``<run>/hpc_ckpt_N.ckpt``)."""
    folder = ckpt.resolve().parent
    if folder.name == "checkpoints":
        return folder.parent
    return folder if (folder / "config.yaml").is_file() else None


def evaluation_dir(command: str, cfg: DictConfig, ckpt: str | None, run_id: str | None) -> Path:
    """A new folder for this evaluation inside the checkpoint's run: ``<run>/<command>-N`` with the next
    free N (``<run>/<command>-slurm-<job>`` under SLURM, ``<run>/<run.id>`` when the command line names
    one); without a run, under ``run.root/run.name``. A rank started by the launcher takes the
    launcher's folder."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    base = (training_run_dir(Path(ckpt)) if ckpt else None) or Path(cfg.run.root) / str(cfg.run.name)
    if run_id:
        if (base / run_id).exists():
            raise ConfigError(f"run.id: {base / run_id} exists already; an evaluation never writes into another "
                              "run's folder: choose another id, or drop run.id for the next free "
                              f"{command}-N")
        return base / run_id
    job = slurm_run_suffix(os.environ)
    if job:  # every rank srun starts computes the same folder: named after the job, not the next free N
        return base / f"{command}-{job}"
    taken = {p.name for p in base.glob(f"{command}-*")}
    return base / next(f"{command}-{n}" for n in range(100_000) if f"{command}-{n}" not in taken)
