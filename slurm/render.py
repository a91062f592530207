"""Render the sbatch script of one training job (or job array) from slurm/templates/train.sbatch.

The job runs ``srun <launcher> fit CONFIG overrides... trainer.accelerator=K trainer.num_nodes=N
trainer.devices=G``: one process per task, tasks per node = devices per node, as Lightning requires.
Every word of that command is shell-quoted; #SBATCH values are checked instead (sbatch does not
unquote them), so paths with spaces or quotes are refused with a message.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from configs.errors import VisageError
from slurm.profile import ClusterProfile

TEMPLATE = Path(__file__).resolve().parent / "templates" / "train.sbatch"
SBATCH_SAFE = re.compile(r"^[A-Za-z0-9_./:+@=,\-]+$")  # no spaces, quotes, '%' (a filename pattern) or '$'


class RenderError(VisageError, ValueError):
    """A job that cannot be written as an sbatch script; the message names the setting."""


@dataclass(frozen=True)
class JobSpec:
    """Everything the script needs; built and validated by ``slurm.submit.plan_job``."""
    config: str
    overrides: tuple[str, ...]
    sweep: tuple[tuple[str, ...], ...]   # extra overrides per array task; empty: not an array
    nodes: int
    devices_per_node: int
    time: str
    job_name: str
    run_parent: Path                     # absolute <run.root>/<run.name>
    run_id: str | None                   # run.id when the user fixed it, else None (from the job id)
    workdir: Path                        # the job's working directory (where it was submitted)
    profile: ClusterProfile
    partition: str | None = None
    account: str | None = None

    @property
    def is_array(self) -> bool:
        return bool(self.sweep)


def trainer_overrides(spec: JobSpec) -> list[str]:
    """The settings that must match the allocation; they come last, so they win."""
    return [f"trainer.accelerator={spec.profile.accelerator}", f"trainer.num_nodes={spec.nodes}",
            f"trainer.devices={spec.devices_per_node}"]


def run_dir_pattern(spec: JobSpec) -> str:
    """The run directory as an sbatch filename pattern: the same folder the trainer computes."""
    if spec.run_id:
        return f"{spec.run_parent}/{spec.run_id}"
    return f"{spec.run_parent}/slurm-%A_%a" if spec.is_array else f"{spec.run_parent}/slurm-%j"


def _sbatch_value(setting: str, value: object) -> str:
    text = str(value)
    if not SBATCH_SAFE.match(text):
        raise RenderError(f"{setting}: {text!r} contains characters an #SBATCH line cannot carry "
                          "(spaces, quotes, %, $ ...); choose a plainer name or path")
    return text


def directives(spec: JobSpec) -> list[str]:
    profile = spec.profile
    _sbatch_value("run directory (run.root, run.name)", spec.run_parent)
    if spec.run_id:
        _sbatch_value("run.id", spec.run_id)
    run_dir = run_dir_pattern(spec)
    lines = [
        f"--job-name={_sbatch_value('job name', spec.job_name)}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.devices_per_node}",
        f"--cpus-per-task={profile.cpus_per_task}",
    ]
    if profile.accelerator == "gpu":
        if profile.gpu_request == "gres":
            kind = f"gpu:{profile.gpu_type}" if profile.gpu_type else "gpu"
            lines.append(f"--gres={kind}:{spec.devices_per_node}")
        else:
            kind = f"{profile.gpu_type}:" if profile.gpu_type else ""
            lines.append(f"--gpus-per-node={kind}{spec.devices_per_node}")
    if profile.mem is not None:
        lines.append(f"--mem={profile.mem}")
    lines.append(f"--time={_sbatch_value('time', spec.time)}")
    for key in ("partition", "account"):
        value = getattr(spec, key) or getattr(profile, key)
        if value:
            lines.append(f"--{key}={_sbatch_value(key, value)}")
    for key in ("qos", "constraint"):
        if getattr(profile, key):
            lines.append(f"--{key}={getattr(profile, key)}")
    if profile.signal_seconds > 0:
        lines.append(f"--signal=SIGUSR1@{profile.signal_seconds}")
    lines.append("--requeue" if profile.requeue else "--no-requeue")
    lines += [
        "--open-mode=append",
        f"--chdir={_sbatch_value('working directory', spec.workdir)}",
        f"--output={run_dir}/slurm.out",
        f"--error={run_dir}/slurm.err",
    ]
    if spec.is_array:
        lines.append(f"--array=0-{len(spec.sweep) - 1}")
    lines += profile.sbatch_args
    return [f"#SBATCH {line}" for line in lines]


def sweep_block(spec: JobSpec) -> str:
    if not spec.is_array:
        return ""
    cases = [f"  {i}) SWEEP=({' '.join(shlex.quote(o) for o in task)}) ;;" for i, task in enumerate(spec.sweep)]
    return "\n".join([
        "# job array: task i trains with the i-th combination of the swept values",
        'case "${SLURM_ARRAY_TASK_ID:?this script runs as a job array}" in',
        *cases,
        '  *) echo "visage: no sweep entry for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        'echo "visage: array task ${SLURM_ARRAY_TASK_ID}: ${SWEEP[*]}"',
    ])


def srun_line(spec: JobSpec) -> str:
    words = ["--kill-on-bad-exit=1", *spec.profile.srun_args, *shlex.split(spec.profile.launcher), "fit",
             spec.config, *spec.overrides]
    quoted = [shlex.quote(word) for word in words]
    if spec.is_array:
        quoted.append('"${SWEEP[@]}"')
    quoted += [shlex.quote(word) for word in trainer_overrides(spec)]
    return " ".join(quoted)


def render_script(spec: JobSpec) -> str:
    profile = spec.profile
    env_lines = [f"export {name}={shlex.quote(value)}" for name, value in profile.env.items()]
    parts = {
        "profile": profile.name,
        "directives": "\n".join(directives(spec)),
        "setup": "\n".join(profile.setup),
        "environment": "\n".join(env_lines),
        "sweep": sweep_block(spec),
        "srun": srun_line(spec),
    }
    text = TEMPLATE.read_text()
    for name, value in parts.items():
        text = text.replace("{{" + name + "}}", value)
    leftover = re.search(r"\{\{\w+\}\}", text)
    if leftover:
        raise RenderError(f"template {TEMPLATE} has an unknown placeholder {leftover.group(0)}")
    return re.sub(r"\n{3,}", "\n\n", text)
