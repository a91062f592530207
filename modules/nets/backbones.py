"""The face backbones a config names (``model.backbone``), built to an embedding size and input size."""
from __future__ import annotations

from torch import nn

from modules.nets import iresnet
from modules.nets.mobilefacenet import MobileFaceNet
from modules.nets.tiny import TinyNet


def build_backbone(name: str, embedding_size: int, image_size: int, dropout: float = 0.0,
                   width: int = 32) -> nn.Module:
    """``name``: "tiny" or one of ``trainers.config.FACE_BACKBONES`` (``width`` is TinyNet's, ``dropout`` an iresnet's)."""
    if name == "tiny":
        return TinyNet(image_size, width, embedding_size)
    if name == "mobilefacenet":
        return MobileFaceNet(embedding_size=embedding_size, input_size=image_size)
    iresnets = {"iresnet_tiny": iresnet.iresnet_tiny, "iresnet18": iresnet.iresnet18, "iresnet34": iresnet.iresnet34,
                "iresnet50": iresnet.iresnet50, "iresnet100": iresnet.iresnet100}
    if name not in iresnets:
        raise ValueError(f"model.backbone: unknown backbone {name!r}")
    return iresnets[name](num_features=embedding_size, input_size=image_size, dropout=dropout)
