"""Where a run lives: named from the config and, under SLURM, the job id, never from a clock.

Every rank and every requeue of one SLURM job computes the same directory, so checkpoints, the
resolved config, metrics and the dashboard run id stay together across preemptions. A local run
takes the next free ``local-N`` folder; the launching process picks it once and hands it to the
ranks it starts through the environment (VISAGE_RUN_DIR), so all ranks agree.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

RUN_DIR_ENV = "VISAGE_RUN_DIR"


def slurm_run_suffix(env: Mapping[str, str]) -> str | None:
    """``slurm-<job>`` or ``slurm-<array job>_<task>``; None outside SLURM."""
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"slurm-{array_job}_{array_task}"
    job = env.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


def next_local_suffix(parent: Path) -> str:
    taken = [int(m.group(1)) for p in parent.glob("local-*") if (m := re.fullmatch(r"local-(\d+)", p.name))]
    return f"local-{max(taken, default=-1) + 1}"


def resolve_run_dir(root: str | Path, name: str, run_id: str | None = None,
                    env: Mapping[str, str] | None = None) -> Path:
    """The run directory for ``name`` under ``root``.

    Precedence: an explicit ``run_id``; the directory a launching process already chose
    (VISAGE_RUN_DIR); the SLURM job; the next free ``local-N``.
    """
    env = os.environ if env is None else env
    parent = Path(root) / name
    if run_id:
        return parent / run_id
    if env.get(RUN_DIR_ENV):
        return Path(env[RUN_DIR_ENV])
    suffix = slurm_run_suffix(env)
    return parent / (suffix or next_local_suffix(parent))


def dashboard_run_id(run_dir: Path) -> str:
    """A wandb run id derived from the run directory: the same across requeues of one job."""
    text = f"{run_dir.parent.name}-{run_dir.name}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:64]
