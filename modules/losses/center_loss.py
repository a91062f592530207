"""Center loss (Wen, Zhang, Li, Qiao, ECCV 2016): pull each feature towards its class centre.

``loss = 0.5 * mean_i ||x_i - c_{y_i}||^2`` (the paper's eq. 2 sums over the mini-batch; the mean
keeps the weight lambda independent of the batch size).

Two ways to move the centres:
- ``alpha=None`` (default): the centres are an ``nn.Parameter`` learned by the optimizer together with
  the network (d loss / d c_j = -(1/B) sum_{i: y_i = j} (x_i - c_j)).
- ``alpha=float``: the paper's update (eq. 4): in training mode every forward moves
  ``c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`` after computing the loss; the
  centres are then a buffer and receive no gradient.
"""
from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int, embedding_size: int, alpha: float | None = None):
        super().__init__()
        self.num_classes, self.alpha = int(num_classes), alpha
        centers = torch.randn(num_classes, embedding_size) * 0.01
        if alpha is None:
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        bad = torch.nonzero((labels < 0) | (labels >= self.num_classes)).flatten().tolist()
        if bad:
            raise ValueError(f"labels outside [0, {self.num_classes}) at batch positions {bad}")
        centers = self.centers[labels]
        loss = 0.5 * (features - centers).pow(2).sum(dim=1).mean()
        if self.alpha is not None and self.training:
            self._move_centers(features.detach(), labels)
        return loss

    @torch.no_grad()
    def _move_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        # eq. 4: delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)
        diff = self.centers[labels] - features.to(self.centers.dtype)
        delta = torch.zeros_like(self.centers).index_add_(0, labels, diff)
        counts = torch.bincount(labels, minlength=self.num_classes).to(self.centers.dtype)
        self.centers -= self.alpha * delta / (1.0 + counts).unsqueeze(1)
