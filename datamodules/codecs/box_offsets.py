"""Boxes relative to a crop window: the MTCNN box-regression and landmark targets (Zhang et al. 2016).

Boxes are ``[x0, y0, x1, y1]`` in continuous pixel coordinates (pixel (i, j) covers
[i, i + 1) x [j, j + 1)), so a window's width is ``x1 - x0`` (no +1 as in the MATLAB original).
The datamodule encodes a face's box and landmarks against the crop window it cut; the cascade
decodes a network's outputs against the window it scored (box calibration). Functions take and
return torch tensors of shape ``(N, 4)`` / ``(N, K, 2)``; NumPy arrays are accepted and converted.
"""
from __future__ import annotations

import torch


def _as_tensor(values) -> torch.Tensor:
    """A floating tensor: tensors keep their dtype and device, anything else becomes float32."""
    if isinstance(values, torch.Tensor):
        return values if values.is_floating_point() else values.float()
    return torch.as_tensor(values, dtype=torch.float32)


def box_sizes(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights of ``(N, 4)`` windows."""
    return windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]


def encode_boxes(windows, boxes) -> torch.Tensor:
    """Offsets of each box's corners from its window's, in window widths / heights:
    ``((bx0 - wx0) / w, (by0 - wy0) / h, (bx1 - wx1) / w, (by1 - wy1) / h)``."""
    windows, boxes = _as_tensor(windows), _as_tensor(boxes)
    w, h = box_sizes(windows)
    scale = torch.stack([w, h, w, h], dim=1)
    return (boxes - windows) / scale


def decode_boxes(windows, offsets) -> torch.Tensor:
    """The boxes that ``offsets`` (``encode_boxes``' output or a network's regression) describe."""
    windows, offsets = _as_tensor(windows), _as_tensor(offsets)
    w, h = box_sizes(windows)
    return windows + offsets * torch.stack([w, h, w, h], dim=1)


def encode_landmarks(windows, points) -> torch.Tensor:
    """``(N, K, 2)`` points -> their positions in the window as fractions of its size (0..1 inside)."""
    windows, points = _as_tensor(windows), _as_tensor(points)
    w, h = box_sizes(windows)
    origin = windows[:, None, :2]
    return (points - origin) / torch.stack([w, h], dim=1)[:, None, :]


def decode_landmarks(windows, encoded) -> torch.Tensor:
    """Inverse of ``encode_landmarks``: window fractions -> pixel points. A flat ``(N, 2K)`` network
    output is read as x0, y0, x1, y1, ... (pairs)."""
    windows, encoded = _as_tensor(windows), _as_tensor(encoded)
    if encoded.dim() == 2:
        encoded = encoded.view(encoded.shape[0], -1, 2)
    w, h = box_sizes(windows)
    return windows[:, None, :2] + encoded * torch.stack([w, h], dim=1)[:, None, :]


def box_iou(a, b) -> torch.Tensor:
    """``(N, M)`` intersection over union of every box of ``a`` with every box of ``b``
    (continuous coordinates; an empty box has IoU 0 with everything)."""
    a, b = _as_tensor(a), _as_tensor(b)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def square_boxes(boxes) -> torch.Tensor:
    """Each box grown to a square of side max(w, h) about its centre (MTCNN squares candidates
    before cropping them for the next stage)."""
    boxes = _as_tensor(boxes)
    w, h = box_sizes(boxes)
    side = torch.maximum(w, h)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)
