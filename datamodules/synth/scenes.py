"""Synthetic detection scenes: whole images with 0 to ~15 faces, every face annotated with its box,
5 landmarks, WIDER FACE's flags and an easy / medium / hard setting (the detector's default data).

    for key, image, annotation in generate_scenes(100, seed=0, width=(640, 640), height=(480, 480)):
        ...

How a scene is made (``render_scene``), from three random streams split off the scene's RNG
(background, faces, finish), so the same scene without its faces (``faces=False``) is the exact
plate the faces were drawn on:
1. background: a textured colour field with clutter (stripes, tiles, letters, shapes) and face-like
   distractors that are not faces (clutter.py);
2. faces: a count (none in ``empty_rate`` of the scenes), a size scale for the scene and a size per
   face within ``face_height`` pixels, positions that mostly do not overlap (``overlap_rate`` of
   the faces may overlap up to half their predicted box, ``truncation_rate`` may cross the image
   border); drawn small to large (far to near, as in a photo) with ``draw_face``, each with its own
   identity (``sample_identity``), body, yaw, roll and expression, then maybe an occluder, a light
   gain on its pixels and a blur of its pixels;
3. finish: the whole image relit (nuisance.relight), maybe blurred, and noised.

Every face's WIDER flags are set from what was drawn:
  blur          effective Gaussian sigma (the face's own and the image's, combined) over the box
                height: < BLUR_NORMAL clear (0), < BLUR_HEAVY normal (1), else heavy (2)
  expression    exaggerated (1) when the mouth opens >= 0.85 or the brows rise >= 0.8
  illumination  extreme (1) when the face's pixels were scaled by a gain outside EXTREME_GAIN
  occlusion     the hidden share of the face: of the ellipse inscribed in its (unclipped) box, the part
                outside the image or painted over by an occluder or a later face; < 5 % none (0),
                < 35 % partial (1), else heavy (2)
  pose          atypical (1) when |yaw| >= 30 or |roll| >= 25 degrees
  invalid       (1) when the hidden share is >= ``invalid_hidden``, the box is shorter than
                ``invalid_below`` pixels, or two of heavy blur, heavy occlusion and extreme illumination
                meet (too little of a face is left to find)
Boxes are the head outline's (skull top to chin, cheek to cheek) clipped to the image; the 5 points
(``layouts.derive_landmarks``) are null when one of them falls outside the clipped box. The setting
of each face follows ``datamodules.face_settings`` (size, occlusion, blur, pose; invalid = ignored).

Every scene's RNG derives from (seed, index) alone, so any subset regenerates identically and
generation splits freely across processes.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np

from datamodules.face_settings import face_setting
from datamodules.layouts import FIVE, derive_landmarks
from datamodules.schema import WIDER_FLAGS
from datamodules.synth.clutter import draw_distractor, scene_background
from datamodules.synth.draw import draw_face
from datamodules.synth.identity import sample_expression, sample_identity
from datamodules.synth.nuisance import add_noise, gaussian_blur, relight
from datamodules.synth.scene_paint import blur_face, draw_occluder, ellipse_pixels, light, paint_tracked, roi

SCENE_STREAM = 3  # SeedSequence stream of scenes (identity.py uses 1 and 2)
COORDINATE_DECIMALS = 3
BLUR_NORMAL, BLUR_HEAVY = 0.015, 0.04  # sigma / box height
EXTREME_GAIN = (0.45, 1.8)  # light gains inside this range are normal illumination
OCCLUSION_PARTIAL, OCCLUSION_HEAVY = 0.05, 0.35  # hidden share of the face
ATYPICAL_YAW, ATYPICAL_ROLL = 30.0, 25.0
EXAGGERATED_MOUTH, EXAGGERATED_BROW = 0.85, 0.8
# the box a face of height h centred at (cx, cy) gets, at most, for placement: the outline is about
# 0.75 h wide at roll 0 and grows with roll
HALF_WIDTH, HALF_HEIGHT = 0.45, 0.55
OCCLUDER = -2  # owner code of occluder pixels; -1 = background


@dataclass(frozen=True)
class SceneSpec:
    """What scenes look like. Ranges are (low, high) and drawn uniformly per scene or per face."""

    width: tuple[int, int] = (320, 640)
    height: tuple[int, int] = (240, 480)
    max_faces: int = 15
    face_height: tuple[float, float] = (10.0, 300.0)  # box height in pixels
    empty_rate: float = 0.05  # scenes without a face
    distractors: int = 6  # up to this many face-like non-faces
    clutter: float = 0.7  # background clutter in [0, 1]
    overlap_rate: float = 0.15  # faces allowed to overlap others
    truncation_rate: float = 0.08  # faces allowed to cross the image border
    occlusion_rate: float = 0.25  # faces with an occluder
    blur_rate: float = 0.3  # faces blurred on their own
    image_blur_rate: float = 0.25  # scenes blurred as a whole
    extreme_light_rate: float = 0.08  # faces with an extreme light gain
    max_yaw: float = 45.0  # draw_face stays faithful to about 45 degrees
    max_roll: float = 35.0
    lighting: float = 0.5  # whole-image relighting strength (nuisance.relight)
    noise: float = 0.5  # sensor noise up to 8 * noise grey levels
    identities: int = 100_000  # faces draw their identity from [0, identities)
    invalid_below: float = 12.0  # boxes shorter than this are invalid
    invalid_hidden: float = 0.6  # faces hidden at least this much are invalid

    def __post_init__(self):
        for name in ("width", "height", "face_height"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"scene spec {name}: expected 0 < low <= high, got {(low, high)}")
        if self.max_faces < 0:
            raise ValueError(f"scene spec max_faces: expected >= 0, got {self.max_faces}")


def scene_spec(**spec) -> SceneSpec:
    """A SceneSpec from keyword arguments, naming any unknown key."""
    known = {f.name for f in fields(SceneSpec)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise TypeError(f"unknown scene parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SceneSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), SCENE_STREAM]))


def scene_key(index: int) -> str:
    return f"scene{index:08d}"


# --- layout ---------------------------------------------------------------------------------------------------

def _face_heights(rng: np.random.Generator, spec: SceneSpec, width: int, height: int, count: int) -> np.ndarray:
    """Box heights: a log-uniform scale for the scene, each face log-uniform within 0.67 to 1.5
    times it, all within ``face_height`` and small enough for ``count`` faces with their bodies to
    fit."""
    low, high = spec.face_height
    room = math.sqrt(0.5 * width * height / count) / 1.4
    top = max(low, min(high, 0.85 * height, room))
    scale = math.exp(rng.uniform(math.log(low), math.log(top)))
    return np.exp(rng.uniform(math.log(max(low, scale / 1.5)), math.log(min(top, scale * 1.5)), count))


def _predicted_box(cx: float, cy: float, h: float) -> np.ndarray:
    return np.array([cx - HALF_WIDTH * h, cy - HALF_HEIGHT * h, cx + HALF_WIDTH * h, cy + HALF_HEIGHT * h])


def _overlap_of_smaller(box: np.ndarray, others: np.ndarray) -> float:
    """The largest intersection of ``box`` with one of ``others``, over the smaller box's area."""
    if not len(others):
        return 0.0
    inter_w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float(np.max(inter_w * inter_h / np.minimum(area, areas)))


