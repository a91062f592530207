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

Detection scenes: ``boxes`` holds every face of the image, and these per-face lists run parallel to it
(same length, same order):

  face_landmarks  [[[x, y] * 5] or null, ...] the face's 5 points (FIVE order), null when it has none
  face_flags      [[blur, expression, illumination, invalid, occlusion, pose], ...] WIDER FACE's integer
                  codes in its column order (WIDER_FLAGS): blur 0 clear, 1 normal, 2 heavy; expression
                  0 typical, 1 exaggerated; illumination 0 normal, 1 extreme; invalid 0 valid, 1 invalid
                  (ignored by evaluation); occlusion 0 none, 1 partial, 2 heavy; pose 0 typical, 1 atypical
  face_setting    [code, ...] the face's WIDER evaluation setting: 0 easy, 1 medium, 2 hard, 3 ignored.
                  The settings nest (easy within medium within hard): the code is the easiest setting
                  that holds the face, so it counts in setting s (0, 1, 2) when code <= s; 3 = in none
                  (invalid, or too small for hard)

Detector training crops (MTCNN stages): the image is the crop, resized to the stage's input size.

  crop_kind       0 negative, 1 positive, 2 part, 3 landmark (datamodules/codecs/crop_kinds.py)
  crop_offsets    [dx0, dy0, dx1, dy1] the face box relative to the crop window
                  (codecs/box_offsets.encode_boxes); required for positive and part crops, null
                  where a crop has none (writers write all three crop fields, so a reader can require them)
  crop_landmarks  [[u, v] * 5] the face's 5 points as fractions of the crop window
                  (codecs/box_offsets.encode_landmarks); required for landmark crops, null where
                  a crop has none
  scene           str, the key of the scene the crop was cut from
"""
from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from configs.errors import VisageError
from datamodules.codecs.crop_kinds import KIND_NAMES, LANDMARK, PART, POSITIVE
from datamodules.layouts import CELEBA_ATTRIBUTES, FIVE, W300_68, WFLW98

SCHEMA_VERSION = 1
LANDMARK_COUNTS = (WFLW98.num_points, W300_68.num_points, FIVE.num_points)
IMAGE_EXTENSIONS = ("jpg", "png")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-/]+$")
# WIDER FACE's per-face attribute columns (after x y w h) and the largest code of each
WIDER_FLAGS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
WIDER_FLAG_MAX = (2, 1, 1, 1, 2, 1)
FLAG_INDEX = {name: i for i, name in enumerate(WIDER_FLAGS)}
# face_setting codes: the easiest evaluation setting holding the face; IGNORED = in none of them
EASY, MEDIUM, HARD, IGNORED = 0, 1, 2, 3
SETTING_NAMES = ("easy", "medium", "hard")
PER_FACE_FIELDS = ("face_landmarks", "face_flags", "face_setting")


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
    _check_scene_faces(ann, full=only is None)
    _check_crop(ann, full=only is None)
    if "scene" in ann and not isinstance(ann["scene"], str):
        raise SampleError("bad_shape", f"field 'scene': expected a sample key, got {ann['scene']!r}")
    return ann


def _integer_codes(values: Any, field: str, largest: int) -> None:
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= largest
                                           for v in values):
        raise SampleError("bad_shape", f"field {field!r}: expected integers from 0 to {largest}, got {values!r}")


def _check_scene_faces(ann: dict, full: bool) -> None:
    """The per-face lists of a scene: shapes, code ranges, and one entry per box."""
    present = [name for name in PER_FACE_FIELDS if name in ann]
    if not present:
        return
    if "boxes" not in ann:
        if full:
            raise SampleError("missing_field", f"field {present[0]!r} is per face and needs 'boxes' beside it")
        faces = None  # a partial check that left the boxes out: lengths cannot be compared
    else:
        faces = len(ann["boxes"])
    for name in present:
        values = ann[name]
        if not isinstance(values, list):
            raise SampleError("bad_shape", f"field {name!r}: expected a list with one entry per face")
        if faces is not None and len(values) != faces:
            raise SampleError("bad_shape", f"field {name!r}: {len(values)} entries for {faces} boxes")
    for points in ann.get("face_landmarks", ()):
        if points is not None:
            _numbers(points, (FIVE.num_points, 2), "face_landmarks")
    for flags in ann.get("face_flags", ()):
        if not isinstance(flags, list) or len(flags) != len(WIDER_FLAGS):
            raise SampleError("bad_shape", f"field 'face_flags': each face needs {len(WIDER_FLAGS)} codes "
                                           f"({' '.join(WIDER_FLAGS)}), got {flags!r}")
        for value, name, largest in zip(flags, WIDER_FLAGS, WIDER_FLAG_MAX):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
                raise SampleError("bad_shape", f"field 'face_flags': {name} must be an integer from 0 to "
                                               f"{largest}, got {value!r}")
    if "face_setting" in ann:
        _integer_codes(ann["face_setting"], "face_setting", IGNORED)


def _check_crop(ann: dict, full: bool) -> None:
    """A detector training crop: its kind, its targets, and (on a full check) the targets its kind
    needs. A partial check (``only``) checks the crop fields it was given."""
    kind = ann.get("crop_kind")
    offsets, points = ann.get("crop_offsets"), ann.get("crop_landmarks")
    if kind is not None and (isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind < len(KIND_NAMES)):
        raise SampleError("bad_shape", f"field 'crop_kind': expected 0 to {len(KIND_NAMES) - 1} "
                                       f"({', '.join(KIND_NAMES)}), got {kind!r}")
    if offsets is not None:
        _numbers(offsets, (4,), "crop_offsets")
    if points is not None:
        _numbers(points, (FIVE.num_points, 2), "crop_landmarks")
    if not full:
        return
    if kind is None:
        if offsets is not None or points is not None:
            raise SampleError("missing_field", "fields 'crop_offsets' / 'crop_landmarks' need 'crop_kind' beside them")
        return
    if offsets is None and kind in (POSITIVE, PART):
        raise SampleError("missing_field", f"a {KIND_NAMES[kind]} crop needs 'crop_offsets'")
    if points is None and kind == LANDMARK:
        raise SampleError("missing_field", "a landmark crop needs 'crop_landmarks'")
