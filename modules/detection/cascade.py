"""MTCNN inference (Zhang et al. 2016, sec. II-A and fig. 1): P-Net over an image pyramid proposes windows,
R-Net rejects most of them, O-Net scores the rest and places 5 landmarks.

Per stage: score, threshold, NMS, calibrate each window with the net's box regression (the box-offset
codec's ``decode_boxes``), square it (``square_boxes``) and crop it for the next net. Every step works on
all images and all windows at once (groups in NMS, one gather for all crops), so a batch of images costs
one pass per pyramid scale and one pass per later net, on CPU or GPU.

Coordinates are continuous pixels, ``x0, y0, x1, y1`` with width ``x1 - x0``; P-Net's output cell (i, j)
at a pyramid level looks at the level's pixels [2j, 2j + 12) x [2i, 2i + 12), mapped back to the image
by the level's exact size ratio.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from configs.errors import VisageError
from datamodules.codecs.box_offsets import decode_boxes, decode_landmarks, square_boxes
from modules.detection.cascade_config import CascadeConfig
from modules.detection.crops import IntegralImages
from modules.detection.nms import batched_nms
from modules.detection.pyramid import pyramid_scales, scaled_size
from modules.nets.mtcnn import INPUT_SIZE, PNET_CELL, PNET_STRIDE, normalize_pixels

NETS_BATCH = 2048  # crops per R-Net / O-Net forward (bounds the memory on many candidates)


class ImageFormatError(VisageError, ValueError):
    """An input that is not an RGB image (H x W x 3 array, or N x 3 x H x W tensor)."""


@dataclass
class Windows:
    """Candidate windows of a batch of images: ``image`` says whose each window is."""

    boxes: torch.Tensor      # (K, 4)
    scores: torch.Tensor     # (K,)
    image: torch.Tensor      # (K,) long

    def select(self, index: torch.Tensor) -> Windows:
        return Windows(self.boxes[index], self.scores[index], self.image[index])

    def per_image(self, count: int, **extra: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One dict per image with ``boxes``, ``scores`` and each ``extra`` (rows of this image, in order)."""
        fields = {"boxes": self.boxes, "scores": self.scores, **extra}
        return [{name: value[self.image == i] for name, value in fields.items()} for i in range(count)]


def as_image_list(images, device: torch.device) -> list[torch.Tensor]:
    """H x W x 3 RGB arrays (a list, or one array), or an N x 3 x H x W tensor, with values 0..255 -> a list
    of ``(3, H, W)`` tensors on ``device``: uint8 stays uint8 (exact integral images), anything else float32."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ImageFormatError(f"image tensor must be N x 3 x H x W, got {tuple(images.shape)}")
        images = images.to(device)
        return list(images if images.dtype == torch.uint8 else images.float())
    if isinstance(images, np.ndarray):
        images = [images]
    converted = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageFormatError(f"image {k} must be H x W x 3 RGB, got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)
        converted.append(tensor if tensor.dtype == torch.uint8 else tensor.float())
    return converted


def face_probability(logits: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[:, 1] over the class dimension (1)."""
    return torch.softmax(logits, dim=1)[:, 1]


