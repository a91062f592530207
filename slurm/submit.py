"""Plan, render and submit a training job: ``visage submit CONFIG [key=value ...] --cluster PROFILE``.

The config is loaded and validated exactly as the job will load it (the user's overrides, the swept
values and the allocation's trainer.* settings), for every array task, before anything is
submitted. The job is submitted held, its run directories are created (SLURM opens --output before
the script runs and does not create folders), then released.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from configs.errors import VisageError
from slurm.allocation import INTERACTIVE_JOB_NAMES, device_count
from slurm.profile import TIME_FORMAT, ClusterProfile
from slurm.render import JobSpec, render_script, trainer_overrides
from trainers.config import load_config
from trainers.run_dir import resolve_run_dir

UNSWEEPABLE = ("trainer.devices", "trainer.num_nodes", "trainer.accelerator", "run.root", "run.name", "run.id")


class SubmitError(VisageError, ValueError):
    """A job that cannot be submitted; the message names the setting."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    run_dirs: list[Path]    # one per array task (one for a plain job)
    script: str


def parse_sweep(entries: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=0.1,0.01", "model.margin=0.2,0.3"]`` -> [(key, values), ...]."""
    parsed = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",")]
        if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key) or not all(items):
            raise SubmitError(f"--sweep {entry!r}: expected key=value1,value2,... with no empty value")
        if key in UNSWEEPABLE:
            raise SubmitError(f"--sweep {key}: cannot be swept; the allocation and the run directory "
                              "(slurm-<array job>_<task>) fix it for every task")
        if key in (k for k, _ in parsed):
            raise SubmitError(f"--sweep {key}: given twice; list all values in one --sweep")
        parsed.append((key, items))
    return parsed


def sweep_tasks(sweep: list[tuple[str, list[str]]]) -> list[tuple[str, ...]]:
    """The overrides of each array task: the product of all swept values, first key slowest."""
    if not sweep:
        return []
    keys = [key for key, _ in sweep]
    return [tuple(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*(v for _, v in sweep))]


def job_name_for(run_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", run_name) or "visage"
    return f"visage-{name}" if name in INTERACTIVE_JOB_NAMES else name  # Lightning ignores those names


def _devices_per_node(cfg, profile: ClusterProfile, gpus_per_node: int | None) -> int:
    if gpus_per_node is not None:
        if gpus_per_node < 1:
            raise SubmitError(f"--gpus-per-node: must be >= 1, got {gpus_per_node}")
        devices = gpus_per_node
    else:
        devices = device_count(cfg.trainer.devices)
        if devices is None:
            if profile.accelerator != "gpu":
                raise SubmitError(f"trainer.devices: {cfg.trainer.devices!r} cannot size a job on the cpu "
                                  f"profile {profile.name!r}; set trainer.devices=N or --gpus-per-node N")
            devices = profile.gpus_per_node
    if profile.accelerator == "gpu" and devices > profile.gpus_per_node:
        raise SubmitError(f"trainer.devices / --gpus-per-node: {devices} GPUs per node, but the profile "
                          f"{profile.name!r} has gpus_per_node={profile.gpus_per_node}")
    return devices


def plan_job(config: str, overrides: Sequence[str], profile: ClusterProfile, *, nodes: int | None = None,
             gpus_per_node: int | None = None, time: str | None = None, partition: str | None = None,
             account: str | None = None, sweep: Sequence[str] = (), workdir: str | Path | None = None) -> JobSpec:
    """Check everything and describe the job; raises ConfigError, ProfileError or SubmitError."""
    workdir = Path(workdir or os.getcwd()).resolve()
    overrides = tuple(overrides)
    base = load_config(config, list(overrides))  # a bad config stops here, before any sizing
    check_accelerator(base.trainer.accelerator, profile)
    nodes = base.trainer.num_nodes if nodes is None else nodes
    if nodes < 1:
        raise SubmitError(f"--nodes: must be >= 1, got {nodes}")
    devices = _devices_per_node(base, profile, gpus_per_node)
    if nodes * devices > 1 and base.trainer.strategy == "ddp_spawn":
        raise SubmitError("trainer.strategy: ddp_spawn starts its own processes; under srun use ddp or auto")
    if time is not None and not TIME_FORMAT.match(time):
        raise SubmitError(f"--time: {time!r} is not a SLURM time (HH:MM:SS or D-HH:MM:SS)")
    tasks = sweep_tasks(parse_sweep(sweep))
    if tasks and base.run.id:
        raise SubmitError("run.id: a sweep gives every array task its own run directory; drop run.id")
    root = Path(os.path.expanduser(str(base.run.root)))
    spec = JobSpec(config=config, overrides=overrides, sweep=tuple(tasks), nodes=nodes, devices_per_node=devices,
                   time=time or profile.time, job_name=job_name_for(str(base.run.name)),
                   run_parent=(workdir / root / str(base.run.name)), run_id=base.run.id or None,
                   workdir=workdir, profile=profile, partition=partition, account=account)
    task_configs(spec)  # validate exactly what each task will run
    render_script(spec)  # refuses unsafe #SBATCH values now, not after the config checks
    return spec


def check_accelerator(accelerator: str, profile: ClusterProfile) -> None:
    """A config that asks for GPUs cannot run on a CPU profile's nodes, nor the CPU on a GPU profile's
    (whose job would hold GPUs it never uses); ``auto`` takes the profile's."""
    kind = "gpu" if accelerator in ("gpu", "cuda") else accelerator
    if kind != "auto" and kind != profile.accelerator:
        raise SubmitError(f"trainer.accelerator: {accelerator}, but the cluster profile {profile.name!r} runs on "
                          f"{profile.accelerator} nodes; leave trainer.accelerator at auto (the job takes the "
                          f"profile's) or use a {kind} profile")


def task_configs(spec: JobSpec):
    """The checked config of every task of the job, as the job will load it (the overrides, the swept
    values, then the allocation's trainer settings)."""
    return [load_config(spec.config, [*spec.overrides, *task, *trainer_overrides(spec)])
            for task in spec.sweep or [()]]


def run_dirs_for(spec: JobSpec, job_id: str) -> list[Path]:
    """The run directory of each task, as the trainer computes it from the job's environment."""
    if not spec.is_array:
        envs = [{"SLURM_JOB_ID": job_id}]
    else:
        envs = [{"SLURM_ARRAY_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": str(i)} for i in range(len(spec.sweep))]
    root, name = spec.run_parent.parent, spec.run_parent.name
    return [resolve_run_dir(root, name, spec.run_id, env=env) for env in envs]


def submit(spec: JobSpec, env: dict[str, str] | None = None) -> Submission:
    """``sbatch --parsable --hold``, create the run directories, ``scontrol release``."""
    script = render_script(spec)
    env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(["sbatch", "--parsable", "--hold"], input=script, capture_output=True, text=True,
                              env=env, cwd=spec.workdir, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise SubmitError(f"sbatch could not run: {err}") from None
    if done.returncode != 0:
        raise SubmitError(f"sbatch refused the job (exit {done.returncode}): {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitError(f"sbatch printed no job id: {done.stdout!r} {done.stderr.strip()}")
    try:
        run_dirs = run_dirs_for(spec, job_id)
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / f"job-{job_id}.sbatch").write_text(script)
        subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True, text=True,
                       env=env, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        subprocess.run(["scancel", job_id], capture_output=True, env=env, timeout=60)
        detail = getattr(err, "stderr", "") or err
        raise SubmitError(f"job {job_id} was cancelled: preparing its run directory failed: {detail}") from None
    return Submission(job_id=job_id, run_dirs=run_dirs, script=script)
