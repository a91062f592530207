"""The settings of MTCNN inference (torch-free: the detector's config section ``model.cascade`` is this
dataclass)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CascadeConfig:
    """The inference settings; defaults are the paper's (and facenet-pytorch's)."""

    min_face: float = 20.0                   # smallest face searched, pixels
    factor: float = 0.709                    # pyramid step
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # face probability kept by P-, R-, O-Net
    nms_per_scale: float = 0.5               # IoU, P-Net windows of one pyramid level
    nms_across_scales: float = 0.7           # IoU, P-Net windows of all levels of an image
    nms_rnet: float = 0.7                    # IoU, after R-Net
    nms_onet: float = 0.7                    # intersection over the smaller box, after O-Net
    # at most this many P-Net windows per image and pyramid level, and per image across levels, enter NMS
    # (the best scored): a weak or untrained P-Net passes most cells, and NMS costs the square of them
    max_windows: int = 2000
