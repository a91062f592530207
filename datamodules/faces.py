"""Face identity data (embedder, recognizer): face crops with an identity label."""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2

from datamodules.base import ShardDataModule
from datamodules.batchers import PKBatcher, PlainBatcher
from datamodules.collate import image_tensor
from datamodules.decoding import DecodedSample
from datamodules.synthetic import SyntheticData
from datamodules.synthetic_faces import SYNTHETIC_FACES


def identity_augmentation(size: int, augment: dict) -> A.Compose:
    return A.Compose([
        A.Resize(size, size, interpolation=cv2.INTER_AREA),
        A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-8, 8),
                 border_mode=cv2.BORDER_REFLECT_101, p=augment["affine"]),
        A.HorizontalFlip(p=augment["hflip"]),
        A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=augment["color"]),
        A.GaussianBlur(blur_limit=(3, 3), p=augment["blur"]),
    ])


class IdentityTransform:
    """Decoded sample -> {image, label, key}; augmented when ``augment`` is given (picklable for workers)."""

    def __init__(self, size: int, augment: dict | None = None):
        self.size = size
        self.augment = identity_augmentation(size, augment) if augment is not None else None

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __call__(self, sample: DecodedSample) -> dict:
        if self.augment is not None:
            image = self.augment(image=sample.image)["image"]
        elif sample.image.shape[:2] != (self.size, self.size):
            image = cv2.resize(sample.image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        else:  # the decoded array is this sample's own: no copy needed
            image = sample.image
        # the label stays an int: collate makes one tensor per batch (a tensor per sample costs 3 us)
        return {"image": image_tensor(image), "label": sample.annotation["identity"], "key": sample.key}


class FaceIdentityDataModule(ShardDataModule):
    required_fields = ("identity",)

    def synthetic_default(self) -> SyntheticData:
        return SYNTHETIC_FACES

    def train_transform(self) -> Callable:
        return IdentityTransform(self.data["image_size"], self.data["augment"])

    def eval_transform(self) -> Callable:
        return IdentityTransform(self.data["image_size"])

    def batcher(self) -> Callable:
        sampler = self.data["sampler"]
        if sampler["kind"] == "pk":
            return PKBatcher(sampler["p"], sampler["k"], pool_size=sampler["pool_size"])
        return PlainBatcher(self.data["batch_size"])