class MTCNNDetector:
    """The three nets and the settings: ``detect(images)`` -> per image ``boxes`` (K, 4), ``scores`` (K,),
    ``landmarks`` (K, 5, 2), by score; ``propose(images, through)`` -> the windows the next stage would
    classify (for mining its training crops)."""

    def __init__(self, pnet: nn.Module, rnet: nn.Module, onet: nn.Module, config: CascadeConfig | None = None):
        # used as given: the nets have no layer that acts differently in training mode (no batch norm, no
        # dropout), so a LightningModule's nets can be used mid-training without switching their mode
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.config = config or CascadeConfig()

    @property
    def device(self) -> torch.device:
        return next(self.pnet.parameters()).device

    @torch.no_grad()
    def detect(self, images, profile: dict[str, float] | None = None) -> list[dict[str, torch.Tensor]]:
        """Faces in each image. ``profile``, if given, accumulates seconds per stage (pnet, rnet, onet)."""
        clock = StageClock(self.device, profile)
        images = as_image_list(images, self.device)
        windows = self.pnet_windows(images)
        clock.lap("pnet")
        integral = IntegralImages(images) if images else None
        windows = self.rnet_windows(integral, windows)
        clock.lap("rnet")
        windows, landmarks = self.onet_faces(integral, windows)
        clock.lap("onet")
        return windows.per_image(len(images), landmarks=landmarks)

    @torch.no_grad()
    def propose(self, images, through: str = "pnet") -> list[dict[str, torch.Tensor]]:
        """Per image the calibrated, squared windows (``boxes``) and ``scores`` left after P-Net
        (``through="pnet"``: R-Net's inputs) or after R-Net (``"rnet"``: O-Net's inputs)."""
        if through not in ("pnet", "rnet"):
            raise ValueError(f"propose(through=...) takes 'pnet' or 'rnet', got {through!r}")
        images = as_image_list(images, self.device)
        windows = self.pnet_windows(images)
        if through == "rnet" and images:
            windows = self.rnet_windows(IntegralImages(images), windows)
        return windows.per_image(len(images))

    def pnet_windows(self, images: list[torch.Tensor]) -> Windows:
        """Stage 1: P-Net over every pyramid level; NMS per level, then across levels; calibrated, squared."""
        cfg = self.config
        found, levels = [], 0
        for size, members in images_by_size(images).items():
            batch = normalize_pixels(torch.stack([images[i] for i in members]))
            member_index = torch.tensor(members, device=self.device)
            scales = pyramid_scales(*size, min_face=cfg.min_face, factor=cfg.factor)
            for level, scale in enumerate(scales):
                level_size = scaled_size(*size, scale)
                found.append(self.pnet_level(batch, level_size, member_index, size, cfg.thresholds[0], level))
            levels = max(levels, len(scales))
        if not found:
            return empty_windows(self.device)
        boxes, scores, image, level, offsets = (torch.cat(parts) for parts in zip(*found))
        group = image * levels + level
        best = best_per_group(scores, group, cfg.max_windows)
        keep = best[batched_nms(boxes[best], scores[best], group[best], cfg.nms_per_scale)]
        boxes, scores, image, offsets = boxes[keep], scores[keep], image[keep], offsets[keep]
        best = best_per_group(scores, image, cfg.max_windows)
        keep = best[batched_nms(boxes[best], scores[best], image[best], cfg.nms_across_scales)]
        calibrated = square_boxes(decode_boxes(boxes[keep], offsets[keep]))
        return drop_empty(Windows(calibrated, scores[keep], image[keep]))

    def pnet_level(self, batch: torch.Tensor, level_size: tuple[int, int], member_index: torch.Tensor,
                   size: tuple[int, int], threshold: float, level: int) -> tuple[torch.Tensor, ...]:
        """Windows of one pyramid level of a batch of same-size images: boxes, scores, image, level, offsets."""
        out = self.pnet(channels_last(F.interpolate(batch, size=level_size, mode="area")))
        probability = face_probability(out.face_logits)
        b, i, j = (probability >= threshold).nonzero(as_tuple=True)
        cells = torch.stack([j, i, j, i], dim=1).float() * PNET_STRIDE
        cells[:, 2:] += PNET_CELL
        ratio = torch.tensor([size[1] / level_size[1], size[0] / level_size[0]] * 2, device=batch.device)
        offsets = out.box_offsets.permute(0, 2, 3, 1)[b, i, j]
        return cells * ratio, probability[b, i, j], member_index[b], torch.full_like(b, level), offsets

    def rnet_windows(self, integral: IntegralImages | None, windows: Windows) -> Windows:
        """Stage 2: R-Net on 24x24 crops; threshold, NMS, calibrated, squared."""
        if len(windows.boxes) == 0:
            return windows
        cfg = self.config
        out = run_in_batches(self.rnet, integral.crop(windows.boxes, windows.image, INPUT_SIZE["rnet"]))
        probability = face_probability(out.face_logits)
        passed = probability > cfg.thresholds[1]
        windows = Windows(windows.boxes[passed], probability[passed], windows.image[passed])
        offsets = out.box_offsets[passed]
        keep = batched_nms(windows.boxes, windows.scores, windows.image, cfg.nms_rnet)
        windows = windows.select(keep)
        return drop_empty(Windows(square_boxes(decode_boxes(windows.boxes, offsets[keep])), windows.scores,
                                  windows.image))

    def onet_faces(self, integral: IntegralImages | None, windows: Windows) -> tuple[Windows, torch.Tensor]:
        """Stage 3: O-Net on 48x48 crops; threshold, landmarks, calibrated boxes, "min" NMS."""
        if len(windows.boxes) == 0:
            return windows, windows.boxes.new_zeros((0, 5, 2))
        cfg = self.config
        out = run_in_batches(self.onet, integral.crop(windows.boxes, windows.image, INPUT_SIZE["onet"]))
        probability = face_probability(out.face_logits)
        passed = probability > cfg.thresholds[2]
        crops = windows.boxes[passed]
        landmarks = decode_landmarks(crops, out.landmarks[passed].reshape(-1, 5, 2))
        faces = Windows(decode_boxes(crops, out.box_offsets[passed]), probability[passed], windows.image[passed])
        keep = batched_nms(faces.boxes, faces.scores, faces.image, cfg.nms_onet, mode="min")
        return faces.select(keep), landmarks[keep]


def best_per_group(scores: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` best scores of each group (all of a group that has fewer), in index order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, best first within each
    sorted_groups = groups[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.arange(len(order), device=scores.device) - starts
    return order[rank < count].sort().values


def images_by_size(images: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Image indices grouped by (height, width), so that same-size images share P-Net passes."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault((image.shape[1], image.shape[2]), []).append(k)
    return groups


def run_in_batches(net: nn.Module, crops: torch.Tensor):
    """``net`` on normalised crops, ``NETS_BATCH`` at a time, outputs concatenated."""
    outputs = [net(channels_last(normalize_pixels(crops[k:k + NETS_BATCH]))) for k in range(0, len(crops), NETS_BATCH)]
    return type(outputs[0])(*(torch.cat(parts) for parts in zip(*outputs)))


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """The same values laid out N, H, W, C: PyTorch's CPU convolutions and max-pooling run 2-7x faster so
    on these small nets (measured: R-Net on 137 crops 54 -> 25 ms, one thread)."""
    return images.contiguous(memory_format=torch.channels_last)


def empty_windows(device: torch.device) -> Windows:
    return Windows(torch.zeros((0, 4), device=device), torch.zeros(0, device=device),
                   torch.zeros(0, dtype=torch.long, device=device))


def drop_empty(windows: Windows) -> Windows:
    """Windows that calibration turned inside out (no width) cannot be cropped: they go."""
    return windows.select((windows.boxes[:, 2] > windows.boxes[:, 0]) & (windows.boxes[:, 3] > windows.boxes[:, 1]))


class StageClock:
    """Adds the seconds since the previous lap to ``profile[stage]`` (waits for the GPU first)."""

    def __init__(self, device: torch.device, profile: dict[str, float] | None):
        self.device, self.profile, self.last = device, profile, time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.profile is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.profile[stage] = self.profile.get(stage, 0.0) + now - self.last
        self.last = now
