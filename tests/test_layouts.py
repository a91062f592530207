"""Landmark layouts: which layout a count names, deriving 68 and 5 points from 98 (and 5 from 68),
and the schema's checks of landmarks and keypoints."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.layouts import FIVE, W300_68, WFLW98, derive_landmarks, layout_of
from datamodules.schema import SampleError, validate_annotation
from datamodules.synth.faces import generate_faces


def synthetic_landmarks(count: int = 6) -> list[np.ndarray]:
    return [np.asarray(ann["landmarks"]) for _, (_, _, ann) in zip(range(count), generate_faces(3, 2, size=96, seed=4))]


def flipped(points: np.ndarray, width: float, layout) -> np.ndarray:
    """A horizontal mirror of the points, renumbered so each keeps its meaning (image-left stays left)."""
    out = points.copy()
    out[:, 0] = width - out[:, 0]
    return out[layout.flip_permutation()]


@pytest.mark.parametrize("source, target", [(WFLW98, W300_68), (WFLW98, FIVE), (W300_68, FIVE)])
def test_deriving_a_layout_commutes_with_a_horizontal_flip(source, target):
    """Mirroring then deriving equals deriving then mirroring: a point mapped to the wrong side of the
    face, or a flip pair the two layouts disagree on, breaks it."""
    for points98 in synthetic_landmarks():
        points = derive_landmarks(points98, source)
        np.testing.assert_allclose(derive_landmarks(flipped(points, 96, source), target),
                                   flipped(derive_landmarks(points, target), 96, target), atol=1e-9)


def test_the_300w_points_keep_their_anatomy():
    for points in synthetic_landmarks():
        p68 = derive_landmarks(points, W300_68)
        assert p68.shape == (68, 2)
        np.testing.assert_array_equal(p68[0], points[0])                    # contour starts where WFLW's does
        np.testing.assert_array_equal(p68[16], points[32])                  # and ends where it ends
        np.testing.assert_array_equal(p68[[36, 39, 42, 45]], points[[60, 64, 68, 72]])  # eye corners
        np.testing.assert_array_equal(p68[[48, 54]], points[[76, 82]])      # mouth corners
        np.testing.assert_array_equal(p68[30], points[54])                  # nose tip
        assert p68[36][0] < p68[39][0] < p68[42][0] < p68[45][0]           # left eye, then right eye
        assert p68[27][1] < p68[30][1]                                      # the bridge runs down to the tip


def test_five_points_by_hand():
    p68 = np.zeros((68, 2))
    p68[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]   # left eye: mean (13, 20)
    p68[42:48] = [[30, 20], [32, 18], [34, 18], [36, 20], [34, 22], [32, 22]]   # right eye: mean (33, 20)
    p68[30], p68[48], p68[54] = [23, 30], [15, 40], [31, 40]
    np.testing.assert_allclose(derive_landmarks(p68, FIVE), [[13, 20], [33, 20], [23, 30], [15, 40], [31, 40]])
    p98 = np.arange(196, dtype=float).reshape(98, 2)
    np.testing.assert_array_equal(derive_landmarks(p98, FIVE), p98[[96, 97, 54, 76, 82]])  # pupils, tip, corners


def test_layout_by_count_and_what_cannot_be_derived():
    assert layout_of(98) is WFLW98 and layout_of(68) is W300_68 and layout_of(5) is FIVE
    with pytest.raises(ValueError, match="no landmark layout has 7 points"):
        layout_of(7)
    with pytest.raises(ValueError, match="cannot be derived"):
        derive_landmarks(np.zeros((5, 2)), W300_68)
    same = np.ones((68, 2))
    assert derive_landmarks(same, W300_68) is not same  # a copy, never the caller's array


def test_schema_takes_98_68_and_5_landmarks_and_coco_visibility_only():
    for count in (98, 68, 5):
        validate_annotation({"landmarks": [[1.0, 2.0]] * count}, required=("landmarks",))
    with pytest.raises(SampleError, match="'landmarks': expected 98 or 68 or 5 points, got 7") as err:
        validate_annotation({"landmarks": [[1.0, 2.0]] * 7})
    assert err.value.kind == "bad_shape"
    validate_annotation({"keypoints": [[1, 2, 0], [3, 4, 1], [5, 6, 2]]})
    with pytest.raises(SampleError, match="'keypoints': visibility") as err:
        validate_annotation({"keypoints": [[1, 2, 0], [3, 4, 3]]})
    assert err.value.kind == "bad_shape"


@pytest.mark.parametrize("layout_name", ["coco17", "mpii16"])
def test_body_layouts_flip_left_to_right_and_their_skeleton_stays_inside(layout_name):
    from datamodules.layouts import BODY_LAYOUTS
    layout = BODY_LAYOUTS[layout_name]
    names = layout.keypoints
    for a, b in layout.flip_pairs:  # every pair joins a left and a right point of the same part
        assert {names[a].split("_")[0], names[b].split("_")[0]} == {"left", "right"}
        assert names[a].split("_", 1)[1] == names[b].split("_", 1)[1]
    sided = {i for i, name in enumerate(names) if name.startswith(("left_", "right_"))}
    assert {i for pair in layout.flip_pairs for i in pair} == sided  # and every sided point has its partner
    perm = layout.flip_permutation()
    assert sorted(perm) == list(range(layout.num_points)) and [perm[p] for p in perm] == list(range(layout.num_points))
    assert all(0 <= a < layout.num_points and 0 <= b < layout.num_points for a, b in layout.skeleton)
    # the skeleton connects every keypoint
    reached, frontier = {0}, [0]
    while frontier:
        point = frontier.pop()
        for a, b in layout.skeleton:
            for nxt in ((b,) if a == point else (a,) if b == point else ()):
                if nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
    assert reached == set(range(layout.num_points))


def test_coco_oks_sigmas_are_the_published_ones_and_symmetric():
    from datamodules.layouts import COCO17
    assert COCO17.sigmas[:5] == (0.026, 0.025, 0.025, 0.035, 0.035) and COCO17.sigmas[-1] == 0.089
    assert all(COCO17.sigmas[a] == COCO17.sigmas[b] for a, b in COCO17.flip_pairs)
