"""Checkpoint files that are never half-written: a temporary file beside the target, renamed over it.

Lightning 2.6 writes every checkpoint (ModelCheckpoint's best and last, ``trainer.save_checkpoint``
and so the SLURM ``hpc_ckpt_*`` files of ``trainers/requeue.py``) through its strategy's
``CheckpointIO``. The default one serialises into memory and writes through an fsspec transaction:
a temporary file in ``TMPDIR`` moved onto the target at the end. With ``TMPDIR`` on another
filesystem than the run directory (node-local TMPDIR, shared run directory: the usual cluster
layout) that move is a copy, and a process killed during it leaves a truncated or empty target and
the temporary file behind in TMPDIR.

``AtomicCheckpointIO`` writes into a temporary file in the target's own folder, flushes and fsyncs
it, renames it over the target (atomic within one filesystem) and fsyncs the folder so that the
rename itself survives a crash. A reader sees either the previous checkpoint or the new one, whole.
A process killed mid-save leaves only its temporary file, named ``.saving-<pid>-<token>.tmp``: no
``.ckpt`` suffix, so no resume ever picks it up, and no ``hpc_ckpt_`` in the name, which Lightning's
SLURM resume would parse for a version number. ``remove_partial_saves`` clears such leftovers when
the next run starts in that folder.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pytorch_lightning.plugins.io import TorchCheckpointIO

log = logging.getLogger("visage")

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".saving-", ".tmp"


def partial_save_name() -> str:
    return f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"


def is_partial_save(path: Path) -> bool:
    return path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(PARTIAL_SUFFIX)


def fsync_folder(folder: Path) -> None:
    """Makes a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that leaves ``path`` either as it was or whole, never partial."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / partial_save_name()
    try:
        with open(partial, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    except BaseException:  # an exception or a signal turned into one: nothing half-written remains
        partial.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def remove_partial_saves(*folders: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files that killed saves left in ``folders``; returns them.

    Call it only where no save can be under way: when a run starts in its run directory.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if is_partial_save(path) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d partial checkpoint file(s) left by an interrupted save: %s",
                 len(removed), ", ".join(str(p) for p in removed))
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with atomic local writes (remote URLs keep fsspec's way)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        filesystem, local_path = url_to_fs(str(path))
        if storage_options is not None or not isinstance(filesystem, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, local_path)
