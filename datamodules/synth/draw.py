"""Draw one synthetic face into an existing canvas and return its exact annotation.

``draw_face`` builds the canonical shapes (geometry.py, hair.py, wear.py), projects them all with one
pose, and fills them back to front with anti-aliased OpenCV polygons at 1/16 pixel precision. It
draws into any canvas, so a scene with several faces (detection) or a body (pose) reuses it.
"""
from __future__ import annotations

import numpy as np
import cv2

from datamodules.layouts import CELEBA_ATTRIBUTES
from datamodules.synth.geometry import FaceGeometry, Pose, project
from datamodules.synth.hair import add_ears, add_facial_hair, add_hair, add_skin_marks
from datamodules.synth.identity import ATTRIBUTE_INDEX, NEUTRAL, Expression, IdentityParams
from datamodules.synth.wear import add_earrings, add_glasses, add_hat, body_parts

SHIFT = 4  # fixed-point bits of OpenCV drawing coordinates (1/16 pixel)
ONE = 1 << SHIFT
BODY_YAW_FACTOR = 0.3
AA = cv2.LINE_AA
MOUTH_INSIDE = (62, 22, 28)
TEETH = (236, 232, 222)
PUPIL = (16, 12, 12)
GLINT = (250, 250, 250)


def shade(colour, k: float):
    return tuple(min(255.0, c * k) for c in colour)


def mix(a, b, t: float):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _flatten(parts: dict) -> tuple[np.ndarray, dict]:
    """Stack every part's points into one array; remember each part's rows."""
    arrays, index, start = [], {}, 0
    for name, value in parts.items():
        items = value if isinstance(value, list) else [value]
        spans = []
        for arr in items:
            arrays.append(arr)
            spans.append((start, start + len(arr)))
            start += len(arr)
        index[name] = (isinstance(value, list), spans)
    return (np.concatenate(arrays) if arrays else np.zeros((0, 3))), index


class _Painter:
    """Fills and strokes projected parts in fixed-point pixel coordinates."""

    def __init__(self, canvas: np.ndarray, fixed: np.ndarray, index: dict, scale: float):
        self.canvas, self.fixed, self.index, self.scale = canvas, fixed, index, scale

    def polys(self, name: str) -> list[np.ndarray]:
        if name not in self.index:
            return []
        return [self.fixed[a:b] for a, b in self.index[name][1]]

    def fill(self, name: str, colour) -> None:
        polys = self.polys(name)
        if polys:
            cv2.fillPoly(self.canvas, polys, colour, AA, SHIFT)

    def line(self, name: str, colour, width: float, closed: bool = False) -> None:
        polys = self.polys(name)
        if polys:
            thickness = max(1, int(round(width * self.scale)))
            cv2.polylines(self.canvas, polys, closed, colour, thickness, AA, SHIFT)


def build_geometry(params: IdentityParams, expression: Expression, yaw_deg: float) -> FaceGeometry:
    fg = FaceGeometry(params, expression, yaw_deg)
    add_hair(fg)
    add_ears(fg)
    add_facial_hair(fg)
    add_skin_marks(fg)
    add_glasses(fg)
    add_hat(fg)
    add_earrings(fg)
    return fg


