"""Where a run lives: named from the config and, under SLURM, the job id, never from a clock.

Every rank and every requeue of one SLURM job computes the same directory, so checkpoints, the
resolved config, metrics and the dashboard run (dashboard.json) stay together across preemptions. A local run
takes the next free ``local-N`` folder; the launching process picks it once and hands it to the
ranks it starts through the environment (VISAGE_RUN_DIR), so all ranks agree.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Mapping, NamedTuple

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


DASHBOARD_FILE = "dashboard.json"


class DashboardRun(NamedTuple):
    id: str       # the dashboard (wandb) run id
    group: str    # the group it was created in


def dashboard_run(run_dir: Path, group: str | None = None) -> DashboardRun:
    """The run directory's dashboard run: made once, kept in ``<run_dir>/dashboard.json``.

    The id is the run directory's name with a random suffix (``embedder-triplet-local-0-3f9a2c1e``):
    every requeue of a SLURM job and every resume read the same file (so does any other process that
    asks: every rank would get the same id), while a new clone, a run after ``rm -rf runs`` and every
    evaluation (``new_dashboard_run``) get a new one. ``group`` (default: the id) is stored with it at
    creation. The first process to get here creates the file atomically: written under a private
    name, then hard-linked into place, which fails when another process was first; where the
    filesystem has no hard links, an exclusive create and a wait until the winner's text is complete.
    """
    path = Path(run_dir) / DASHBOARD_FILE
    if not path.is_file():
        _create_once(path, _new_identity(Path(run_dir), group))
    stored = _read_complete(path)
    return DashboardRun(stored["id"], stored["group"])


def new_dashboard_run(run_dir: Path, group: str | None = None) -> DashboardRun:
    """A new dashboard run for ``run_dir``, replacing the one its dashboard.json held (an evaluation
    run: each evaluation is a dashboard run of its own, even in a folder an earlier one used)."""
    path = Path(run_dir) / DASHBOARD_FILE
    text = _new_identity(Path(run_dir), group)
    private = _private_copy(path, text)
    os.replace(private, path)
    stored = json.loads(text)
    return DashboardRun(stored["id"], stored["group"])


def _new_identity(run_dir: Path, group: str | None) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "-", f"{run_dir.parent.name}-{run_dir.name}")[:55]
    run_id = f"{base}-{secrets.token_hex(4)}"
    return json.dumps({"id": run_id, "group": group or run_id}) + "\n"


def _private_copy(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    private = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    private.write_text(text)
    return private


def _create_once(path: Path, text: str) -> None:
    private = _private_copy(path, text)
    try:
        os.link(private, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links here: exclusive create, readers wait for the complete text
        try:
            with open(path, "x") as f:
                f.write(text)
        except FileExistsError:
            pass
    finally:
        private.unlink()


def _read_complete(path: Path, wait_s: float = 30.0) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
