"""MobileFaceNet (Chen, Liu, Gao, Han, "MobileFaceNets", CCBR 2018): a ~1M-parameter face embedder.

Layout of the paper's Table 1 for a 112x112 input (t: expansion, c: channels, n: repeats, s: stride):

    conv3x3            c=64  s=2      -> 56x56
    depthwise conv3x3  c=64  s=1
    bottleneck t=2     c=64  n=5 s=2  -> 28x28
    bottleneck t=4     c=128 n=1 s=2  -> 14x14
    bottleneck t=2     c=128 n=6 s=1
    bottleneck t=4     c=128 n=1 s=2  -> 7x7
    bottleneck t=2     c=128 n=2 s=1
    conv1x1            c=512
    linear GDConv7x7   c=512          global depthwise conv over the whole 7x7 map -> 1x1
    linear conv1x1     c=128          the embedding (configurable size)

Bottlenecks are MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, linear 1x1 project; a
shortcut when the stride is 1 and the width is unchanged), with PReLU as the non-linearity.
"""
from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), Table 1.
BOTTLENECK_SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, followed by PReLU unless ``linear``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 1,
                 stride: int = 1, padding: int = 0, groups: int = 1, linear: bool = False):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                  nn.BatchNorm2d(out_channels)]
        if not linear:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvBN(in_channels, hidden, 1),
            ConvBN(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            ConvBN(hidden, out_channels, 1, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_shortcut else out


class MobileFaceNet(nn.Module):
    """(B, 3, H, W) -> (B, embedding_size). ``input_size`` sets the GDConv kernel (7 at 112x112)."""

    def __init__(self, embedding_size: int = 128, input_size: int | tuple[int, int] = 112, fp16: bool = False):
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.fp16 = fp16
        self.stem = nn.Sequential(ConvBN(3, 64, 3, stride=2, padding=1),
                                  ConvBN(64, 64, 3, stride=1, padding=1, groups=64))
        blocks, in_channels = [], 64
        for expansion, channels, repeats, stride in BOTTLENECK_SETTINGS:
            for index in range(repeats):
                step = stride if index == 0 else 1
                blocks.append(InvertedResidual(in_channels, channels, step, expansion))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv_expand = ConvBN(in_channels, 512, 1)
        # four stride-2 convs with padding 1: each maps n pixels to ceil(n / 2)
        map_h, map_w = height, width
        for _ in range(4):
            map_h, map_w = (map_h + 1) // 2, (map_w + 1) // 2
        self.gdconv = ConvBN(512, 512, (map_h, map_w), groups=512, linear=True)  # global depthwise conv
        self.embedding = ConvBN(512, embedding_size, 1, linear=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp_dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype, enabled=self.fp16):
            x = self.conv_expand(self.blocks(self.stem(x)))
        x = self.embedding(self.gdconv(x.float() if self.fp16 else x))
        return torch.flatten(x, 1)
