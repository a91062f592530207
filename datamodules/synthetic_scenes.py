"""Synthetic detection scenes as a dataset (the detector's default data): a train split of scenes
[0, N) and a held-out val split of scenes [N, N + M), rendered in parallel processes by the scene
engine (``datamodules/synth/scenes.py``) and cached like every synthetic dataset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datamodules.synth.scenes import write_scene_split
from datamodules.synthetic import SyntheticData, ensure_synthetic

NOT_SCENE_SPEC = ("train_scenes", "val_scenes", "seed", "shard_size")  # the rest are SceneSpec fields


def scene_spec_of(spec: dict) -> dict:
    """The SceneSpec keyword arguments of a ``data.synthetic`` section (ranges as tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k not in NOT_SCENE_SPEC}


def synthetic_scenes_name(spec: dict) -> str:
    looks = hashlib.sha1(json.dumps(scene_spec_of(spec), sort_keys=True).encode()).hexdigest()[:10]
    return f"synth-scenes-t{spec['train_scenes']}-v{spec['val_scenes']}-seed{spec['seed']}-{looks}"


def write_synthetic_scenes(root: Path, spec: dict, bar) -> None:
    looks = scene_spec_of(spec)
    write_scene_split(root, "train", spec["train_scenes"], seed=spec["seed"], shard_size=spec["shard_size"], bar=bar,
                      **looks)
    write_scene_split(root, "val", spec["val_scenes"], seed=spec["seed"], first_index=spec["train_scenes"],
                      shard_size=spec["shard_size"], bar=bar, **looks)


def scenes_in(spec: dict) -> int:
    return spec["train_scenes"] + spec["val_scenes"]


SYNTHETIC_SCENES = SyntheticData("synthetic scenes", synthetic_scenes_name, write_synthetic_scenes, scenes_in)


def ensure_synthetic_scenes(root: Path | str | None, spec: dict, progress: bool = True) -> Path:
    return ensure_synthetic(SYNTHETIC_SCENES, root, spec, progress)
