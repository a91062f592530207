"""Hard-example mining between cascade stages (Zhang et al. 2016, sec. III-C): the trained earlier
stages run over the training scenes; their windows, labelled by IoU with the faces, become the next
stage's crops (their false positives are its hard negatives), together with random positive, part
and landmark crops of the scene so that every kind is present.

Mined windows are the hard examples; random crops of every kind keep each kind present.
A chunk of scenes is mined at a time, into its own small split (``datamodules/stage_crops.py``): a
mining run stopped anywhere redoes one chunk per rank at most, and ranks mine disjoint chunks.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable

import numpy as np

from datamodules.detection_crops import Crops, crops_from_windows, sample_crops
from datamodules.stage_crops import crop_rng, ignored_faces
from modules.detection.cascade import MTCNNDetector
from modules.nets.mtcnn_stages import INPUT_SIZE, STAGES


def proposals_for(stage: str) -> str:
    """The stage whose output windows feed ``stage``: P-Net's for R-Net, R-Net's for O-Net."""
    if stage not in ("rnet", "onet"):
        raise ValueError(f"only R-Net and O-Net train on mined crops, not {stage!r}")
    return STAGES[STAGES.index(stage) - 1]


def join(parts: list[Crops]) -> Crops:
    """One Crops of several (the arrays concatenated)."""
    return Crops(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Crops)))


def mined_crops(detector: MTCNNDetector, stage: str, max_windows: int, seed: int,
                **sampling) -> Callable[[int, object], Crops]:
    """``crops_of(scene_index, scene)`` for ``stage``: the earlier stages' best ``max_windows`` windows
    labelled and cut, plus the scene's random crops of every kind (``sample_crops`` with ``sampling``:
    per_face, mix): once the earlier stages are good, their windows hold few negatives, and a stage that
    sees none cannot learn to reject anything."""
    size, through = INPUT_SIZE[stage], proposals_for(stage)

    def crops_of(scene_index: int, scene) -> Crops:
        ann = scene.annotation
        ignored = ignored_faces(ann)
        windows = detector.propose([scene.image], through=through)[0]
        order = windows["scores"].argsort(descending=True)[:max_windows]
        boxes = windows["boxes"][order].cpu().numpy()
        mined = crops_from_windows(scene.image, boxes, ann["boxes"], ann.get("face_landmarks"), size, ignored)
        extra = sample_crops(scene.image, ann["boxes"], ann.get("face_landmarks"), ignored, size,
                             crop_rng(seed, scene_index), **sampling)
        return join([mined, extra])

    return crops_of
