"""Improved ResNet ("iresnet") face-recognition backbones, as trained by insightface arcface_torch.

Parameter names and shapes follow insightface's ``backbones/iresnet.py`` exactly, so a released
``backbone.pth`` loads with ``load_state_dict(..., strict=True)``:

    conv1, bn1, prelu                               stem: 3x3 conv, stride 1, 64 channels
    layer1..layer4                                  stages of IBasicBlock, each starting with stride 2
        .N.bn1 .conv1 .bn2 .prelu .conv2 .bn3       BN-conv-BN-PReLU-conv(stride)-BN (+ shortcut)
        .0.downsample.0 / .0.downsample.1           1x1 conv (stride) + BN, first block of a stage
    bn2, dropout, fc, features                      BN2d - flatten - dropout - Linear - BatchNorm1d

A 112x112 face becomes a 7x7x512 map (four stride-2 stages), so ``fc`` takes 512*7*7 inputs.
The ``features`` BatchNorm1d keeps its scale frozen at 1 (only its shift learns).
"""
from __future__ import annotations

import torch
from torch import nn

# Blocks per stage for each depth (insightface r18 / r34 / r50 / r100).
IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
IRESNET_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN, conv3x3, BN, PReLU, conv3x3 (carries the stride), BN."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(conv1x1(in_channels, channels, stride),
                                            nn.BatchNorm2d(channels, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _stage_output_size(size: int, num_stages: int) -> int:
    # a 3x3 conv with padding 1 and stride 2 maps n pixels to ceil(n / 2)
    for _ in range(num_stages):
        size = (size + 1) // 2
    return size


class IResNet(nn.Module):
    """iresnet backbone mapping (B, 3, H, W) images to (B, num_features) embeddings.

    ``input_size``: int or (height, width); it sets the ``fc`` input (widths[-1] * h' * w').
    ``fp16``: run the convolutional body under autocast (float16 on CUDA, bfloat16 on CPU); ``fc`` and
    ``features`` always run on float32 input, as insightface does.
    """

    def __init__(self, layers: tuple[int, ...], widths: tuple[int, ...] = IRESNET_WIDTHS,
                 num_features: int = 512, input_size: int | tuple[int, int] = 112, dropout: float = 0.0,
                 fp16: bool = False, zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_size = (height, width)
        self.fp16 = fp16
        self.num_features = num_features

        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        in_channels = widths[0]
        for index, (blocks, channels) in enumerate(zip(layers, widths), start=1):
            stage = [IBasicBlock(in_channels, channels, stride=2)]
            stage += [IBasicBlock(channels, channels) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        self.num_stages = len(layers)

        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        out_h, out_w = _stage_output_size(height, len(layers)), _stage_output_size(width, len(layers))
        self.fc = nn.Linear(in_channels * out_h * out_w, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # insightface's initialisation: conv weights N(0, 0.1), BN scale 1 and shift 0
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.zeros_(module.bn3.weight)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False  # embedding BN: scale frozen at 1

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"expected {self.input_size[0]}x{self.input_size[1]} inputs (input_size), "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        amp_dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype, enabled=self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            for stage in self.stages():
                x = stage(x)
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


def iresnet18(**kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet18"], **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet34"], **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet50"], **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet100"], **kwargs)


def iresnet_tiny(num_features: int = 128, input_size: int | tuple[int, int] = 112, **kwargs) -> IResNet:
    """Same blocks, one per stage, widths 16/32/64/128: trains on a laptop CPU in minutes."""
    return IResNet((1, 1, 1, 1), widths=(16, 32, 64, 128), num_features=num_features,
                   input_size=input_size, **kwargs)
