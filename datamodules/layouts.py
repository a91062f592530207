"""One definition of every landmark layout, body keypoint layout and attribute list used by Visage.

Augmentation (flip pairs), metrics (normalising points), boundary heatmaps and drawing all read
these tables; nothing else in the code base spells out landmark indices.

WFLW order (98 points, 0-based):
  0-32 face contour (image-left to image-right), 33-37 left brow upper edge, 38-41 left brow lower
  edge (right to left), 42-46 right brow upper edge, 47-50 right brow lower edge, 51-54 nose bridge,
  55-59 nose bottom, 60-67 left eye (60 outer corner, 64 inner corner), 68-75 right eye (68 inner
  corner, 72 outer corner), 76-87 outer lip (76 and 82 mouth corners), 88-95 inner lip,
  96 left pupil, 97 right pupil.  "Left" means the image-left side.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LandmarkLayout:
    name: str
    num_points: int
    flip_pairs: tuple[tuple[int, int], ...]
    # indices of the two outer eye corners: the inter-ocular normaliser of NME
    outer_eye_corners: tuple[int, int]
    # named polylines through landmark indices (LAB boundaries, drawing)
    boundaries: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def flip_permutation(self) -> list[int]:
        """Index map applied after a horizontal flip so that point i keeps its meaning."""
        perm = list(range(self.num_points))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm


def _mirror_pairs(left: range | list[int], right: range | list[int]) -> tuple[tuple[int, int], ...]:
    return tuple(zip(left, right))


WFLW98 = LandmarkLayout(
    name="wflw98",
    num_points=98,
    flip_pairs=(
        _mirror_pairs(range(0, 16), range(32, 16, -1))
        + _mirror_pairs([33, 34, 35, 36, 37, 38, 39, 40, 41], [46, 45, 44, 43, 42, 50, 49, 48, 47])
        + _mirror_pairs([55, 56], [59, 58])
        + _mirror_pairs([60, 61, 62, 63, 64, 65, 66, 67], [72, 71, 70, 69, 68, 75, 74, 73])
        + _mirror_pairs([76, 77, 78, 87, 86, 88, 89, 95], [82, 81, 80, 83, 84, 92, 91, 93])
        + ((96, 97),)
    ),
    outer_eye_corners=(60, 72),
    # 13 LAB boundaries; each brow is one closed loop through its upper and lower edge
    boundaries={
        "contour": tuple(range(0, 33)),
        "left_brow": (33, 34, 35, 36, 37, 38, 39, 40, 41, 33),
        "right_brow": (42, 43, 44, 45, 46, 47, 48, 49, 50, 42),
        "nose_bridge": (51, 52, 53, 54),
        "nose_bottom": (55, 56, 57, 58, 59),
        "left_eye_upper": (60, 61, 62, 63, 64),
        "left_eye_lower": (64, 65, 66, 67, 60),
        "right_eye_upper": (68, 69, 70, 71, 72),
        "right_eye_lower": (72, 73, 74, 75, 68),
        "upper_lip_top": (76, 77, 78, 79, 80, 81, 82),
        "upper_lip_bottom": (88, 89, 90, 91, 92),
        "lower_lip_top": (88, 95, 94, 93, 92),
        "lower_lip_bottom": (76, 87, 86, 85, 84, 83, 82),
    },
)

# 68-point 300W points as WFLW indices (contour subsampled every second point, eyes without the
# mid-lid points 62/66/70/74, pupils dropped).
WFLW98_TO_300W68: tuple[int, ...] = (
    tuple(range(0, 33, 2))
    + (33, 34, 35, 36, 37, 42, 43, 44, 45, 46)
    + (51, 52, 53, 54, 55, 56, 57, 58, 59)
    + (60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75)
    + tuple(range(76, 96))
)

W300_68 = LandmarkLayout(
    name="300w68",
    num_points=68,
    flip_pairs=(
        _mirror_pairs(range(0, 8), range(16, 8, -1))
        + _mirror_pairs(range(17, 22), range(26, 21, -1))
        + _mirror_pairs([31, 32], [35, 34])
        + _mirror_pairs([36, 37, 38, 39, 40, 41], [45, 44, 43, 42, 47, 46])
        + _mirror_pairs([48, 49, 50, 60, 61, 59, 58, 67], [54, 53, 52, 64, 63, 55, 56, 65])
    ),
    outer_eye_corners=(36, 45),
    boundaries={
        "contour": tuple(range(0, 17)),
        "left_brow": tuple(range(17, 22)),
        "right_brow": tuple(range(22, 27)),
        "nose_bridge": (27, 28, 29, 30),
        "nose_bottom": (31, 32, 33, 34, 35),
        "left_eye_upper": (36, 37, 38, 39),
        "left_eye_lower": (39, 40, 41, 36),
        "right_eye_upper": (42, 43, 44, 45),
        "right_eye_lower": (45, 46, 47, 42),
        "upper_lip_top": (48, 49, 50, 51, 52, 53, 54),
        "upper_lip_bottom": (60, 61, 62, 63, 64),
        "lower_lip_top": (60, 67, 66, 65, 64),
        "lower_lip_bottom": (48, 59, 58, 57, 56, 55, 54),
    },
)

# 5 points (left eye, right eye, nose tip, left mouth corner, right mouth corner) as WFLW indices.
WFLW98_TO_FIVE: tuple[int, ...] = (96, 97, 54, 76, 82)

FIVE = LandmarkLayout(
    name="five",
    num_points=5,
    flip_pairs=((0, 1), (3, 4)),
    outer_eye_corners=(0, 1),
)

LANDMARK_LAYOUTS = {layout.name: layout for layout in (WFLW98, W300_68, FIVE)}


def layout_of(num_points: int) -> LandmarkLayout:
    """The layout of a sample's landmarks, told by their count (98 WFLW, 68 300W, 5 points)."""
    for layout in (WFLW98, W300_68, FIVE):
        if layout.num_points == num_points:
            return layout
    raise ValueError(f"no landmark layout has {num_points} points (98 WFLW, 68 300W or 5)")


