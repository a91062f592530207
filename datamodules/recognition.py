"""Face recognition data (margin-softmax classifiers): identity-labelled crops in plain random batches.

Training: the rank's shard stream, shuffled, cut into plain batches of ``data.batch_size``; each
sample is {image, label (identity), key}, augmented by ``data.augment`` (a horizontal flip by
default, as insightface arcface_torch trains).

Evaluation sets, in order (the module reports them under these names):

0. ``val``: the held-out identities of ``data.val_split``; samples carry their identity, the
   module draws balanced verification pairs from them.
1. one per insightface ``.bin`` file in ``data.verification`` (lfw, cfp_fp, agedb_30, ...), named
   after the file: 2N images laid out pairwise, samples carry ``is_same`` (0/1) of their pair.

Every evaluation sample also carries ``index`` (its position in the set) so padded duplicates of the
DistributedSampler can be removed after gathering.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.converters.verification_bin import VerificationBinError, read_verification_bin
from datamodules.batchers import PlainBatcher
from datamodules.collate import image_tensor
from datamodules.decoding import decode_rgb
from datamodules.faces import FaceIdentityDataModule

HELD_OUT_SET = "val"


def verification_set_names(paths: Sequence[str]) -> list[str]:
    """A name per .bin file: its stem (lfw.bin -> lfw), with _2, _3 ... for repeated stems."""
    names: list[str] = []
    for path in paths:
        stem = Path(str(path)).stem
        name, count = stem, 1
        while name in names or name == HELD_OUT_SET:
            count += 1
            name = f"{stem}_{count}"
        names.append(name)
    return names


class VerificationBinSet(Dataset):
    """An insightface verification ``.bin`` as a dataset of 2N images; image 2i and 2i+1 form pair i.

    Every image is decoded once when the set is opened, so a broken file fails at setup on every
    rank (naming the file and image) instead of inside a loader worker of one rank.
    """

    def __init__(self, path: str | Path, image_size: int, name: str | None = None):
        self.path = Path(path).expanduser()
        self.name = name or self.path.stem
        self.image_size = image_size
        self.images, self.is_same = read_verification_bin(self.path)
        for index in range(len(self.images)):
            self.decoded_image(index)

    def __len__(self) -> int:
        return len(self.images)

    def decoded_image(self, index: int) -> np.ndarray:
        """Image ``index`` as H x W x 3 uint8 RGB, at its stored size."""
        image = decode_rgb(self.images[index])
        if image is None:
            raise VerificationBinError(f"{self.path}: image {index} (pair {index // 2}) cannot be decoded")
        return image

    def __getitem__(self, index: int) -> dict:
        image = cv2.resize(self.decoded_image(index), (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        return {"image": image_tensor(image), "index": torch.tensor(index),
                "is_same": torch.tensor(int(self.is_same[index // 2])), "key": f"{self.name}/{index}"}


class RecognitionDataModule(FaceIdentityDataModule):
    """The face identity data (transforms, uint8 batches normalised on the device) in plain batches,
    plus the verification sets."""

    def __init__(self, data: dict, seed: int = 0):
        super().__init__(data, seed)
        self.verification_sets: list[VerificationBinSet] = []

    # -- what the task provides ---------------------------------------------------------------
    def batcher(self) -> Callable:
        return PlainBatcher(self.data["batch_size"])

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not self.verification_sets:
            paths = list(self.data.get("verification") or [])
            self.verification_sets = [VerificationBinSet(path, self.data["image_size"], name)
                                      for path, name in zip(paths, verification_set_names(paths))]

    # -- evaluation sets ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Identities of the training split (the classifier's default size)."""
        return self.train_index.num_identities

    def evaluation_names(self) -> list[str]:
        return [HELD_OUT_SET] + [s.name for s in self.verification_sets]

    def evaluation_datasets(self) -> list[Dataset]:
        return [self.val_split, *self.verification_sets]

    def evaluation_image(self, set_index: int, index: int) -> np.ndarray:
        """Image ``index`` of evaluation set ``set_index`` as RGB uint8 (for pictures)."""
        if set_index == 0:
            return self.val_split.decoded(index).image
        return self.verification_sets[set_index - 1].decoded_image(index)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.evaluation_loader(dataset) for dataset in self.evaluation_datasets()]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.evaluation_loader(self.val_split)
