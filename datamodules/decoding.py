"""Decoding a raw shard record into an RGB image and a checked annotation."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.schema import IMAGE_EXTENSIONS, SampleError, parse_annotation, validate_annotation

# Decoding small images gains nothing from OpenCV's thread pool, and loader workers run in parallel
# already. Set before any worker forks: changing it inside a forked worker can deadlock.
cv2.setNumThreads(1)


@dataclass
class DecodedSample:
    key: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    annotation: dict


# OpenCV >= 4.11 decodes straight into RGB (the JPEG decoder writes the channels in that order),
# which saves the BGR -> RGB pass; older versions decode BGR and swap
DECODE_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> H x W x 3 uint8 RGB; None when they are empty or not an image
    (OpenCV raises on empty bytes instead of returning None)."""
    if not data:
        return None
    if DECODE_RGB is not None:
        return cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_RGB)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_sample(raw: dict, required: tuple[str, ...], check_all: bool = False) -> DecodedSample:
    """Turn a raw webdataset record into an image array and an annotation holding the ``required``
    fields, validated (with ``check_all``: every field, all validated). Training reads what the
    task uses: the writer checked everything, and decoding unused landmarks costs more than the
    image."""
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise SampleError("missing_field", f"sample {key!r} has no json annotation")
    try:
        annotation = parse_annotation(raw["json"], None if check_all else required)
        validate_annotation(annotation, required, only=None if check_all else required)
    except SampleError as err:
        raise SampleError(err.kind, f"sample {key!r}: {err}") from None
    for ext in IMAGE_EXTENSIONS:  # a loop, not a generator expression: this runs per sample
        data = raw.get(ext)
        if data is not None:
            break
    if data is None:
        raise SampleError("missing_field", f"sample {key!r} has no image (jpg or png)")
    image = decode_rgb(data)
    if image is None:
        raise SampleError("undecodable_image", f"sample {key!r}: image bytes cannot be decoded")
    return DecodedSample(key, image, annotation)
