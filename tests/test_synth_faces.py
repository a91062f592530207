"""The synthetic face engine: determinism, annotation schema, landmarks on the drawn features, the
left/right convention, CelebA attribute rates and consistency, and what difficulty changes."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from datamodules.layouts import CELEBA_ATTRIBUTES, WFLW98
from datamodules.schema import check_key, validate_annotation
from datamodules.synth.draw import PUPIL, build_geometry, draw_face
from datamodules.synth.faces import face_key, generate_faces, render_face
from datamodules.synth.identity import (
    ATTRIBUTE_INDEX, CELEBA_POSITIVE_RATES, NEUTRAL, Expression, image_rng, sample_expression, sample_identity,
)

A = ATTRIBUTE_INDEX
BACKGROUND = (0.0, 0.0, 255.0)  # pure blue: no skin, hair or lip colour comes near it


def _plain(params):
    """The same person without anything that may cover the landmarks under test."""
    return dataclasses.replace(params, hair_style="short", hair_long=False, glasses=None, hat=None, beard="none",
                               mustache=False, stubble=False, sideburns=False, double_chin=False, earrings=None,
                               moles=(), scar=None, heavy_makeup=False, wrinkles=False, rosy_cheeks=False,
                               high_cheekbones=False)


def _draw_plain(params, expression=NEUTRAL, size=768, yaw=0.0, roll=0.0):
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = BACKGROUND
    ann = draw_face(canvas, params, np.random.default_rng(0), (size / 2, size / 2), 0.8 * size, roll, yaw,
                    expression, body=False)
    return canvas, ann


def _pixel(img, xy):
    """Colour of the pixel containing continuous point (x, y)."""
    return img[int(np.floor(xy[1])), int(np.floor(xy[0]))].astype(float)


def _close(a, b, tol):
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max()) <= tol


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_same_faces_other_seed_differs():
    first = list(generate_faces(3, 2, size=64, seed=5))
    again = list(generate_faces(3, 2, size=64, seed=5))
    other = list(generate_faces(3, 2, size=64, seed=6))
    assert first[0][0] == "id0000000_0000" and first[-1][0] == "id0000002_0001"
    assert [k for k, _, _ in first] == [face_key(i, j) for i in range(3) for j in range(2)]
    for (k1, im1, a1), (k2, im2, a2) in zip(first, again):
        assert k1 == k2 and np.array_equal(im1, im2) and a1 == a2
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    assert sample_identity(0, 5) != sample_identity(0, 6)


def test_identity_independent_of_order_and_of_how_many_are_generated():
    forward = [sample_identity(i, 3) for i in range(12)]
    backward = [sample_identity(i, 3) for i in reversed(range(12))][::-1]
    assert forward == backward
    big = {k: (im, a) for k, im, a in generate_faces(12, 2, size=48, seed=3)}
    for identity in (0, 7, 11):  # any subset regenerates identically, e.g. in another process
        for key, image, ann in generate_faces(1, 2, size=48, seed=3, first_identity=identity):
            assert np.array_equal(big[key][0], image) and big[key][1] == ann
    params = sample_identity(7, 3)
    image, ann = render_face(params, image_rng(7, 1, 3), size=48)
    assert np.array_equal(image, big[face_key(7, 1)][0])


# --- annotations ---------------------------------------------------------------------------------

def test_annotations_follow_the_schema_and_keys_have_no_dots():
    for key, image, ann in generate_faces(4, 3, size=112, seed=1, difficulty=1.0):
        check_key(key)
        assert "." not in key and key.startswith("id") and ann["identity"] == int(key[2:9])
        validate_annotation(ann, required=("identity", "box", "landmarks", "attributes", "width", "height"))
        assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        assert (ann["width"], ann["height"]) == (112, 112)
        assert len(ann["attributes"]) == len(CELEBA_ATTRIBUTES)


def test_every_landmark_comes_from_a_drawn_shape():
    for identity in range(5):
        for expression in (NEUTRAL, Expression(smile=1.0, mouth_open=1.0, smiling=True, open_flag=True)):
            shapes = build_geometry(sample_identity(identity, 0), expression).shapes
            assert shapes.landmark_set.all()
            assert len(set(shapes.landmark_rows.tolist())) == 98  # 98 distinct points


def test_landmarks_inside_image_and_box_and_in_anatomical_order():
    for _, image, ann in generate_faces(20, 3, size=112, seed=2, difficulty=1.0):
        pts = np.array(ann["landmarks"])
        x0, y0, x1, y1 = ann["box"]
        assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
        assert (pts >= 0).all() and (pts <= 112).all()
        # every landmark lies on the head, inside its outline box (1 px for anti-aliasing of the rim)
        assert (pts[:, 0] >= x0 - 1).all() and (pts[:, 0] <= x1 + 1).all()
        assert (pts[:, 1] >= y0 - 1).all() and (pts[:, 1] <= y1 + 1).all()
        assert 0.25 * 112 < y1 - y0 < 0.85 * 112
        # top to bottom along the face's own axis: brows, eyes, nose tip, mouth, chin
        up = np.array([pts[96] - pts[97]])[0]
        axis = np.array([-up[1], up[0]]) / np.linalg.norm(up) * -1  # image-down for an upright face
        depth = pts @ axis
        assert depth[35] < depth[96] < depth[54] < depth[79] < depth[85] < depth[16]


# --- landmarks on the drawn features -------------------------------------------------------------

@pytest.mark.parametrize("identity", [0, 1, 2, 3])
def test_landmarks_lie_on_the_drawn_features(identity):
    p = _plain(sample_identity(identity, 0))
    img, ann = _draw_plain(p)
    pts = ann["landmarks"]
    skin = np.array(p.skin)
    for pupil in (96, 97):
        assert _close(_pixel(img, pts[pupil]), PUPIL, 6), "pupil landmarks on the pupils"
    # inside each lip, between its outer and inner edge points (away from the dark line where they meet)
    for outer, inner in ((79, 90), (78, 89), (80, 91), (85, 94), (84, 93), (86, 95)):
        assert _close(_pixel(img, (pts[outer] + pts[inner]) / 2), p.lip_colour, 4), (outer, inner)
    # inside each brow, between its upper and lower edge points
    for upper, lower in ((35, 40), (36, 39), (44, 49), (45, 48)):
        assert _close(_pixel(img, (pts[upper] + pts[lower]) / 2), p.brow_colour, 4), (upper, lower)
    # eye corners sit where the lids meet: the lid line is darker than the skin around it
    for corner in (60, 64, 68, 72):
        assert _pixel(img, pts[corner]).sum() < skin.sum() - 20
    # the jaw contour is the face's edge: skin just inside, background just outside
    centre = pts[54]
    for k in range(6, 27):
        out = (pts[k] - centre) / np.linalg.norm(pts[k] - centre)
        assert _close(_pixel(img, pts[k] - 3 * out), skin, 3), k
        assert _close(_pixel(img, pts[k] + 3 * out), BACKGROUND, 3), k
    # nose bottom points lie on the darker nose-bottom line
    assert _pixel(img, pts[57]).sum() < skin.sum() - 20


def test_landmarks_follow_yaw_and_roll():
    p = _plain(sample_identity(4, 0))
    img, ann = _draw_plain(p, yaw=25.0, roll=-15.0)
    pts = ann["landmarks"]
    for pupil in (96, 97):
        assert _close(_pixel(img, pts[pupil]), PUPIL, 6)
    assert _close(_pixel(img, (pts[79] + pts[90]) / 2), p.lip_colour, 4)
    eye_line = pts[97] - pts[96]
    assert np.degrees(np.arctan2(eye_line[1], eye_line[0])) == pytest.approx(-15.0, abs=2.0)
    # turned towards the image right: the nose tip moves right of the eyes' midpoint
    assert pts[54][0] > (pts[96][0] + pts[97][0]) / 2 + 5


def test_left_right_convention_survives_a_flip():
    p = _plain(sample_identity(5, 0))
    img, ann = _draw_plain(p, yaw=10.0)
    pts = ann["landmarks"]
    # image-left points are left of their image-right partners
    for left, right in ((60, 72), (64, 68), (96, 97), (0, 32), (76, 82), (33, 46), (55, 59)):
        assert pts[left][0] < pts[right][0]
    flipped = img[:, ::-1]
    fpts = pts.copy()
    fpts[:, 0] = img.shape[1] - fpts[:, 0]
    fpts = fpts[WFLW98.flip_permutation()]
    assert fpts[96][0] < fpts[97][0] and fpts[60][0] < fpts[64][0] < fpts[68][0] < fpts[72][0]
    for pupil in (96, 97):  # the image-left pupil label lands on the image-left pupil of the flipped image
        assert _close(_pixel(flipped, fpts[pupil]), PUPIL, 6)
    assert _close(_pixel(flipped, (fpts[79] + fpts[90]) / 2), p.lip_colour, 4)


def test_draw_face_composes_several_faces_in_one_canvas():
    canvas = np.full((200, 400, 3), 90, np.uint8)
    anns = [draw_face(canvas, sample_identity(i, 0), np.random.default_rng(i), (100 + 200 * i, 100), 120, 0.0, 0.0)
            for i in range(2)]
    for i, ann in enumerate(anns):
        x0, y0, x1, y1 = ann["box"]
        assert 200 * i < x0 < x1 < 200 * (i + 1)
        assert (ann["landmarks"][:, 0] > x0 - 1).all() and (ann["landmarks"][:, 0] < x1 + 1).all()


# --- attributes ----------------------------------------------------------------------------------

def test_attribute_rates_match_celeba():
    n = 2000
    people = [sample_identity(i, 11) for i in range(n)]
    flags = np.array([p.attributes for p in people], dtype=float)
    rng = np.random.default_rng(0)
    expressions = [sample_expression(rng) for _ in range(n)]
    flags[:, A["Smiling"]] = [e.smiling for e in expressions]
    flags[:, A["Mouth_Slightly_Open"]] = [e.open_flag for e in expressions]
    blurry = [render_face(people[i], image_rng(i, 0, 11), size=24, difficulty=0.0)[1]["attributes"][A["Blurry"]]
              for i in range(600)]
    rates = flags.mean(0)
    rates[A["Blurry"]] = np.mean(blurry)
    counts = np.full(len(CELEBA_ATTRIBUTES), n)
    counts[A["Blurry"]] = 600
    for name, target, rate, count in zip(CELEBA_ATTRIBUTES, CELEBA_POSITIVE_RATES, rates, counts):
        tolerance = 4 * np.sqrt(target * (1 - target) / count) + 0.005  # 4 binomial standard errors
        assert abs(rate - target) < tolerance, f"{name}: {rate:.3f} vs CelebA {target:.3f}"


def test_attributes_are_mutually_consistent():
    for i in range(1500):
        p = sample_identity(i, 4)
        f = {name: p.attributes[k] for name, k in A.items()}
        assert f["No_Beard"] == int(p.beard == "none") and f["Goatee"] == int(p.beard == "goatee")
        hair_colours = f["Black_Hair"] + f["Blond_Hair"] + f["Brown_Hair"] + f["Gray_Hair"]
        assert hair_colours <= 1 and not (f["Bald"] and hair_colours)
        assert f["Bald"] == int(p.hair_style == "bald") and f["Bangs"] == int(p.hair_style == "bangs")
        assert f["Receding_Hairline"] == int(p.hair_style == "receding")
        assert not (f["Straight_Hair"] and f["Wavy_Hair"])
        assert not (f["Gray_Hair"] and f["Young"])
        assert f["Heavy_Makeup"] <= f["Wearing_Lipstick"]
        if not f["Male"]:
            assert f["No_Beard"] and not (f["Mustache"] or f["Goatee"] or f["Sideburns"] or f["5_o_Clock_Shadow"])
        assert f["Eyeglasses"] == int(p.glasses is not None) and f["Wearing_Hat"] == int(p.hat is not None)
        assert f["Mustache"] == int(p.mustache) and f["Wearing_Necktie"] == int(p.necktie is not None)
        assert p.attributes[A["Smiling"]] == 0 and p.attributes[A["Blurry"]] == 0  # drawn per image


def test_eyeglasses_change_the_eye_region_only():
    p = _plain(sample_identity(6, 0))
    with_glasses = dataclasses.replace(p, glasses=(4.0, 1.5, (20.0, 20.0, 20.0), 0.015, False))
    bare, ann = _draw_plain(p)
    worn, _ = _draw_plain(with_glasses)
    diff = np.abs(bare.astype(int) - worn.astype(int)).sum(2) > 30
    pts = ann["landmarks"]
    eye_band = np.zeros_like(diff)
    top, bottom = int(min(pts[33:51, 1].min(), pts[60:76, 1].min()) - 10), int(pts[54, 1])
    eye_band[top:bottom] = True
    assert diff[eye_band].sum() > 500  # frames drawn around the eyes
    assert diff[~eye_band].sum() == 0


def test_hair_flags_show_on_the_skull():
    p = _plain(sample_identity(10, 0))
    bald = dataclasses.replace(p, hair_style="bald")
    hatted = dataclasses.replace(p, hat=("beanie", (30.0, 200.0, 40.0), 0.06))
    for person, colour in ((p, p.hair_colour), (bald, p.skin), (hatted, (30.0, 200.0, 40.0))):
        img, ann = _draw_plain(person)
        x0, y0, x1, y1 = ann["box"]
        crown = ((x0 + x1) / 2, y0 + 0.05 * (y1 - y0))  # just under the skull top
        assert _close(_pixel(img, crown), colour, 3)


def test_expression_and_face_flags_show_in_the_landmarks():
    p = _plain(sample_identity(8, 0))
    _, neutral = _draw_plain(p)
    _, smiling = _draw_plain(p, Expression(smile=1.0, smiling=True))
    _, opened = _draw_plain(p, Expression(mouth_open=1.0, open_flag=True))
    lift = lambda pts: (pts[79, 1] + pts[85, 1]) / 2 - (pts[76, 1] + pts[82, 1]) / 2  # noqa: E731
    assert lift(smiling["landmarks"]) > lift(neutral["landmarks"]) + 5  # corners up
    assert neutral["landmarks"][94, 1] - neutral["landmarks"][90, 1] < 0.5  # closed lips meet
    assert opened["landmarks"][94, 1] - opened["landmarks"][90, 1] > 10
    # Big_Nose and Narrow_Eyes identities differ in their landmark geometry
    nose, eyes = {0: [], 1: []}, {0: [], 1: []}
    for i in range(300):
        q = sample_identity(i, 9)
        _, ann = _draw_plain(_plain(q), size=200)
        pts = ann["landmarks"]
        nose[q.attribute("Big_Nose")].append(pts[57, 1] - pts[51, 1])
        eyes[q.attribute("Narrow_Eyes")].append(pts[66, 1] - pts[62, 1])
    assert min(nose[1]) > np.median(nose[0])
    assert max(eyes[1]) < np.median(eyes[0])


# --- difficulty ----------------------------------------------------------------------------------

def _measure(difficulty):
    """Spread of the roll angle, and how far the forehead's colour strays from the skin colour."""
    rolls, photometric = [], []
    for identity in range(12):
        p = _plain(sample_identity(identity, 0))
        for index in range(3):
            image, ann = render_face(p, image_rng(identity, index, 0), size=112, difficulty=difficulty)
            pts = np.array(ann["landmarks"])
            eye_line = pts[97] - pts[96]
            rolls.append(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
            if not ann["attributes"][A["Blurry"]]:
                forehead = pts[51] + 0.6 * (pts[51] - pts[54])
                photometric.append(np.abs(_pixel(image, forehead) - p.skin).mean())
    return np.std(rolls), np.median(photometric)


def test_difficulty_scales_the_nuisance():
    roll0, photo0 = _measure(0.0)
    roll1, photo1 = _measure(1.0)
    assert roll0 < 0.5 and roll1 > 5.0
    assert photo0 < 1.0 and photo1 > 10.0


def test_raw_pixels_do_not_identify_people():
    """Nearest neighbour on raw 16x16 pixels, leave-one-out over 60 identities x 4 images at difficulty
    0.5: the nuisance keeps it far from identifying people (measured about 0.05; chance 3/239)."""
    images, labels = [], []
    for key, image, ann in generate_faces(60, 4, size=64, seed=21, difficulty=0.5):
        images.append(cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA).astype(float).ravel())
        labels.append(ann["identity"])
    x, y = np.array(images), np.array(labels)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    rank1 = float((y[d.argmin(1)] == y).mean())
    print(f"raw-pixel nearest-neighbour rank-1 at difficulty 0.5: {rank1:.3f}")
    assert rank1 < 0.2
