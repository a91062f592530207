"""The three MTCNN networks (Zhang, Zhang, Li, Qiao: "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", IEEE SPL 2016, fig. 2).

Each net takes ``(N, 3, H, W)`` float images normalised by ``normalize_pixels`` ((x - 127.5) / 128)
and returns a ``StageOutput`` of raw outputs (no softmax inside):

- ``face_logits`` (N, 2): logits of (not face, face);
- ``box_offsets`` (N, 4): the box relative to the input window, as ``datamodules.codecs.box_offsets``
  encodes it: (x0, y0, x1, y1) corner offsets in window widths / heights;
- ``landmarks`` (N, 10): the 5 points as window fractions, in pairs x0, y0, x1, y1, ...
  (``decode_landmarks`` reads them so).

P-Net is fully convolutional: on a 12x12 input its outputs are (N, C, 1, 1); on a larger image they are
maps with one cell per 12x12 window at stride 2. Max-pooling rounds up (``ceil_mode``), as the original
Caffe nets do: R-Net's and O-Net's FC layers see 3x3 maps (576 and 1152 inputs).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from configs.errors import VisageError
from modules.nets.mtcnn_stages import INPUT_SIZE, STAGES

PNET_STRIDE = 2      # P-Net's output cells step 2 pixels over its input ...
PNET_CELL = 12       # ... and each sees a 12x12 window


class StageOutput(NamedTuple):
    face_logits: torch.Tensor
    box_offsets: torch.Tensor
    landmarks: torch.Tensor


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """0..255 pixel values -> the nets' input range, (x - 127.5) / 128."""
    return (images.float() - 127.5) * (1.0 / 128.0)


def conv_prelu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel), nn.PReLU(cout))


class PNet(nn.Module):
    """Proposal net, 12x12: conv3(10) - max-pool 2/2 - conv3(16) - conv3(32) - 1x1 heads 2 / 4 / 10."""

    input_size = INPUT_SIZE["pnet"]

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_prelu(3, 10, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                      conv_prelu(10, 16, 3), conv_prelu(16, 32, 3))
        self.face = nn.Conv2d(32, 2, 1)
        self.box = nn.Conv2d(32, 4, 1)
        self.landmarks = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> StageOutput:
        x = self.features(x)
        return StageOutput(self.face(x), self.box(x), self.landmarks(x))


class WindowNet(nn.Module):
    """R-Net and O-Net: convolutions over a fixed-size window, one fully connected layer, the heads
    2 / 4 / 10 (face, box offsets, landmarks)."""

    def __init__(self, features: nn.Sequential, flat: int, width: int):
        super().__init__()
        self.features = features
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, width), nn.PReLU(width))
        self.face = nn.Linear(width, 2)
        self.box = nn.Linear(width, 4)
        self.landmarks = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> StageOutput:
        x = self.fc(self.features(x))
        return StageOutput(self.face(x), self.box(x), self.landmarks(x))


class RNet(WindowNet):
    """Refine net, 24x24: conv3(28) - mp3/2 - conv3(48) - mp3/2 - conv2(64) - FC 128 - heads."""

    input_size = INPUT_SIZE["rnet"]

    def __init__(self):
        super().__init__(nn.Sequential(conv_prelu(3, 28, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       conv_prelu(28, 48, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       conv_prelu(48, 64, 2)), 64 * 3 * 3, 128)


class ONet(WindowNet):
    """Output net, 48x48: conv3(32) - mp3/2 - conv3(64) - mp3/2 - conv3(64) - mp2/2 - conv2(128) - FC 256 -
    heads."""

    input_size = INPUT_SIZE["onet"]

    def __init__(self):
        super().__init__(nn.Sequential(conv_prelu(3, 32, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       conv_prelu(32, 64, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       conv_prelu(64, 64, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                       conv_prelu(64, 128, 2)), 128 * 3 * 3, 256)


STAGE_NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


class StageNameError(VisageError, ValueError):
    """A stage name other than pnet, rnet, onet."""


def build_stage_net(stage: str) -> nn.Module:
    """A freshly initialised ``PNet`` | ``RNet`` | ``ONet`` for ``"pnet"`` | ``"rnet"`` | ``"onet"``."""
    if stage not in STAGE_NETS:
        raise StageNameError(f"unknown MTCNN stage {stage!r}: expected one of {', '.join(STAGES)}")
    return STAGE_NETS[stage]()
