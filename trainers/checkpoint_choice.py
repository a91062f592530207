"""Which checkpoint a run resumes from: the newest one that loads, and why the others were passed over.

A run directory holds ``checkpoints/last.ckpt``, ``checkpoints/best-*.ckpt`` and, after a SLURM
requeue, ``hpc_ckpt_*.ckpt``. Their writes are atomic (``trainers/checkpoint_io.py``), but a file
can still be broken: written by an older Visage, copied halfway, damaged on disk. A checkpoint
"loads" when ``torch.load(..., weights_only=True)`` (what Lightning's resume does) reads it as a
Lightning checkpoint (a zip archive whose directory, at the end, is the first thing a cut loses);
tensors are memory-mapped, so checking a large file reads little of it.
Temporary files of interrupted saves carry no ``.ckpt`` suffix and are never candidates.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from configs.schema import ConfigError

log = logging.getLogger("visage")


class CheckpointChoiceError(ConfigError):
    """A checkpoint named for resuming that does not load, or a run directory with nothing to resume."""


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def checkpoint_problem(path: str | Path) -> str | None:
    """None when ``path`` loads as a Lightning checkpoint; else a short reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, its directory at the very end
        return f"is truncated or not a torch checkpoint ({size:,} bytes, no zip directory at its end)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever the reason, the file does not load
        if "Weights only load failed" in str(err):
            return f"holds objects a weights-only load refuses ({_first_line(err)})"
        return f"is truncated or not a torch checkpoint ({size:,} bytes; {_first_line(err)})"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "is a torch file but not a Lightning checkpoint (no 'state_dict')"
    return None


def resume_candidates(run_dirs: Iterable[Path]) -> list[Path]:
    """The checkpoints of ``run_dirs``, newest first (on equal times ``last.ckpt`` first)."""
    found = []
    for run_dir in map(Path, run_dirs):
        for path in [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]:
            try:
                found.append(((path.stat().st_mtime_ns, path.name == "last.ckpt"), path))
            except OSError:  # removed meanwhile
                continue
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def newest_loadable(candidates: Iterable[Path], say: Callable[[str], None] = log.warning) -> Path | None:
    """The first of ``candidates`` that loads; each one passed over is reported in one line."""
    skipped = 0
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                say(f"run.resume: resuming from {path}, the newest checkpoint that loads")
            return path
        skipped += 1
        say(f"run.resume: skipping checkpoint {path}: it {problem}; trying the next newest")
    return None


def require_loadable(path: str | Path, key: str = "run.resume") -> Path:
    """``path`` itself, or a one-line error naming it and saying why it cannot be resumed from."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointChoiceError(f"{key}: checkpoint {path} {problem}; name another checkpoint, or use "
                                    f"{key}=auto to take the newest one that loads")
    return Path(path)


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/x.ckpt`` or ``RUN/hpc_ckpt_N.ckpt``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def checkpoint_to_resume(run_dir: Path, say: Callable[[str], None] = log.warning) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads. Lightning resumes a SLURM job from the newest
    ``hpc_ckpt_*`` on its own, broken or not; when such files exist but none of the run's
    checkpoints loads, that is an error naming them rather than a crash inside Lightning."""
    chosen = newest_loadable(resume_candidates([run_dir]), say)
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    if chosen is None and hpc:
        raise CheckpointChoiceError(f"{run_dir} holds {', '.join(p.name for p in hpc)} but no checkpoint of the "
                                    "run loads (see the lines above); remove them to start the run afresh")
    return chosen