def _body_box(cx: float, cy: float, h: float) -> np.ndarray:
    """Where a face's neck and shoulders go (draw_face's body), roughly."""
    return np.array([cx - 1.5 * h, cy + 0.6 * h, cx + 1.5 * h, cy + 2.9 * h])


def _place(rng: np.random.Generator, spec: SceneSpec, width: int, height: int,
           heights: np.ndarray) -> list[tuple[float, float, float]]:
    """(cx, cy, h) of the faces that found a place within 30 tries each, largest placed first: a
    face's predicted box may not overlap the boxes placed before it, nor their bodies (drawn over
    it, as they are nearer), except for the ``overlap_rate`` of faces allowed half of their box."""
    placed, boxes = [], np.zeros((0, 4))
    for h in sorted(heights, reverse=True):
        limit = 0.5 if rng.uniform() < spec.overlap_rate else 0.0
        crossing = rng.uniform() < spec.truncation_rate
        for _ in range(30):
            if crossing:
                cx, cy = rng.uniform(-0.3 * h, width + 0.3 * h), rng.uniform(-0.3 * h, height + 0.3 * h)
            else:
                mx, my = min(HALF_WIDTH * h, width / 2), min(HALF_HEIGHT * h, height / 2)
                cx, cy = rng.uniform(mx, width - mx), rng.uniform(my, height - my)
            box = _predicted_box(cx, cy, h)
            if _overlap_of_smaller(box, boxes) <= limit:
                placed.append((cx, cy, float(h)))
                boxes = np.vstack([boxes, box, _body_box(cx, cy, h)])
                break
    return placed


# --- one face -------------------------------------------------------------------------------------------------

@dataclass
class _Face:
    code: int
    height: float
    box: np.ndarray  # unclipped outline box
    landmarks: np.ndarray  # (5, 2)
    yaw: float
    roll: float
    exaggerated: bool
    gain: float
    sigma: float
    ellipse_in: np.ndarray | None = None  # the inscribed ellipse's pixels inside the image, drawn by the face
    rows: slice | None = None
    cols: slice | None = None
    ellipse_share_inside: float = 1.0


