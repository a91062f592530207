"""Visage's synthetic face engine: face crops with identities, 98 WFLW landmarks, a box and the 40
CelebA attributes, generated on the fly with OpenCV (no download).

    for key, image, annotation in generate_faces(identities=100, per_identity=10, size=112):
        ...

Identity is carried by the geometry and colours of the facial features (identity.py); each image
adds nuisance scaled by ``difficulty`` in [0, 1], or set kind by kind with a ``Nuisance``:
background clutter, pose (roll, yaw, scale, shift), expression, occluders, lighting (gradient, colour
cast, gamma, contrast), blur, noise and JPEG. At difficulty 0 a face is frontal, centred, evenly lit
and clean (smiles, open mouths and the Blurry flag are attributes and keep their rates). Every
image's RNG derives from (seed, identity, index), so any subset regenerates identically and
generation splits freely across processes.

The engine: identity.py (who: parameters and attributes), geometry.py (pseudo-3-D head, eyes,
brows, nose, mouth, landmarks, projection), hair.py and wear.py (hair, facial hair, skin marks,
accessories, body), draw.py (``draw_face`` into any canvas), background.py and nuisance.py (the
crop around it), this module (crops and the generator).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from datamodules.synth.background import draw_background
from datamodules.synth.draw import draw_face
from datamodules.synth.identity import (
    ATTRIBUTE_INDEX, CELEBA_POSITIVE_RATES, IdentityParams, image_rng, sample_expression, sample_identity,
)
from datamodules.synth.nuisance import Nuisance, add_noise, gaussian_blur, jpeg_roundtrip, occlude, relight

__all__ = ["IdentityParams", "Nuisance", "sample_identity", "draw_face", "render_face", "generate_faces", "face_key",
           "CELEBA_POSITIVE_RATES"]

BLURRY_RATE = CELEBA_POSITIVE_RATES[ATTRIBUTE_INDEX["Blurry"]]
FACE_HEIGHT = (0.55, 0.61)  # face (skull top to chin) height as a fraction of the crop, at difficulty 0
FACE_CENTRE_Y = 0.46
COORDINATE_DECIMALS = 3  # annotation coordinates to 1/1000 px, far finer than OpenCV draws (1/16 px)


def render_face(params: IdentityParams, rng: np.random.Generator, size: int = 112, difficulty: float = 0.5,
                nuisance: Nuisance | None = None) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 RGB face crop of ``params`` and its annotation (identity, box,
    landmarks, attributes, width, height), with per-image nuisance scaled by ``difficulty`` (or set
    kind by kind with ``nuisance``)."""
    n = nuisance if nuisance is not None else Nuisance.at(difficulty)
    unit = size / 112.0  # blur is specified at 112 px
    image = draw_background(rng, size, n.clutter)
    expression = sample_expression(rng, n.expression)
    face_px = size * rng.uniform(*FACE_HEIGHT) * np.exp(rng.uniform(-1, 1) * 0.18 * n.pose)
    centre = (size * (0.5 + rng.uniform(-1, 1) * 0.07 * n.pose),
              size * (FACE_CENTRE_Y + rng.uniform(-1, 1) * 0.07 * n.pose))
    roll = rng.uniform(-1, 1) * 20.0 * n.pose
    yaw = rng.uniform(-1, 1) * 36.0 * n.pose
    face = draw_face(image, params, rng, centre, face_px, roll, yaw, expression)
    occlude(image, rng, face["box"], n.occlusion)
    image = relight(image, rng, n.lighting)
    blurry = bool(rng.uniform() < BLURRY_RATE)
    if blurry:  # Blurry images stay blurry at every difficulty; others stay below its lowest sigma
        sigma = rng.uniform(1.5, 2.5) * unit
    else:
        sigma = rng.uniform(0.2, 0.9) * n.blur * unit if rng.uniform() < 0.5 else 0.0
    image = gaussian_blur(image, sigma)
    image = add_noise(image, rng, rng.uniform(0, 10.0 * n.noise))
    if n.jpeg > 0:
        image = jpeg_roundtrip(image, int(round(95 - rng.uniform(0, 70.0 * n.jpeg))))
    attributes = face["attributes"]
    attributes[ATTRIBUTE_INDEX["Blurry"]] = int(blurry)
    annotation = {
        "identity": params.identity,
        "box": np.round(face["box"], COORDINATE_DECIMALS).tolist(),
        "landmarks": np.round(face["landmarks"], COORDINATE_DECIMALS).tolist(),
        "attributes": attributes,
        "width": size,
        "height": size,
    }
    return image, annotation


def face_key(identity: int, index: int) -> str:
    return f"id{identity:07d}_{index:04d}"


def generate_faces(identities: int, per_identity: int, size: int = 112, seed: int = 0, difficulty: float = 0.5,
                   first_identity: int = 0, nuisance: Nuisance | None = None
                   ) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield (key, image, annotation) for identities first_identity .. first_identity + identities - 1,
    ``per_identity`` images each, grouped by identity."""
    for identity in range(first_identity, first_identity + identities):
        params = sample_identity(identity, seed)
        for index in range(per_identity):
            image, annotation = render_face(params, image_rng(identity, index, seed), size, difficulty, nuisance)
            yield face_key(identity, index), image, annotation
