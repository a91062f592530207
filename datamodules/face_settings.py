"""The documented easy / medium / hard rule: a face's WIDER evaluation setting from its size and flags.

WIDER FACE's official settings come from how hard each face was for EdgeBox proposals, read from
``wider_{easy,medium,hard}_val.mat``; they cannot be recomputed. Where no such files exist (synthetic
scenes, WIDER train, other data) Visage splits faces by this rule instead, in the same spirit:
small, occluded, blurred and turned faces are harder. The settings nest (easy within medium within
hard), and ``face_setting`` stores the easiest setting holding a face (``datamodules.schema``):

  ignored (3)  the face is flagged invalid, or it is shorter than HARD_MIN_HEIGHT pixels
  easy    (0)  height >= EASY_MIN_HEIGHT, no occlusion, blur not heavy, typical pose
  medium  (1)  otherwise, height >= MEDIUM_MIN_HEIGHT, occlusion not heavy, blur not heavy
  hard    (2)  every other valid face of at least HARD_MIN_HEIGHT pixels

Heights are the face box's height in pixels (WIDER boxes run forehead to chin; synthetic boxes skull
top to chin). Illumination and expression do not change the setting.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from datamodules.schema import EASY, FLAG_INDEX, HARD, IGNORED, MEDIUM, WIDER_FLAGS

HARD_MIN_HEIGHT = 10.0
MEDIUM_MIN_HEIGHT = 25.0
EASY_MIN_HEIGHT = 50.0


def face_setting(height: float, flags: Sequence[int]) -> int:
    """The setting code (EASY, MEDIUM, HARD or IGNORED) of one face of ``height`` pixels with WIDER
    ``flags`` (blur, expression, illumination, invalid, occlusion, pose)."""
    if len(flags) != len(WIDER_FLAGS):
        raise ValueError(f"expected {len(WIDER_FLAGS)} WIDER flags ({' '.join(WIDER_FLAGS)}), got {list(flags)}")
    blur, occlusion, pose = flags[FLAG_INDEX["blur"]], flags[FLAG_INDEX["occlusion"]], flags[FLAG_INDEX["pose"]]
    if flags[FLAG_INDEX["invalid"]] or height < HARD_MIN_HEIGHT:
        return IGNORED
    if height >= EASY_MIN_HEIGHT and occlusion == 0 and blur < 2 and pose == 0:
        return EASY
    if height >= MEDIUM_MIN_HEIGHT and occlusion < 2 and blur < 2:
        return MEDIUM
    return HARD


def face_settings(boxes, flags) -> list[int]:
    """``face_setting`` of every face of a scene: boxes (N, 4) x0 y0 x1 y1, flags (N, 6)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [face_setting(float(box[3] - box[1]), list(face)) for box, face in zip(boxes, flags)]
