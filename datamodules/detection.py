"""Face detection data (the MTCNN cascade): stage crops for training, whole scenes for evaluation.

- Training: crops of the stage's input size (12, 24 or 48 px) with their kind (negative, positive,
  part, landmark), box offsets and landmark targets, in batches mixed 3:1:1:2 (``KindMixBatcher``),
  flipped at random (targets flipped with them). P-Net's crops are cut from the training scenes at
  random (``datamodules/stage_crops.py``, cached beside the scenes); R-Net's and O-Net's are mined by
  the trained earlier stages (``data.train_crops`` names their folder).
- Evaluation: the held-out scenes, whole, with every face's box and WIDER setting; batches hold lists
  (scenes differ in size).
- Mining (``data.predict_on=mining``): the training scenes in chunks, each rank its own chunks.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import ShardDataModule
from datamodules.batchers import KindMixBatcher
from datamodules.codecs.crop_kinds import KIND_NAMES
from datamodules.collate import batch_as_is, image_tensor
from datamodules.decoding import DecodedSample
from datamodules.layouts import FIVE
from datamodules.shards import INDEX_NAME, read_index
from datamodules.stage_crops import crop_chunks, write_stage_crops
from datamodules.synthetic import SyntheticData, cache_dir, file_lock
from datamodules.synthetic_scenes import SYNTHETIC_SCENES

CROP_FIELDS = ("crop_kind", "crop_offsets", "crop_landmarks")
SCENE_FIELDS = ("boxes", "face_setting")
FLIP = FIVE.flip_permutation()


def flip_crop_targets(offsets: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The targets of a crop mirrored left to right: a box's left edge offset becomes minus its right
    one (dx0' = -dx1, dx1' = -dx0), a point's x fraction u becomes 1 - u, and left and right points swap."""
    flipped = np.array([-offsets[2], offsets[1], -offsets[0], offsets[3]], dtype=np.float32)
    points = landmarks[FLIP].copy()
    points[:, 0] = 1.0 - points[:, 0]
    return flipped, points


class CropTransform:
    """Decoded crop -> {image (uint8 3 x s x s), kind, offsets (4), landmarks (5, 2), key}; a missing target
    is zeros (the loss reads each target only on the kinds that have it). Flipped with probability
    ``hflip`` (picklable for loader workers; ``reseed`` makes the flips reproducible)."""

    def __init__(self, size: int, hflip: float = 0.0):
        self.size, self.hflip = size, hflip
        self.rng = random.Random(0)

    def reseed(self, seed: int) -> None:
        self.rng.seed(seed)

    def __call__(self, sample: DecodedSample) -> dict:
        ann, image = sample.annotation, sample.image
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        offsets = np.asarray(ann["crop_offsets"] or np.zeros(4), np.float32)
        landmarks = np.asarray(ann["crop_landmarks"] or np.zeros((FIVE.num_points, 2)), np.float32)
        if self.hflip and self.rng.random() < self.hflip:
            image = np.ascontiguousarray(image[:, ::-1])
            offsets, landmarks = flip_crop_targets(offsets, landmarks)
        return {"image": image_tensor(image), "kind": int(ann["crop_kind"]), "offsets": torch.from_numpy(offsets),
                "landmarks": torch.from_numpy(landmarks), "key": sample.key}


class SceneTransform:
    """Decoded scene -> {image (H x W x 3 uint8 array), boxes (K, 4), setting (K,), key}."""

    def __call__(self, sample: DecodedSample) -> dict:
        ann = sample.annotation
        return {"image": sample.image, "boxes": np.asarray(ann["boxes"], np.float32).reshape(-1, 4),
                "setting": np.asarray(ann["face_setting"], np.int64).reshape(-1), "key": sample.key}


class MiningChunks(Dataset):
    """The chunk numbers of the training scenes one rank mines (chunk c goes to rank c mod world: no
    padding, no chunk twice)."""

    def __init__(self, num_chunks: int, rank: int, world: int):
        self.chunks = list(range(rank, num_chunks, world))

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> int:
        return self.chunks[index]


class DetectionDataModule(ShardDataModule):
    required_fields = SCENE_FIELDS
    train_fields = CROP_FIELDS

    def synthetic_default(self) -> SyntheticData:
        return SYNTHETIC_SCENES

    # -- training crops ------------------------------------------------------------------------
    def crop_settings(self) -> dict:
        crops = self.data["crops"]
        return {"per_face": crops["per_face"], "mix": dict(crops["mix"])}

    def default_crops_root(self) -> Path:
        """P-Net's random crops of the training scenes, cached by scenes and crop settings."""
        key = json.dumps({"scenes": str(Path(self.dataset_root()).resolve() / self.data["train_split"]),
                          "size": self.data["image_size"], "seed": self.seed, **self.crop_settings()}, sort_keys=True)
        return cache_dir() / f"crops-{self.data['image_size']}px-{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def crops_root(self) -> Path:
        return Path(self.data["train_crops"]).expanduser() if self.data.get("train_crops") else self.default_crops_root()

    def train_split_dir(self) -> Path:
        return self.crops_root() / "train"

    def prepare_data(self) -> None:
        scenes = self.dataset_root()
        root = self.crops_root()
        if self.data.get("train_crops") or (root / "train" / INDEX_NAME).is_file():
            return
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / ".lock"):  # one process cuts them; the chunks resume after a stop
            if not (root / "train" / INDEX_NAME).is_file():
                write_stage_crops(scenes / self.data["train_split"], root, "train", self.data["image_size"],
                                  seed=self.seed, chunk_scenes=self.data["crops"]["chunk_scenes"],
                                  **self.crop_settings())

    def train_transform(self) -> Callable:
        return CropTransform(self.data["image_size"], hflip=0.5)

    def eval_transform(self) -> Callable:
        return SceneTransform()

    def batcher(self) -> Callable:
        mix = {KIND_NAMES.index(name): share for name, share in self.data["crops"]["mix"].items()}
        return KindMixBatcher(self.data["batch_size"], mix)

    # -- mining --------------------------------------------------------------------------------
    def scene_split_dir(self, split: str | None = None) -> Path:
        return Path(self.dataset_root()) / (split or self.data["train_split"])

    def mining_chunks(self) -> list[tuple[int, int]]:
        """(first, stop) scene ranges of the training scenes, one per mining chunk."""
        scenes = read_index(self.scene_split_dir()).num_samples
        return crop_chunks(scenes, self.data["crops"]["chunk_scenes"])

    def setup(self, stage: str | None = None) -> None:
        if self.data.get("predict_on") == "mining":  # mining reads scenes and writes the crops it would train on
            if self.trainer is not None:
                self.rank, self.world = self.trainer.global_rank, self.trainer.world_size
            self.root = self.dataset_root()
            return
        super().setup(stage)

    def predict_dataloader(self) -> DataLoader:
        if self.data.get("predict_on") == "mining":
            chunks = MiningChunks(len(self.mining_chunks()), self.rank, self.world)
            return DataLoader(chunks, batch_size=None, collate_fn=batch_as_is)
        return self.val_dataloader()
