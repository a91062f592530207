"""Synthetic face crops as a dataset: a train split of identities [0, N) and a held-out val split
of identities [N, N + M), rendered in parallel processes by the face engine (``datamodules/synth``)."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from datamodules.shards import ShardWriter, encode_image
from datamodules.synthetic import SyntheticData, ensure_synthetic

IDENTITY_BLOCK = 20  # identities per rendering job


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


def write_synthetic_faces(root: Path, spec: dict, bar, workers: int | None = None) -> None:
    """Render the train split (identities [0, N)) and the held-out val split ([N, N + M))."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    splits = (("train", 0, spec["identities"]), ("val", spec["identities"], spec["val_identities"]))
    with ProcessPoolExecutor(workers) as pool:
        for split, first, count in splits:
            jobs = [(first + start, min(IDENTITY_BLOCK, count - start), spec["per_identity"], spec["size"],
                     spec["seed"], spec["difficulty"]) for start in range(0, count, IDENTITY_BLOCK)]
            with ShardWriter(root, split, max_samples=spec["shard_size"], split_on="identity") as writer:
                for samples in pool.map(_render_identities, jobs):
                    for key, data, annotation in samples:
                        writer.write(key, data, annotation)
                    bar.update(len(samples))


def faces_in(spec: dict) -> int:
    return (spec["identities"] + spec["val_identities"]) * spec["per_identity"]


SYNTHETIC_FACES = SyntheticData("synthetic faces", synthetic_faces_name, write_synthetic_faces, faces_in)


def ensure_synthetic_faces(root: Path | str | None, spec: dict, progress: bool = True) -> Path:
    return ensure_synthetic(SYNTHETIC_FACES, root, spec, progress)