def _draw_one_face(canvas, owner, rng, spec: SceneSpec, seed: int, code: int, cx: float, cy: float,
                   h: float) -> _Face:
    height, width = canvas.shape[:2]
    params = sample_identity(int(rng.integers(spec.identities)), seed)
    yaw = float(np.clip(rng.normal(0, 18), -spec.max_yaw, spec.max_yaw))
    roll = float(np.clip(rng.normal(0, 10), -spec.max_roll, spec.max_roll))
    expression = sample_expression(rng, 0.8)
    # what draw_face paints, head and body, lies within x +-2.5 h and y -0.8 h .. +2.9 h of the centre
    rows = slice(max(0, int(cy - 0.8 * h)), max(0, min(height, int(math.ceil(cy + 2.9 * h)))))
    cols = slice(max(0, int(cx - 2.5 * h)), max(0, min(width, int(math.ceil(cx + 2.5 * h)))))
    drawn = {}

    def paint():
        drawn.update(draw_face(canvas, params, rng, (cx, cy), h, roll, yaw, expression))

    paint_tracked(canvas, owner, rows, cols, code, paint)
    face_box = np.asarray(drawn["box"], dtype=np.float64)
    points = derive_landmarks(drawn["landmarks"], FIVE)
    er, ec, ellipse, share = ellipse_pixels(face_box, width, height)
    # the ellipse pixels the face itself painted (its outline rarely fills the ellipse's every pixel)
    mine = ellipse & (owner[er, ec] == code)
    if rng.uniform() < spec.occlusion_rate:
        orows, ocols = roi(face_box, face_box[3] - face_box[1] + 1, width, height)  # occluders reach a box beyond it
        paint_tracked(canvas, owner, orows, ocols, OCCLUDER, lambda: draw_occluder(canvas, rng, face_box))
    if rng.uniform() < spec.extreme_light_rate:
        gain = float(rng.uniform(0.2, 0.4) if rng.uniform() < 0.5 else rng.uniform(1.9, 2.6))
    else:
        gain = float(rng.uniform(0.8, 1.2))
    mask = owner[rows, cols] == code
    light(canvas, mask, rows, cols, gain)
    sigma = 0.0
    if rng.uniform() < spec.blur_rate:
        sigma = float(h * math.exp(rng.uniform(math.log(0.006), math.log(0.08))))
        blur_face(canvas, owner, code, rows, cols, sigma)
    exaggerated = expression.mouth_open >= EXAGGERATED_MOUTH or expression.brow_raise >= EXAGGERATED_BROW
    return _Face(code, float(face_box[3] - face_box[1]), face_box, points, yaw, roll, bool(exaggerated), gain, sigma,
                 mine, er, ec, share)


def _flags(face: _Face, owner: np.ndarray, image_sigma: float, clipped_height: float, spec: SceneSpec) -> list[int]:
    painted = int(face.ellipse_in.sum())
    visible = int((face.ellipse_in & (owner[face.rows, face.cols] == face.code)).sum())
    hidden = 1.0 - (visible / painted if painted else 0.0) * face.ellipse_share_inside
    blur_ratio = math.hypot(face.sigma, image_sigma) / max(clipped_height, 1e-6)
    values = {
        "blur": 0 if blur_ratio < BLUR_NORMAL else (1 if blur_ratio < BLUR_HEAVY else 2),
        "expression": int(face.exaggerated),
        "illumination": int(not EXTREME_GAIN[0] <= face.gain <= EXTREME_GAIN[1]),
        "occlusion": 0 if hidden < OCCLUSION_PARTIAL else (1 if hidden < OCCLUSION_HEAVY else 2),
        "pose": int(abs(face.yaw) >= ATYPICAL_YAW or abs(face.roll) >= ATYPICAL_ROLL),
    }
    severe = (values["blur"] == 2) + (values["occlusion"] == 2) + values["illumination"]
    values["invalid"] = int(hidden >= spec.invalid_hidden or clipped_height < spec.invalid_below or severe >= 2)
    return [values[name] for name in WIDER_FLAGS]


# --- the scene ------------------------------------------------------------------------------------------------

