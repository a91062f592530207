"""Cluster profiles: what a cluster needs in every job script (configs/cluster/*.yaml).

A profile names the partition, the GPUs per node and how they are requested, CPUs and memory per
task, the setup lines (``module load``, activating the environment) and environment variables
(e.g. NCCL_SOCKET_IFNAME). Every key is checked; an error names the key and the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configs.errors import VisageError

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "cluster"
TIME_FORMAT = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # SLURM: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


class ProfileError(VisageError, ValueError):
    """A cluster profile that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ClusterProfile:
    name: str
    accelerator: str = "cpu"              # cpu | gpu: passed to the trainer as trainer.accelerator
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: str = "01:00:00"                # default wall-clock limit (--time overrides)
    gpus_per_node: int = 0                # GPUs a node has: the most devices per node a job may ask
    gpu_request: str = "gres"             # gres (--gres=gpu[:type]:N) | gpus-per-node (--gpus-per-node)
    gpu_type: str | None = None           # e.g. a100 -> --gres=gpu:a100:N
    cpus_per_task: int = 1
    mem: str | None = None                # per node, e.g. 64G; "0" = all of the node's memory
    signal_seconds: int = 90              # SIGUSR1 this long before the time limit (requeue + checkpoint)
    requeue: bool = True
    launcher: str = "visage"              # the command srun starts on every task ("<launcher> fit ...")
    setup: list[str] = field(default_factory=list)          # shell lines before srun
    env: dict[str, str] = field(default_factory=dict)       # exported before srun
    srun_args: list[str] = field(default_factory=list)      # extra srun options
    sbatch_args: list[str] = field(default_factory=list)    # extra #SBATCH options, e.g. --exclusive


KEY_TYPES: dict[str, tuple[type, ...]] = {
    "accelerator": (str,), "partition": (str,), "account": (str,), "qos": (str,), "constraint": (str,),
    "time": (str,), "gpus_per_node": (int,), "gpu_request": (str,), "gpu_type": (str,),
    "cpus_per_task": (int,), "mem": (str, int), "signal_seconds": (int,), "requeue": (bool,),
    "launcher": (str,), "setup": (list,), "env": (dict,), "srun_args": (list,), "sbatch_args": (list,),
}
SAFE_WORD = re.compile(r"^[A-Za-z0-9_.:,+@%=/\-\[\]]+$")  # values that go unquoted into #SBATCH lines


def find_profile(name_or_path: str) -> Path:
    """A profile file as given (a path), or ``configs/cluster/<name>.yaml``."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ProfileError(f"cluster profile file {name_or_path} does not exist")
    bundled = PROFILE_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
    raise ProfileError(f"unknown cluster profile {name_or_path!r}: give a file path or one of: {known}")


def _check_type(path: Path, key: str, value: Any) -> None:
    types = KEY_TYPES[key]
    if value is None:
        return
    if isinstance(value, bool) and bool not in types:
        raise ProfileError(f"{path}: {key}: expected {types[0].__name__}, got {value!r}")
    if key == "time" and isinstance(value, int):
        raise ProfileError(f'{path}: time: YAML read {value!r} as a number; quote it, e.g. time: "24:00:00"')
    if not isinstance(value, types):
        raise ProfileError(f"{path}: {key}: expected {types[0].__name__}, got {type(value).__name__} ({value!r})")


def _check_values(path: Path, data: dict[str, Any]) -> None:
    def fail(key: str, message: str) -> None:
        raise ProfileError(f"{path}: {key}: {message} (got {data.get(key)!r})")

    if data.get("accelerator", "cpu") not in ("cpu", "gpu"):
        fail("accelerator", "must be cpu or gpu")
    if data.get("gpu_request", "gres") not in ("gres", "gpus-per-node"):
        fail("gpu_request", "must be gres or gpus-per-node")
    for key in ("gpus_per_node", "signal_seconds"):
        if key in data and data[key] < 0:
            fail(key, "must be >= 0")
    if "cpus_per_task" in data and data["cpus_per_task"] < 1:
        fail("cpus_per_task", "must be >= 1")
    if data.get("accelerator") == "gpu" and data.get("gpus_per_node", 0) < 1:
        fail("gpus_per_node", "a gpu profile needs gpus_per_node >= 1")
    if data.get("accelerator", "cpu") == "cpu" and data.get("gpus_per_node", 0) > 0:
        fail("gpus_per_node", "a cpu profile requests no GPUs; set accelerator: gpu")
    if "time" in data and not TIME_FORMAT.match(data["time"]):
        fail("time", "not a SLURM time (HH:MM:SS or D-HH:MM:SS)")
    for key in ("partition", "account", "qos", "constraint", "gpu_type", "mem"):
        if data.get(key) is not None and not SAFE_WORD.match(str(data[key])):
            fail(key, "contains characters that are not allowed in an #SBATCH value")
    if data.get("mem") is not None and not re.fullmatch(r"\d+[KMGT]?", str(data["mem"])):
        fail("mem", "must be a size such as 64G or 0")
    for key in ("setup", "srun_args", "sbatch_args"):
        for item in data.get(key) or []:
            if not isinstance(item, str):
                fail(key, "must be a list of strings")
    for item in data.get("sbatch_args") or []:
        if not item.startswith("--") or "\n" in item:
            fail("sbatch_args", "each entry must be one long option such as --exclusive")
    for name, value in (data.get("env") or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ProfileError(f"{path}: env: {name!r} is not a shell variable name")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ProfileError(f"{path}: env.{name}: must be a string or number, got {value!r}")
    if not str(data.get("launcher", "visage")).strip():
        fail("launcher", "must not be empty")


def load_profile(name_or_path: str) -> ClusterProfile:
    """Read and validate a cluster profile by name (configs/cluster/NAME.yaml) or file path."""
    path = find_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KEY_TYPES))
    if unknown:
        raise ProfileError(f"{path}: {unknown[0]}: unknown key; known keys: {', '.join(KEY_TYPES)}")
    for key, value in data.items():
        _check_type(path, key, value)
    data = {key: value for key, value in data.items() if value is not None}
    _check_values(path, data)
    if "mem" in data:
        data["mem"] = str(data["mem"])
    if "env" in data:
        data["env"] = {str(k): str(v) for k, v in data["env"].items()}
    return ClusterProfile(name=path.stem, **data)

