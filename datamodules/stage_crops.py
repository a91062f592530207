"""Writing a split of MTCNN stage crops from a split of scenes: per scene deterministic, in chunks of
scenes that resume, with a progress bar.

    write_stage_crops("data/scenes/train", "data/pnet", "train", size=12, seed=0)

Scene ``i`` of the split (its position in the shards' order, bad samples included) always yields
the same crops, from an RNG derived from (seed, i) alone, however the scenes are chunked or spread
over processes. The scenes are cut into chunks of ``chunk_scenes``; each chunk is written as its own
small split under ``out_root/.<split>.chunks/chunk-NNNNNN`` and is done when its ``index.json``
exists, so a run stopped anywhere redoes one chunk at most. Processes may write disjoint chunks
(``chunks=``) and one of them merges them (``merge_crop_chunks``) into ``out_root/<split>``: the
chunks' shards renamed in order, one ``index.json``, and ``crops.json`` with the crops per kind.

A crop sample: the crop image (PNG: lossless at 12 to 48 pixels) with ``crop_kind``, ``crop_offsets``
and ``crop_landmarks`` (null where a crop has none) and ``scene``, the scene's key.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from datamodules.codecs.crop_kinds import KIND_NAMES
from datamodules.detection_crops import Crops, sample_crops
from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.shard_stream import read_shard
from datamodules.schema import FLAG_INDEX, IGNORED, SCHEMA_VERSION, SampleError
from datamodules.shards import INDEX_NAME, SHARD_PATTERN, ShardWriter, read_index

CROP_STREAM = 4  # SeedSequence stream of crop sampling (scenes use 3)
CHUNK_PATTERN = "chunk-{:06d}"
STATS_NAME = "crops.json"


def crop_rng(seed: int, scene_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(scene_index), CROP_STREAM]))


def ignored_faces(annotation: dict) -> np.ndarray:
    """Faces that never become positives: flagged invalid, or in no evaluation setting."""
    count = len(annotation.get("boxes", []))
    ignored = np.zeros(count, dtype=bool)
    for i, flags in enumerate(annotation.get("face_flags") or []):
        ignored[i] |= bool(flags[FLAG_INDEX["invalid"]])
    for i, setting in enumerate(annotation.get("face_setting") or []):
        ignored[i] |= setting == IGNORED
    return ignored


def scenes_in_range(scene_dir: str | Path, start: int, stop: int, counter: BadSampleCounter
                    ) -> Iterator[tuple[int, object]]:
    """(scene index, DecodedSample) of the scenes ``start`` <= index < ``stop`` of a split; a bad
    scene keeps its index and is counted in ``counter``."""
    index = read_index(scene_dir)
    first = 0
    for url, count in index.shards:
        if first + count <= start or first >= stop:
            first += count
            continue
        for position, raw in enumerate(read_shard(url, counter, count)):
            scene_index = first + position
            if scene_index >= stop:
                break
            if scene_index < start:
                continue
            try:
                yield scene_index, decode_sample(raw, ("boxes",), check_all=True)
            except SampleError as err:
                counter.add(err.kind, str(err))
        first += count


def crop_chunks(num_scenes: int, chunk_scenes: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_scenes, num_scenes)) for start in range(0, num_scenes, chunk_scenes)]


def chunks_dir(out_root: Path, split: str) -> Path:
    return out_root / f".{split}.chunks"


def random_crops(size: int, seed: int, **sampling) -> Callable[[int, object], Crops]:
    """``crops_of(scene_index, scene)``: a scene's random stage crops (``sample_crops``), from an RNG of
    (seed, scene index) alone."""
    def crops_of(scene_index: int, scene) -> Crops:
        ann = scene.annotation
        return sample_crops(scene.image, ann["boxes"], ann.get("face_landmarks"), ignored_faces(ann), size,
                            crop_rng(seed, scene_index), **sampling)
    return crops_of


def write_crop_chunk(scene_dir: str | Path, chunk_dir: Path, start: int, stop: int,
                     crops_of: Callable[[int, object], Crops], bar: tqdm | None = None) -> dict:
    """Crops of scenes start .. stop - 1 (``crops_of(scene_index, scene)``) as the split ``chunk_dir``
    (index and crops.json last: a chunk is done once its index exists)."""
    counter = BadSampleCounter()
    kinds = dict.fromkeys(KIND_NAMES, 0)
    scenes = 0
    with ShardWriter(chunk_dir.parent, chunk_dir.name, image_ext="png") as writer:
        for scene_index, scene in scenes_in_range(scene_dir, start, stop, counter):
            crops = crops_of(scene_index, scene)
            for i in range(len(crops)):
                writer.write(f"{scene.key}_{i:03d}", crops.images[i], {**crops.annotation(i), "scene": scene.key})
                kinds[KIND_NAMES[crops.kinds[i]]] += 1
            scenes += 1
            if bar is not None:
                bar.update(1)
        # before the writer's index, which marks the chunk done
        stats = {"scenes": scenes, "crops": kinds, "bad_scenes": dict(counter.counts)}
        (chunk_dir / STATS_NAME).write_text(json.dumps(stats, indent=1))
    return stats


def merge_crop_chunks(out_root: str | Path, split: str, settings: dict | None = None) -> Path:
    """Move the finished chunks' shards into ``out_root/split`` (renamed in chunk order) and write its
    index and ``crops.json``. Returns the index path."""
    out_root = Path(out_root)
    chunk_root = chunks_dir(out_root, split)
    chunk_dirs = sorted(p for p in chunk_root.iterdir() if p.is_dir()) if chunk_root.is_dir() else []
    unfinished = [p.name for p in chunk_dirs if not (p / INDEX_NAME).is_file()]
    if unfinished or not chunk_dirs:
        raise FileNotFoundError(f"{chunk_root}: chunks not finished ({', '.join(unfinished) or 'none written'}); "
                                "write them first (write_stage_crops)")
    target = out_root / split
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shards, fields, total = [], set(), 0
    stats = {"scenes": 0, "crops": dict.fromkeys(KIND_NAMES, 0), "bad_scenes": {}, **(settings or {})}
    for chunk in chunk_dirs:
        index = json.loads((chunk / INDEX_NAME).read_text())
        for shard in index["shards"]:
            name = SHARD_PATTERN.format(len(shards))
            (chunk / shard["name"]).rename(target / name)
            shards.append({"name": name, "samples": shard["samples"]})
        fields.update(index["fields"])
        total += index["num_samples"]
        chunk_stats = json.loads((chunk / STATS_NAME).read_text())
        stats["scenes"] += chunk_stats["scenes"]
        for kind, count in chunk_stats["crops"].items():
            stats["crops"][kind] += count
        for kind, count in chunk_stats["bad_scenes"].items():
            stats["bad_scenes"][kind] = stats["bad_scenes"].get(kind, 0) + count
    (target / STATS_NAME).write_text(json.dumps(stats, indent=1))
    index = {"schema_version": SCHEMA_VERSION, "split": split, "num_samples": total, "num_identities": 0,
             "fields": sorted(fields), "shards": shards}
    (target / INDEX_NAME).write_text(json.dumps(index, indent=1))
    shutil.rmtree(chunk_root)
    return target / INDEX_NAME


def write_stage_crops(scene_dir: str | Path, out_root: str | Path, split: str, size: int, seed: int = 0,
                      chunk_scenes: int = 256, chunks: list[int] | None = None, merge: bool = True,
                      progress: bool = True, **sampling) -> Path | None:
    """Crops of size ``size`` from every scene of the split ``scene_dir`` into ``out_root/split``.
    ``chunks``: the chunk numbers this process writes (all by default); finished chunks are skipped.
    ``merge``: merge the chunks when they are all done (returns the index path, else None).
    ``sampling``: ``sample_crops`` options (per_face, mix, counts, min_face, min_window)."""
    out_root = Path(out_root)
    num_scenes = read_index(scene_dir).num_samples
    ranges = crop_chunks(num_scenes, chunk_scenes)
    todo = range(len(ranges)) if chunks is None else chunks
    chunk_root = chunks_dir(out_root, split)
    settings_path = chunk_root / "settings.json"
    settings = {"scene_dir": str(scene_dir), "size": size, "seed": seed, "chunk_scenes": chunk_scenes,
                "sampling": {k: v for k, v in sorted(sampling.items())}}
    chunk_root.mkdir(parents=True, exist_ok=True)
    if settings_path.is_file():
        made = json.loads(settings_path.read_text())
        if made != json.loads(json.dumps(settings)):
            raise ValueError(f"{chunk_root} holds chunks made with other settings ({made}); delete it or write "
                             "elsewhere")
    else:
        settings_path.write_text(json.dumps(settings, indent=1))
    pending = [k for k in todo if not (chunk_root / CHUNK_PATTERN.format(k) / INDEX_NAME).is_file()]
    total = sum(ranges[k][1] - ranges[k][0] for k in pending)
    with tqdm(total=total, desc=f"{size}x{size} crops from {scene_dir}", unit="scene", disable=not progress) as bar:
        for k in pending:
            start, stop = ranges[k]
            write_crop_chunk(scene_dir, chunk_root / CHUNK_PATTERN.format(k), start, stop,
                             random_crops(size, seed, **sampling), bar)
    done = all((chunk_root / CHUNK_PATTERN.format(k) / INDEX_NAME).is_file() for k in range(len(ranges)))
    if not (merge and done):
        return None
    return merge_crop_chunks(out_root, split, settings)
