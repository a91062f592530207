"""A small CNN that learns face embeddings on a CPU in minutes (the default for laptops and CI)."""
from __future__ import annotations

import torch
from torch import nn

from modules.nets.backbones import TINY, check_backbone


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyStage(nn.Module):
    """Downsampling conv followed by a residual conv pair."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = conv_bn_relu(cin, cout, 2)
        self.body = nn.Sequential(conv_bn_relu(cout, cout, 1),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return torch.relu(x + self.body(x))


class TinyNet(nn.Module):
    """stem (stride 2) + 3 stages (stride 2 each) -> flatten -> linear embedding.

    Faces are aligned, so the spatial layout is kept (flatten, as iresnet does) instead of pooled.
    """

    def __init__(self, image_size: int = 64, width: int = 32, embedding_size: int = 128):
        super().__init__()
        check_backbone(TINY, image_size)
        self.stem = conv_bn_relu(3, width, 2)
        self.stages = nn.Sequential(TinyStage(width, 2 * width), TinyStage(2 * width, 4 * width),
                                    TinyStage(4 * width, 8 * width))
        side = image_size // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width * side * side, embedding_size),
                                  nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