def render_scene(rng: np.random.Generator, spec: SceneSpec | None = None, seed: int = 0,
                 faces: bool = True) -> tuple[np.ndarray, dict]:
    """One scene: an (H, W, 3) uint8 RGB image and its annotation (boxes, face_landmarks,
    face_flags, face_setting, width, height). ``seed`` selects the identity population
    (``sample_identity(i, seed)``). ``faces=False`` renders the same scene without its faces."""
    spec = spec or SceneSpec()
    background_rng, faces_rng, finish_rng = rng.spawn(3)
    width = int(background_rng.integers(spec.width[0], spec.width[1] + 1))
    height = int(background_rng.integers(spec.height[0], spec.height[1] + 1))
    image = scene_background(background_rng, width, height, spec.clutter)
    low, high = spec.face_height
    for _ in range(int(background_rng.integers(0, spec.distractors + 1))):
        size = math.exp(background_rng.uniform(math.log(low), math.log(min(high, 0.8 * height))))
        centre = (background_rng.uniform(0, width), background_rng.uniform(0, height))
        draw_distractor(image, background_rng, centre, size)

    drawn: list[_Face] = []
    owner = np.full((height, width), -1, dtype=np.int16)
    count = 0 if faces_rng.uniform() < spec.empty_rate else int(faces_rng.integers(1, spec.max_faces + 1)) \
        if spec.max_faces else 0
    # a scene is mostly a few faces, sometimes a group or a crowd
    if count > 3 and faces_rng.uniform() < 0.5:
        count = int(faces_rng.integers(1, 4))
    if faces and count:
        heights = _face_heights(faces_rng, spec, width, height, count)
        placed = _place(faces_rng, spec, width, height, heights)
        for code, (cx, cy, h) in enumerate(sorted(placed, key=lambda p: p[2])):  # far (small) to near
            drawn.append(_draw_one_face(image, owner, faces_rng, spec, seed, code, cx, cy, h))

    image = relight(image, finish_rng, spec.lighting)
    image_sigma = float(finish_rng.uniform(0.3, 1.0)) if finish_rng.uniform() < spec.image_blur_rate else 0.0
    image = gaussian_blur(image, image_sigma)
    image = add_noise(image, finish_rng, finish_rng.uniform(0, 8.0 * spec.noise))

    boxes, points, flags, settings = [], [], [], []
    for face in drawn:
        box = face.box.copy()
        box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue  # a face (almost) wholly outside the image is not in it
        face_flags = _flags(face, owner, image_sigma, float(box[3] - box[1]), spec)
        inside = np.all((face.landmarks >= box[:2]) & (face.landmarks <= box[2:]))
        boxes.append(np.round(box, COORDINATE_DECIMALS).tolist())
        points.append(np.round(face.landmarks, COORDINATE_DECIMALS).tolist() if inside else None)
        flags.append(face_flags)
        settings.append(face_setting(float(box[3] - box[1]), face_flags))
    annotation = {"boxes": boxes, "face_landmarks": points, "face_flags": flags, "face_setting": settings,
                  "width": width, "height": height}
    return image, annotation


def generate_scenes(count: int, seed: int = 0, first_index: int = 0, **spec) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield (key, image, annotation) for scenes first_index .. first_index + count - 1; ``spec``
    holds SceneSpec fields (e.g. ``width=(640, 640), height=(480, 480), max_faces=15``)."""
    scene = scene_spec(**spec)
    for index in range(first_index, first_index + count):
        image, annotation = render_scene(scene_rng(seed, index), scene, seed)
        yield scene_key(index), image, annotation


def _render_block(args: tuple) -> list[tuple[str, bytes, dict]]:
    """Worker: render a block of scenes and JPEG-encode them (runs in a separate process)."""
    from datamodules.shards import encode_image  # noqa: PLC0415 (worker-side)

    first, count, seed, spec = args
    return [(key, encode_image(image, "jpg", 95), annotation)
            for key, image, annotation in generate_scenes(count, seed, first, **spec)]


def write_scene_split(root: str | Path, split: str, count: int, seed: int = 0, first_index: int = 0,
                      workers: int | None = None, shard_size: int = 500, progress: bool = True, bar=None,
                      **spec) -> Path:
    """Render scenes first_index .. first_index + count - 1 into shards ``root/split`` (in
    ``workers`` processes, blocks of 16 scenes, written in index order). Returns the index path.
    ``bar``: a tqdm bar to advance instead of one of its own."""
    from tqdm import tqdm  # noqa: PLC0415

    from datamodules.shards import INDEX_NAME, ShardWriter  # noqa: PLC0415

    scene_spec(**spec)  # unknown keys fail here, not in a worker
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    block = 16
    jobs = [(first_index + start, min(block, count - start), seed, spec) for start in range(0, count, block)]
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=count, desc=f"rendering scenes into {Path(root) / split}", unit="scene", disable=not progress)
    with ShardWriter(root, split, max_samples=shard_size) as writer:
        if workers == 1:
            results = map(_render_block, jobs)
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_render_block, jobs)
        try:
            for samples in results:
                for key, data, annotation in samples:
                    writer.write(key, data, annotation)
                bar.update(len(samples))
        finally:
            if workers != 1:
                pool.shutdown(cancel_futures=True)
    if own_bar:
        bar.close()
    return Path(root) / split / INDEX_NAME
