"""The one sample schema every Visage shard follows, whatever the task or the source.

A sample in a shard is a webdataset record: ``__key__`` (no dots), an encoded image under ``jpg``
or ``png``, and a JSON annotation under ``json`` with the fields below. Each field is optional in
the schema; a task names the fields it requires.

  schema      int    SCHEMA_VERSION of the writer
  width       int    image width in pixels
  height      int    image height in pixels
  identity    int    identity label, >= 0
  box         [x0, y0, x1, y1] face box in pixels (continuous coordinates)
  boxes       [[x0, y0, x1, y1], ...] every face in a scene (detection)
  landmarks   [[x, y] * N] N = 98 (WFLW order), 68 (300W) or 5 (eye centres, nose tip, mouth
              corners): the count names the layout (layouts.layout_of; derive_landmarks converts)
  keypoints   [[x, y, v] * K] body keypoints, v in {0, 1, 2} (COCO visibility)
  attributes  [0/1 * 40] CelebA attributes in CELEBA_ATTRIBUTES order
"""
from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from configs.errors import VisageError
from datamodules.layouts import CELEBA_ATTRIBUTES, FIVE, W300_68, WFLW98

SCHEMA_VERSION = 1
LANDMARK_COUNTS = (WFLW98.num_points, W300_68.num_points, FIVE.num_points)
IMAGE_EXTENSIONS = ("jpg", "png")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-/]+$")


class SampleError(VisageError, ValueError):
    """A sample that cannot be used. ``kind`` is the counter it is reported under."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise SampleError("bad_key", f"sample key {key!r} may only hold letters, digits, '_', '-', '/' "
                                     "(webdataset splits keys at dots)")
    return key


_JSON = msgspec.json.Decoder()  # 5-6x faster than json.loads on annotations full of coordinates
_JSON_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])  # an object whose values stay undecoded


def parse_annotation(data: bytes, fields: tuple[str, ...] | None = None) -> Any:
    """The JSON annotation of a sample (strict JSON: NaN and Infinity literals are errors).

    With ``fields``, a dict of only those of them that are present: the other values are checked
    for JSON syntax but never turned into Python objects (most of the cost of an annotation with
    landmarks is its numbers).
    """
    try:
        if fields is None:
            return _JSON.decode(data)
        values = _JSON_FIELDS.decode(data)
        return {name: _JSON.decode(values[name]) for name in fields if name in values}
    except msgspec.DecodeError as err:
        raise SampleError("bad_json", f"annotation is not valid JSON ({err})") from None


def _numbers(value: Any, shape: tuple[int | None, ...], field: str) -> None:
    """Check that ``value`` is a nested list of finite numbers with the given shape (None = any)."""
    if len(shape) == 0:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SampleError("bad_shape", f"field {field!r}: expected a finite number, got {value!r}")
        return
    if not isinstance(value, (list, tuple)):
        raise SampleError("bad_shape", f"field {field!r}: expected a list, got {type(value).__name__}")
    if shape[0] is not None and len(value) != shape[0]:
        raise SampleError("bad_shape", f"field {field!r}: expected length {shape[0]}, got {len(value)}")
    for item in value:
        _numbers(item, shape[1:], field)


def validate_annotation(ann: Any, required: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> dict:
    """Raise SampleError unless ``ann`` follows the schema and holds every ``required`` field.

    ``only`` limits the checks to those fields: training reads check what the task uses (the
    writer already checked everything), which keeps validation off the data loader's hot path.
    """
    if not isinstance(ann, dict):
        raise SampleError("bad_json", f"annotation must be a JSON object, got {type(ann).__name__}")
    for name in required:
        if name not in ann:
            raise SampleError("missing_field", f"annotation lacks required field {name!r}")
    if only is not None:
        ann = {name: ann[name] for name in only if name in ann}
    if "identity" in ann:
        identity = ann["identity"]
        if isinstance(identity, bool) or not isinstance(identity, int) or identity < 0:
            raise SampleError("bad_shape", f"field 'identity': expected an integer >= 0, got {identity!r}")
    if "box" in ann:
        _numbers(ann["box"], (4,), "box")
    if "boxes" in ann:
        _numbers(ann["boxes"], (None, 4), "boxes")
    if "landmarks" in ann:
        _numbers(ann["landmarks"], (None, 2), "landmarks")
        if len(ann["landmarks"]) not in LANDMARK_COUNTS:
            raise SampleError("bad_shape", f"field 'landmarks': expected {' or '.join(map(str, LANDMARK_COUNTS))} "
                                           f"points, got {len(ann['landmarks'])}")
    if "keypoints" in ann:
        _numbers(ann["keypoints"], (None, 3), "keypoints")
        if any(point[2] not in (0, 1, 2) for point in ann["keypoints"]):
            raise SampleError("bad_shape", "field 'keypoints': visibility (each point's third value) must be "
                                           "0, 1 or 2")
    if "attributes" in ann:
        attrs = ann["attributes"]
        _numbers(attrs, (len(CELEBA_ATTRIBUTES),), "attributes")
        if any(a not in (0, 1) for a in attrs):
            raise SampleError("bad_shape", "field 'attributes': values must be 0 or 1")
    for name in ("width", "height"):
        if name in ann and (not isinstance(ann[name], int) or ann[name] <= 0):
            raise SampleError("bad_shape", f"field {name!r}: expected a positive integer")
    return ann
