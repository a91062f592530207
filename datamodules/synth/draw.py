"""Draw one synthetic face into an existing canvas and return its exact annotation.

``draw_face`` builds the canonical shapes (geometry.py, hair.py, wear.py), projects them all with one
pose, and fills them back to front with anti-aliased OpenCV polygons at 1/16 pixel precision. It
draws into any canvas, so a scene with several faces (detection) or a body (pose) reuses it.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from datamodules.synth.geometry import FaceGeometry, ShapeTemplate
from datamodules.synth.head import Pose, project
from datamodules.synth.hair import add_ears, add_facial_hair, add_folds, add_hair, add_hair_back, add_skin_marks
from datamodules.synth.identity import ATTRIBUTE_INDEX, NEUTRAL, Expression, IdentityParams
from datamodules.synth.wear import add_body, add_earrings, add_glasses, add_hat

SHIFT = 4  # fixed-point bits of OpenCV drawing coordinates (1/16 pixel)
ONE = 1 << SHIFT
DENSE_SCALE = 150.0  # face heights in pixels from which polygons are drawn through all their vertices
# densely sampled smooth closed shapes, drawn through every other vertex on small faces
SMOOTH_PARTS = frozenset({"outline", "hair_cap", "eyes", "irises", "eye_masks", "eye_shadows", "brows", "lips",
                          "mouth_inside", "teeth", "ears", "lenses"})
AA = cv2.LINE_AA
MOUTH_INSIDE = (62, 22, 28)
TEETH = (236, 232, 222)
PUPIL = (16, 12, 12)
GLINT = (250, 250, 250)


def shade(colour, k: float):
    return tuple(min(255.0, c * k) for c in colour)


def mix(a, b, t: float):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _paint(canvas: np.ndarray, fixed: np.ndarray, parts: dict, program, scale: float) -> None:
    """Run a paint program: fill or stroke each named part (all its polygons in one OpenCV call).
    On faces under DENSE_SCALE pixels the SMOOTH_PARTS are drawn through every other vertex:
    anti-aliased drawing costs about a microsecond per edge, and the dropped chords are far below a
    pixel at that size (all eye and lip landmark vertices sit on even rows and are kept)."""
    dense = scale >= DENSE_SCALE
    for name, colour, width, closed in program:
        spans = parts.get(name)
        if not spans:
            continue
        if dense or name not in SMOOTH_PARTS:
            polys = [fixed[a:b] for a, b in spans]
        else:
            polys = [np.ascontiguousarray(fixed[a:b:2]) for a, b in spans]
        if width is None:
            cv2.fillPoly(canvas, polys, colour, AA, SHIFT)
        else:
            cv2.polylines(canvas, polys, closed, colour, max(1, int(round(width * scale))), AA, SHIFT)


@lru_cache(maxsize=256)
def paint_program(p: IdentityParams) -> tuple:
    """Back-to-front drawing order of the face parts with their colours: (part, RGB, line width in
    face heights or None to fill, closed)."""
    skin, hair, facial = p.skin, p.hair_colour, p.facial_hair_colour
    lash = mix(p.brow_colour, (0, 0, 0), 0.5)
    fill = None
    program = [
        ("hair_back", shade(hair, 0.9), fill), ("ears", shade(skin, 0.94), fill),
        ("ears_inner", shade(skin, 0.78), fill), ("outline", skin, fill), ("double_chin", shade(skin, 0.8), 0.01),
        # eyes: white, iris, pupil, glint, then skin over the iris outside the lids, then lids
        ("eyes", p.sclera, fill), ("irises", p.iris, fill), ("pupils", PUPIL, fill), ("glints", GLINT, fill),
        ("eye_masks", skin, fill), ("eye_shadows", mix(skin, p.eyeshadow, 0.6), fill),
        ("lids_upper", lash, 0.02 if p.heavy_makeup else 0.012), ("lids_lower", shade(skin, 0.75), 0.006),
        ("bags", shade(skin, 0.76), 0.01),
        ("stubble", mix(skin, facial, 0.3), fill), ("cheekbones", mix(skin, (255, 250, 245), 0.14), fill),
        ("blush", mix(skin, (225, 80, 100), 0.3 if p.rosy_cheeks else 0.15), fill),
        ("folds", shade(skin, 0.8), 0.01), ("forehead_lines", shade(skin, 0.84), 0.008),
        ("moles", mix(skin, (60, 38, 30), 0.75), fill), ("scar", mix(skin, (235, 170, 165), 0.6), 0.009),
        ("brows", p.brow_colour, fill),
        ("beard", facial, fill), ("goatee", facial, fill), ("sideburns", facial, fill),
        ("nose_tip", mix(skin, (255, 255, 255), 0.12), fill), ("nose_bridge", shade(skin, 0.84), 0.008),
        ("alae", shade(skin, 0.76), 0.009), ("nostrils", shade(skin, 0.42), fill),
        ("nose_bottom", shade(skin, 0.74), 0.009), ("mustache", facial, fill),
        ("lips", p.lip_colour, fill), ("mouth_inside", MOUTH_INSIDE, fill), ("teeth", TEETH, fill),
        ("lip_line", shade(p.lip_colour, 0.55), 0.005),
        ("hair_cap", hair, fill),
        ("hair_strands", mix(hair, (0, 0, 0), 0.3) if sum(hair) > 240 else mix(hair, (255, 255, 255), 0.15), 0.008),
        ("scalp_shine", mix(skin, (255, 255, 255), 0.22), fill),
    ]
    if p.glasses is not None:
        frame, thickness, sunglasses = p.glasses[2], p.glasses[3], p.glasses[4]
        if sunglasses:
            program.append(("lenses", mix(frame, (10, 10, 14), 0.8), fill))
        program += [("lenses", frame, thickness, True), ("glasses_bridge", frame, thickness),
                    ("glasses_temples", frame, thickness)]
    if p.hat is not None:
        program += [("hat", p.hat[1], fill), ("hat_band", shade(p.hat[1], 0.72), fill),
                    ("hat_ribbon", shade(p.hat[1], 0.35), fill)]
    if p.earrings is not None:
        program.append(("earrings", p.earrings[1], 0.008, True) if p.earrings[0] == "hoop" else
                       ("earrings", p.earrings[1], fill))
    return tuple((step[0], tuple(float(c) for c in step[1]), step[2], len(step) > 3) for step in program)


@lru_cache(maxsize=256)
def identity_template(params: IdentityParams) -> ShapeTemplate:
    """The canonical shapes of ``params`` that no expression changes (body, outline and contour, nose,
    ears, hair, facial hair, skin marks, glasses, hat, earrings), built once per identity."""
    fg = FaceGeometry(params, NEUTRAL)
    add_body(fg)
    add_hair_back(fg)
    add_ears(fg)
    fg.add_outline()
    add_facial_hair(fg)
    add_skin_marks(fg)
    fg.add_nose()
    add_hair(fg)
    add_glasses(fg)
    add_hat(fg)
    add_earrings(fg)
    return fg.shapes.freeze()


def build_geometry(params: IdentityParams, expression: Expression) -> FaceGeometry:
    """All canonical shapes of one face: the identity's template plus eyes, brows, mouth and folds."""
    fg = FaceGeometry(params, expression, identity_template(params))
    fg.add_eyes()
    fg.add_brows()
    fg.add_mouth()
    add_folds(fg)
    return fg


