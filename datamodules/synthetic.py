"""The synthetic default data: generated once, into ``data.root`` when the config names one, else
into a cache folder, when a config asks for it.

A cache folder's name encodes every generation parameter; a folder the engine wrote also holds its
parameters in ``synthetic.json``, and one made with other parameters than the config's is an error,
never stale data. Generation holds a file lock (concurrent runs wait for one writer) and writes into
a temporary folder that is renamed at the end, so an interrupted generation never leaves a half
dataset.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from datamodules.shards import INDEX_NAME, ShardWriter, encode_image


SPEC_NAME = "synthetic.json"  # the generation parameters, beside the splits
LAYOUT_ONLY = ("shard_size",)  # parameters that change how samples are packed, not which


class SyntheticSpecError(ValueError):
    """A dataset folder made by the engine with other parameters than the config asks for."""


def cache_dir() -> Path:
    return Path(os.environ.get("VISAGE_CACHE", Path.home() / ".cache" / "visage")).expanduser()


def synthetic_faces_name(spec: dict) -> str:
    return (f"synth-faces-i{spec['identities']}-v{spec['val_identities']}-k{spec['per_identity']}"
            f"-s{spec['size']}-d{spec['difficulty']:g}-seed{spec['seed']}")


def _render_identities(args: tuple) -> list[tuple[str, bytes, dict]]:
    """Worker: render a block of identities and JPEG-encode them (runs in a separate process)."""
    first, count, per_identity, size, seed, difficulty = args
    from datamodules.synth.faces import generate_faces  # noqa: PLC0415 (heavy, worker-only)

    return [(key, encode_image(image, "jpg", 95), ann)
            for key, image, ann in generate_faces(count, per_identity, size=size, seed=seed,
                                                   difficulty=difficulty, first_identity=first)]


def write_synthetic_faces(root: Path, spec: dict, workers: int | None = None, progress: bool = True) -> None:
    """Render the train split (identities [0, N)) and the held-out val split ([N, N + M))."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    splits = (("train", 0, spec["identities"]), ("val", spec["identities"], spec["val_identities"]))
    total = (spec["identities"] + spec["val_identities"]) * spec["per_identity"]
    bar = tqdm(total=total, desc=f"rendering synthetic faces into {root}", unit="img", disable=not progress)
    with ProcessPoolExecutor(workers) as pool:
        for split, first, count in splits:
            block = 20
            jobs = [(first + start, min(block, count - start), spec["per_identity"], spec["size"], spec["seed"],
                     spec["difficulty"]) for start in range(0, count, block)]
            with ShardWriter(root, split, max_samples=spec["shard_size"], split_on="identity") as writer:
                for samples in pool.map(_render_identities, jobs):
                    for key, data, annotation in samples:
                        writer.write(key, data, annotation)
                    bar.update(len(samples))
    bar.close()
    (root / SPEC_NAME).write_text(json.dumps(spec, indent=1, sort_keys=True))


def check_spec(root: Path, spec: dict) -> None:
    """Raise SyntheticSpecError when ``root`` was written for other generation parameters."""
    path = root / SPEC_NAME
    if not path.is_file():
        return  # written by hand or by an older version: nothing to compare
    made = json.loads(path.read_text())
    differ = sorted(k for k in set(made) | set(spec) if k not in LAYOUT_ONLY and made.get(k) != spec.get(k))
    if differ:
        found = ", ".join(f"{k}={made.get(k)!r} (the config asks for {spec.get(k)!r})" for k in differ)
        raise SyntheticSpecError(f"{root} holds synthetic faces made with {found}; delete the folder or "
                                 "write them elsewhere (data.root, or --out of `visage data synth`)")


def ensure_synthetic_faces(root: Path | str | None, spec: dict, progress: bool = True) -> Path:
    """The dataset folder for ``spec``: ``root`` if given, else a folder in the cache; generated if absent."""
    root = Path(root).expanduser() if root else cache_dir() / synthetic_faces_name(spec)
    if (root / "val" / INDEX_NAME).is_file():
        check_spec(root, spec)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "val" / INDEX_NAME).is_file():  # another process wrote it while we waited
            check_spec(root, spec)
            return root
        partial = root.parent / f".{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_synthetic_faces(partial, spec, progress=progress)
        partial.rename(root)
    return root
