"""The image pyramid of MTCNN's first stage: the scales at which P-Net's 12x12 window sees every face of at
least ``min_face`` pixels (Zhang et al. 2016, sec. II-A: "we initially resize it to different scales to
build an image pyramid").

Scale k is ``(12 / min_face) * factor**k``, for every k while the image's shorter side at that scale is
still at least 12 pixels: a face of side s at scale k is s * scale pixels, so the first scale maps a
``min_face`` face onto the 12-pixel window and each later one a face 1 / factor times larger.
"""
from __future__ import annotations

DEFAULT_MIN_FACE = 20.0
DEFAULT_FACTOR = 0.709  # about 1 / sqrt(2): two pyramid levels per octave
PNET_INPUT = 12


def pyramid_scales(height: int, width: int, min_face: float = DEFAULT_MIN_FACE, factor: float = DEFAULT_FACTOR,
                   net_size: int = PNET_INPUT) -> list[float]:
    """The scales, largest first, at which an ``height`` x ``width`` image is fed to P-Net."""
    if min_face <= 0 or not 0 < factor < 1:
        raise ValueError(f"pyramid needs min_face > 0 and 0 < factor < 1, got {min_face} and {factor}")
    scale = net_size / min_face
    shorter = min(height, width) * scale
    scales = []
    while shorter >= net_size:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def scaled_size(height: int, width: int, scale: float, net_size: int = PNET_INPUT) -> tuple[int, int]:
    """The pixel size of the image at ``scale`` (rounded, never below the net's input)."""
    return max(net_size, round(height * scale)), max(net_size, round(width * scale))
