"""The face backbones a config names (``model.backbone``): their names, the input sizes they take,
and building one to an embedding size and input size.

This module imports no torch at import time (config checks ask it before any heavy import); the
networks are imported when one is built.
"""
from __future__ import annotations

FACE_BACKBONES = ("iresnet_tiny", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet")
TINY = "tiny"  # TinyNet: the embedder's CPU default
TINY_DOWNSAMPLING = 16  # TinyNet halves the image four times
BACKBONES = (TINY, *FACE_BACKBONES)  # every face task takes each of them: weights move between tasks


def check_backbone(name: str, image_size: int, choices: tuple[str, ...] = BACKBONES) -> None:
    """``name`` is a backbone of ``choices`` that can take ``image_size`` x ``image_size`` inputs."""
    from configs.errors import ParameterError  # noqa: PLC0415 (a tiny, torch-free module)

    if name not in choices:
        raise ParameterError("backbone", f"{name!r} is not one of {', '.join(choices)}")
    if name == TINY and image_size % TINY_DOWNSAMPLING:
        raise ParameterError("image_size", f"the tiny backbone halves the image 4 times and needs a multiple of "
                                           f"{TINY_DOWNSAMPLING}, got {image_size}")


def shape_parameters(name: str) -> tuple[str, ...]:
    """The parameters of ``build_backbone`` besides the name that decide the shapes of its weights
    (what a network must share with exported weights to load them)."""
    return ("width", "embedding_size", "image_size") if name == TINY else ("embedding_size", "image_size")


def build_backbone(name: str, embedding_size: int, image_size: int, dropout: float = 0.0, width: int = 32):
    """``name``: one of ``BACKBONES`` (``width`` is TinyNet's, ``dropout`` an iresnet's)."""
    check_backbone(name, image_size)
    if name == TINY:
        from modules.nets.tiny import TinyNet  # noqa: PLC0415

        return TinyNet(image_size, width, embedding_size)
    if name == "mobilefacenet":
        from modules.nets.mobilefacenet import MobileFaceNet  # noqa: PLC0415

        return MobileFaceNet(embedding_size=embedding_size, input_size=image_size)
    from modules.nets import iresnet  # noqa: PLC0415

    iresnets = {"iresnet_tiny": iresnet.iresnet_tiny, "iresnet18": iresnet.iresnet18, "iresnet34": iresnet.iresnet34,
                "iresnet50": iresnet.iresnet50, "iresnet100": iresnet.iresnet100}
    return iresnets[name](num_features=embedding_size, input_size=image_size, dropout=dropout)