def draw_face(canvas: np.ndarray, params: IdentityParams, rng: np.random.Generator, center_xy: tuple[float, float],
              face_height_px: float, roll_deg: float = 0.0, yaw: float = 0.0,
              expression: Expression = NEUTRAL, body: bool = True) -> dict:
    """Draw ``params``'s face (and neck, shoulders when ``body``) into ``canvas`` (uint8 RGB, modified
    in place). ``center_xy`` is the pixel of the canonical face centre, ``face_height_px`` the skull-top
    to chin height, ``yaw`` in degrees (positive turns towards the image right), ``roll_deg``
    clockwise on screen. ``rng`` draws per-image details (clothes). Coordinates in and out are
    continuous: pixel (i, j) covers [i, i + 1) x [j, j + 1). Returns ``box`` [x0, y0, x1, y1]
    (head outline: skull top to chin, cheek to cheek; ears and hair excluded), ``landmarks`` (98, 2)
    WFLW in canvas pixels, ``attributes`` (40 flags; Smiling and Mouth_Slightly_Open from
    ``expression``, Blurry 0), and the ``roll`` and ``yaw`` used."""
    p = params
    # OpenCV puts the centre of pixel (i, j) at (i, j); annotations use continuous coordinates where it is
    # at (i + 0.5, j + 0.5), so that a horizontal flip maps x to W - x.
    pose = Pose(float(center_xy[0]) - 0.5, float(center_xy[1]) - 0.5, float(face_height_px), float(roll_deg),
                float(yaw))
    fg = build_geometry(p, expression)
    sh = fg.shapes
    pixels = project(sh.resolve(yaw), pose)
    fixed = np.round(pixels * ONE).astype(np.int32)
    if body:  # clothes and shirt colours change from image to image
        clothes = tuple(float(c) for c in rng.uniform(15, 240, 3))
        shirt = tuple(float(c) for c in rng.uniform(200, 250, 3))
        body_program = (("neck", shade(p.skin, 0.86), None, False), ("clothes", clothes, None, False),
                        ("shirt", shirt, None, False), ("collar", (245.0, 245.0, 245.0), None, False),
                        ("tie", p.necktie, None, False), ("necklace", p.necklace, 0.022, False))
        _paint(canvas, fixed, sh.parts, body_program, pose.scale)
    _paint(canvas, fixed, sh.parts, paint_program(p), pose.scale)

    a, b = sh.parts["outline"][0]
    outline = pixels[a:b] + 0.5
    (x0, y0), (x1, y1) = outline.min(0), outline.max(0)
    box = [float(x0), float(y0), float(x1), float(y1)]
    attributes = list(p.attributes)
    attributes[ATTRIBUTE_INDEX["Smiling"]] = int(expression.smiling)
    attributes[ATTRIBUTE_INDEX["Mouth_Slightly_Open"]] = int(expression.open_flag)
    return {"box": box, "landmarks": pixels[sh.landmark_rows] + 0.5, "attributes": attributes,
            "roll": float(roll_deg), "yaw": float(yaw)}