def derive_landmarks(points: np.ndarray, target: LandmarkLayout) -> np.ndarray:
    """(N, 2) points in the layout their count names -> the same face's points in ``target``:
    98 -> 68 and 98 -> 5 pick WFLW points (the pupils are the 5-point eyes); 68 -> 5 takes each eye
    as the mean of its six points, as the 5-point eyes of 300W-derived data are defined."""
    points = np.asarray(points, dtype=np.float64)
    source = layout_of(len(points))
    if source is target:
        return points.copy()
    if source is WFLW98 and target is W300_68:
        return points[list(WFLW98_TO_300W68)]
    if source is WFLW98 and target is FIVE:
        return points[list(WFLW98_TO_FIVE)]
    if source is W300_68 and target is FIVE:
        return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]])
    raise ValueError(f"{source.name} landmarks hold fewer points than {target.name}: they cannot be derived")


@dataclass(frozen=True)
class BodyLayout:
    """A human-pose keypoint layout: names in order, left/right flip partners, the skeleton's limbs
    (pairs of indices, for drawing) and, for COCO, the per-keypoint OKS sigmas (k_i = 2 sigma_i in
    OKS = sum_i exp(-d_i^2 / (2 s^2 k_i^2)) [v_i > 0] / sum_i [v_i > 0])."""
    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None

    @property
    def num_points(self) -> int:
        return len(self.keypoints)

    def flip_permutation(self) -> list[int]:
        """Index map applied after a horizontal flip so that point i keeps its meaning."""
        perm = list(range(self.num_points))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm


# COCO person keypoints (0-based; the annotation files' skeleton is 1-based)
COCO17 = BodyLayout(
    name="coco17",
    keypoints=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
              (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
            0.087, 0.087, 0.089, 0.089),
)

# MPII human pose (0-based joint ids of the MPII annotations); PCKh uses the head box, not sigmas
MPII16 = BodyLayout(
    name="mpii16",
    keypoints=("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
               "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
               "left_elbow", "left_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (7, 12), (12, 11), (11, 10),
              (7, 13), (13, 14), (14, 15)),
)

BODY_LAYOUTS = {layout.name: layout for layout in (COCO17, MPII16)}


# The 40 CelebA attributes in the column order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
