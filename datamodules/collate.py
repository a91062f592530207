"""Samples -> batches: images as channels-last uint8, normalised per batch on the device.

Image batches travel as uint8 (a quarter of float32's bytes through loader workers' shared memory
and to the device) in channels-last memory, and are normalised by ``normalize_images`` after they
reach the device (``ShardDataModule.on_after_batch_transfer``); a float conversion per sample costs
more than decoding a 64 px JPEG.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> uint8 C x H x W, a view of the same memory: ``collate`` stacks such views
    in one plain copy each into a channels-last N x C x H x W batch (no transposition anywhere)."""
    return torch.from_numpy(image.transpose(2, 0, 1))  # NumPy's view: a torch permute costs 1 us more


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in about [-1, 1]: (x - 127.5) / 128, the insightface and MTCNN input."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_images expects the loaders' uint8 images, got {images.dtype}")
    return images.float().sub_(127.5).mul_(1 / 128)  # 1/128 is exact, and a product is cheaper than a quotient


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor of equal-shaped tensors, stacked in their memory layout.

    Images arrive as C x H x W views of H x W x C arrays (``faces.image_tensor``): they are stacked
    as N x H x W x C, one plain copy per image, and handed over as an N x C x H x W view of it, the
    channels-last layout convolutions take directly. ``torch.stack`` would transpose every image
    into N x C x H x W memory instead. Inside a loader worker ``default_collate`` writes the batch
    straight into shared memory, which the batch must reach anyway to leave the worker."""
    first = tensors[0]
    if first.dim() == 3 and first.stride(0) == 1 and first.size(0) > 1 and first.permute(1, 2, 0).is_contiguous():
        return default_collate([t.permute(1, 2, 0) for t in tensors]).permute(0, 3, 1, 2)
    return default_collate(tensors)


def collate(samples: list[dict]) -> dict:
    """Stack tensors (``stack``), make integers (labels) one tensor, keep everything else as lists."""
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[name] = stack(values)
        elif isinstance(values[0], int):
            out[name] = torch.tensor(values)
        else:
            out[name] = values
    return out


def batch_as_is(batch: dict) -> dict:
    """The loader's collate_fn for ready batches (its default walks every list of keys again)."""
    return batch