def draw_face(canvas: np.ndarray, params: IdentityParams, rng: np.random.Generator, center_xy: tuple[float, float],
              face_height_px: float, roll_deg: float = 0.0, yaw: float = 0.0,
              expression: Expression = NEUTRAL, body: bool = True) -> dict:
    """Draw ``params``'s face (and neck, shoulders when ``body``) into ``canvas`` (uint8 RGB, modified
    in place). ``center_xy`` is the pixel of the canonical face centre, ``face_height_px`` the skull-top
    to chin height, ``yaw`` in degrees (positive turns towards the image right), ``roll_deg``
    clockwise on screen. ``rng`` draws per-image details (clothes). Returns ``box`` [x0, y0, x1, y1]
    (head outline, ears and hair excluded), ``landmarks`` (98, 2) WFLW in canvas pixels and
    ``attributes`` (40 flags, Smiling and Mouth_Slightly_Open from ``expression``, Blurry 0)."""
    p = params
    pose = Pose(float(center_xy[0]), float(center_xy[1]), float(face_height_px), float(roll_deg), float(yaw))
    fg = build_geometry(p, expression, yaw)
    head_pts, head_index = _flatten(fg.parts)
    n_head = len(head_pts)
    body_geo = body_parts(fg, rng) if body else {}
    body_pts, body_index = _flatten(body_geo)
    pixels = project(np.concatenate([head_pts, fg.landmarks]), pose)
    landmarks = pixels[n_head:]
    fixed = np.round(pixels[:n_head] * ONE).astype(np.int32)
    S = pose.scale
    paint = _Painter(canvas, fixed, head_index, S)

    skin = p.skin
    hair = p.hair_colour
    if body:
        body_fixed = np.round(project(body_pts, pose, BODY_YAW_FACTOR) * ONE).astype(np.int32)
        bp = _Painter(canvas, body_fixed, body_index, S)
        clothes = tuple(float(c) for c in rng.uniform(15, 240, 3))
        bp.fill("neck", shade(skin, 0.86))
        bp.fill("clothes", clothes)
        bp.fill("shirt", tuple(float(c) for c in rng.uniform(200, 250, 3)))
        bp.fill("collar", (245.0, 245.0, 245.0))
        if p.necktie is not None:
            bp.fill("tie", p.necktie)
        if p.necklace is not None:
            bp.line("necklace", p.necklace, 0.014)
    paint.fill("hair_back", shade(hair, 0.9))
    paint.fill("left_ear", shade(skin, 0.94))
    paint.fill("right_ear", shade(skin, 0.94))
    paint.fill("left_ear_inner", shade(skin, 0.78))
    paint.fill("right_ear_inner", shade(skin, 0.78))
    paint.fill("outline", skin)
    paint.line("double_chin", shade(skin, 0.8), 0.01)

    _draw_eyes(paint, p)
    if p.stubble:
        paint.fill("stubble", mix(skin, p.facial_hair_colour, 0.3))
    for side in ("left", "right"):
        paint.fill(f"{side}_cheekbone", mix(skin, (255, 250, 245), 0.14))
        paint.fill(f"{side}_blush", mix(skin, (225, 80, 100), 0.3 if p.rosy_cheeks else 0.15))
        paint.line(f"{side}_fold", shade(skin, 0.8), 0.01)
    paint.line("forehead_lines", shade(skin, 0.84), 0.008)
    paint.fill("moles", mix(skin, (60, 38, 30), 0.75))
    paint.line("scar", mix(skin, (235, 170, 165), 0.6), 0.009)
    for side in ("left", "right"):
        paint.fill(f"{side}_brow", p.brow_colour)
    facial = p.facial_hair_colour
    paint.fill("beard", facial)
    paint.fill("goatee", facial)
    paint.fill("left_sideburn", facial)
    paint.fill("right_sideburn", facial)
    _draw_nose(paint, skin)
    paint.fill("mustache", facial)
    _draw_mouth(paint, p, expression)
    paint.fill("hair_cap", hair)
    paint.line("hair_strands", mix(hair, (0, 0, 0), 0.3) if sum(hair) > 240 else mix(hair, (255, 255, 255), 0.15),
               0.008)
    paint.fill("scalp_shine", mix(skin, (255, 255, 255), 0.22))
    if p.glasses is not None:
        _, _, frame, thickness, sunglasses = p.glasses
        if sunglasses:
            paint.fill("lenses", mix(frame, (10, 10, 14), 0.8))
        paint.line("lenses", frame, thickness, closed=True)
        paint.line("glasses_bridge", frame, thickness)
        paint.line("glasses_temples", frame, thickness)
    if p.hat is not None:
        colour = p.hat[1]
        paint.fill("hat", colour)
        paint.fill("hat_band", shade(colour, 0.72))
        paint.fill("hat_ribbon", shade(colour, 0.35))
    if p.earrings is not None:
        if p.earrings[0] == "hoop":
            paint.line("earrings", p.earrings[1], 0.008, closed=True)
        else:
            paint.fill("earrings", p.earrings[1])

    outline = pixels[head_index["outline"][1][0][0]:head_index["outline"][1][0][1]]
    box = [float(outline[:, 0].min()), float(outline[:, 1].min()), float(outline[:, 0].max()), float(outline[:, 1].max())]
    attributes = list(p.attributes)
    attributes[ATTRIBUTE_INDEX["Smiling"]] = int(expression.smiling)
    attributes[ATTRIBUTE_INDEX["Mouth_Slightly_Open"]] = int(expression.open_flag)
    assert len(attributes) == len(CELEBA_ATTRIBUTES)
    return {"box": box, "landmarks": landmarks, "attributes": attributes}


def _draw_eyes(paint: _Painter, p: IdentityParams) -> None:
    skin = p.skin
    lash = mix(p.brow_colour, (0, 0, 0), 0.5)
    for side in ("left", "right"):
        paint.fill(f"{side}_eye", p.sclera)
        paint.fill(f"{side}_iris", p.iris)
        paint.fill(f"{side}_pupil", PUPIL)
        paint.fill(f"{side}_glint", GLINT)
        paint.fill(f"{side}_mask_upper", skin)
        paint.fill(f"{side}_mask_lower", skin)
        if p.heavy_makeup:
            paint.fill(f"{side}_shadow", mix(skin, p.eyeshadow, 0.6))
        paint.line(f"{side}_lid_upper", lash, 0.02 if p.heavy_makeup else 0.012)
        paint.line(f"{side}_lid_lower", shade(skin, 0.75), 0.006)
        if p.bags_under_eyes:
            paint.line(f"{side}_bag", shade(skin, 0.76), 0.01)


def _draw_nose(paint: _Painter, skin) -> None:
    paint.fill("nose_tip", mix(skin, (255, 255, 255), 0.12))
    paint.line("nose_bridge", shade(skin, 0.84), 0.008)
    for side in ("left", "right"):
        paint.line(f"{side}_ala", shade(skin, 0.76), 0.009)
        paint.fill(f"{side}_nostril", shade(skin, 0.42))
    paint.line("nose_bottom", shade(skin, 0.74), 0.009)


def _draw_mouth(paint: _Painter, p: IdentityParams, expression: Expression) -> None:
    paint.fill("lips", p.lip_colour)
    if expression.mouth_open > 0:
        paint.fill("mouth_inside", MOUTH_INSIDE)
        paint.fill("teeth", TEETH)
    paint.line("lip_line", shade(p.lip_colour, 0.55), 0.008)
