"""The synthetic default data of every task: rendered once, into ``data.root`` when the config names
one, else into a cache folder named after every generation parameter.

What is shared by every kind of synthetic data (faces, scenes, bodies) lives here: the cache
folder, a file lock (concurrent runs wait for one writer), writing into a temporary folder renamed
at the end (an interrupted generation never leaves a half dataset), the generation parameters kept
in ``synthetic.json`` (a folder made with other parameters is an error, never stale data) and the
progress bar. A kind of data is a ``SyntheticData``: how its folder is named and how it is written.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from configs.errors import VisageError
from datamodules.shards import INDEX_NAME

SPEC_NAME = "synthetic.json"  # the generation parameters, beside the splits
LAYOUT_ONLY = ("shard_size",)  # parameters that change how samples are packed, not which


class SyntheticSpecError(VisageError, ValueError):
    """A dataset folder made by the engine with other parameters than the config asks for."""


@dataclass(frozen=True)
class SyntheticData:
    """A kind of synthetic dataset: ``folder_name(spec)`` names its cache folder; ``write(root, spec,
    progress)`` renders every split of it into ``root`` (a fresh folder), ``progress`` being a
    ``tqdm`` bar to advance per sample (or a disabled one)."""
    kind: str
    folder_name: Callable[[dict], str]
    write: Callable[[Path, dict, tqdm], None]
    total: Callable[[dict], int]  # samples in all splits (the bar's length)


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if absent): processes that render the same data wait
    for the first one."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cache_dir() -> Path:
    return Path(os.environ.get("VISAGE_CACHE", Path.home() / ".cache" / "visage")).expanduser()


def check_spec(root: Path, spec: dict, kind: str = "synthetic data") -> None:
    """Raise SyntheticSpecError when ``root`` was written for other generation parameters."""
    path = root / SPEC_NAME
    if not path.is_file():
        return  # written by hand or by an older version: nothing to compare
    made = json.loads(path.read_text())
    differ = sorted(k for k in set(made) | set(spec) if k not in LAYOUT_ONLY and made.get(k) != spec.get(k))
    if differ:
        found = ", ".join(f"{k}={made.get(k)!r} (the config asks for {spec.get(k)!r})" for k in differ)
        raise SyntheticSpecError(f"{root} holds {kind} made with {found}; delete the folder or "
                                 "write them elsewhere (data.root, or --out of `visage data synth`)")


def ensure_synthetic(data: SyntheticData, root: Path | str | None, spec: dict, progress: bool = True) -> Path:
    """The dataset folder for ``spec``: ``root`` if given, else a folder in the cache; rendered if absent."""
    root = Path(root).expanduser() if root else cache_dir() / data.folder_name(spec)
    if (root / "val" / INDEX_NAME).is_file():
        check_spec(root, spec, data.kind)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if (root / "val" / INDEX_NAME).is_file():  # another process wrote it while we waited
            check_spec(root, spec, data.kind)
            return root
        partial = root.parent / f".{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tqdm(total=data.total(spec), desc=f"rendering {data.kind} into {root}", unit="img",
                  disable=not progress) as bar:
            data.write(partial, spec, bar)
        (partial / SPEC_NAME).write_text(json.dumps(spec, indent=1, sort_keys=True))
        partial.rename(root)
    return root
