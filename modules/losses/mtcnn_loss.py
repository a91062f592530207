"""The multi-task loss of one MTCNN stage (Zhang et al. 2016, sec. II-B, eq. 1-5), as pure functions.

    L = w_det * L_det + w_box * L_box + w_landmark * L_landmark                            (eq. 4)

- L_det: face / not-face cross-entropy (eq. 1), on NEGATIVE and POSITIVE crops only, with online hard
  sample mining: of the batch's classified crops, only the ``ceil(ohem_ratio * n)`` with the highest
  loss count (sec. III-B: "select the top 70% of them as hard samples"); ``ohem_ratio=1.0`` keeps all.
- L_box: squared Euclidean distance between predicted and target box offsets (eq. 2), on POSITIVE and
  PART crops;
- L_landmark: squared Euclidean distance over the 10 landmark values (eq. 3), on LANDMARK crops.

Each term is the mean over the crops it applies to (eq. 5's beta picks the crops; the sum over the 4 or
10 coordinates is eq. 2's and 3's norm), and 0 when the batch holds none of them (still attached to the
graph, so every parameter gets a gradient, as DDP needs). Weights (det, box, landmark): 1 / 0.5 / 0.5
for P-Net and R-Net, 1 / 0.5 / 1 for O-Net (sec. III-B). Crop kinds: ``datamodules.codecs.crop_kinds``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datamodules.codecs.crop_kinds import LANDMARK, NEGATIVE, PART, POSITIVE

from modules.nets.mtcnn_stages import LOSS_WEIGHTS, OHEM_RATIO


@dataclass
class StageLoss:
    """The weighted total (to back-propagate) and its unweighted terms (detached, to log)."""

    total: torch.Tensor
    face: torch.Tensor
    box: torch.Tensor
    landmark: torch.Tensor


def per_sample(output: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` from a head's ``(N, C)`` or P-Net's ``(N, C, 1, 1)`` on 12x12 crops."""
    if output.dim() == 4:
        if output.shape[2:] != (1, 1):
            raise ValueError(f"a stage loss needs one output per crop, got maps of {tuple(output.shape[2:])}")
        return output.flatten(1)
    return output


def hard_sample_count(count: int, ohem_ratio: float) -> int:
    """How many of ``count`` classified crops online hard sample mining keeps: ceil(ratio * count)."""
    if not 0 < ohem_ratio <= 1:
        raise ValueError(f"ohem_ratio must be in (0, 1], got {ohem_ratio}")
    return min(count, math.ceil(ohem_ratio * count - 1e-9))  # 1e-9: 0.7 * 10 is 7.000000000000001


def face_loss(face_logits: torch.Tensor, kinds: torch.Tensor, ohem_ratio: float = OHEM_RATIO) -> torch.Tensor:
    """Mean cross-entropy (eq. 1) of the hardest ``ceil(ohem_ratio * n)`` of the n NEGATIVE / POSITIVE crops
    (label 1 for POSITIVE); other kinds are ignored."""
    logits = per_sample(face_logits)
    classified = (kinds == NEGATIVE) | (kinds == POSITIVE)
    if not classified.any():
        return logits.sum() * 0.0
    losses = F.cross_entropy(logits[classified], (kinds[classified] == POSITIVE).long(), reduction="none")
    hardest = torch.topk(losses, hard_sample_count(len(losses), ohem_ratio), sorted=False).values
    return hardest.mean()


def squared_distance_loss(predicted: torch.Tensor, target: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Mean over the selected crops of ||predicted - target||^2 (eq. 2 and 3); 0 if none is selected."""
    predicted = per_sample(predicted)
    if not selected.any():
        return predicted.sum() * 0.0
    return (predicted[selected] - target[selected].to(predicted.dtype)).pow(2).sum(dim=1).mean()


def box_loss(box_offsets: torch.Tensor, box_targets: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Box-regression loss (eq. 2) on POSITIVE and PART crops."""
    return squared_distance_loss(box_offsets, box_targets, (kinds == POSITIVE) | (kinds == PART))


def landmark_loss(landmarks: torch.Tensor, landmark_targets: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Landmark loss (eq. 3) on LANDMARK crops; targets ``(N, 10)`` pairs x, y or ``(N, 5, 2)``."""
    return squared_distance_loss(landmarks, landmark_targets.flatten(1), kinds == LANDMARK)


def stage_loss(face_logits: torch.Tensor, box_offsets: torch.Tensor, landmarks: torch.Tensor, kinds: torch.Tensor,
               box_targets: torch.Tensor, landmark_targets: torch.Tensor,
               weights: tuple[float, float, float] = LOSS_WEIGHTS["pnet"],
               ohem_ratio: float = OHEM_RATIO) -> StageLoss:
    """Eq. 4 for one batch of crops: the nets' three outputs, each crop's kind, and its box and landmark
    targets (any values where its kind does not use them). ``weights``: (det, box, landmark)."""
    face = face_loss(face_logits, kinds, ohem_ratio)
    box = box_loss(box_offsets, box_targets, kinds)
    landmark = landmark_loss(landmarks, landmark_targets, kinds)
    total = weights[0] * face + weights[1] * box + weights[2] * landmark
    return StageLoss(total, face.detach(), box.detach(), landmark.detach())
