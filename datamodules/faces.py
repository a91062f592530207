"""Face identity data (embedder, recognizer): face crops with an identity label."""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch

from datamodules.base import ShardDataModule
from datamodules.reading import DecodedSample, PlainBatcher
from datamodules.samplers import PKBatcher


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> uint8 C x H x W, a view of the same memory: ``collate`` stacks such views
    in one plain copy each into a channels-last N x C x H x W batch (no transposition anywhere).

    Face batches travel as uint8 (a quarter of float32's bytes through loader workers' shared memory
    and to the device) and are normalised per batch on the device by ``normalize_images``; a float
    conversion per sample costs more than decoding a 64 px JPEG."""
    return torch.from_numpy(image.transpose(2, 0, 1))  # NumPy's view: a torch permute costs 1 us more


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in about [-1, 1]: (x - 127.5) / 128, the insightface input."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_images expects the loaders' uint8 images, got {images.dtype}")
    return images.float().sub_(127.5).mul_(1 / 128)  # 1/128 is exact, and a product is cheaper than a quotient


class NormalizedFaceBatches:
    """Datamodule hook (mixed in before ``ShardDataModule``): a batch's uint8 ``image`` becomes the
    network's float input after it reaches the device, for every loop (fit, validate, test,
    predict); modules see float images only."""

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch["image"] = normalize_images(batch["image"])
        return batch


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


class FaceIdentityDataModule(NormalizedFaceBatches, ShardDataModule):
    required_fields = ("identity",)

    def train_transform(self) -> Callable:
        return IdentityTransform(self.data["image_size"], self.data["augment"])

    def eval_transform(self) -> Callable:
        return IdentityTransform(self.data["image_size"])

    def batcher(self) -> Callable:
        sampler = self.data["sampler"]
        if sampler["kind"] == "pk":
            return PKBatcher(sampler["p"], sampler["k"], pool_size=sampler["pool_size"])
        return PlainBatcher(self.data["batch_size"])
