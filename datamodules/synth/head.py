"""The pseudo-3-D head of a synthetic face and the projection of canonical points to pixels.

Canonical frame: x to the image right, y down, z towards the viewer; lengths in face heights with
the skull top at y = -0.5 and the chin at y = +0.5. The head is a stack of horizontal elliptical
slices: at height y the outline half width is w(y) (a superellipse below the contour start, an
ellipse above), the slice depth is d = D w / W and its centre sits at z_c = c D (1 - w / W), so the
chin and skull top come forward. ``project`` maps every canonical point through the same yaw, roll,
scale and shift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datamodules.synth.identity import IdentityParams

FOREHEAD_EXPONENT = 2.2
LOWER_S = 1.0 - (1.0 - np.linspace(0.0, 1.0, 40)) ** 1.6  # denser near the chin, where the outline turns
UPPER_PSI = np.linspace(0.0, math.pi, 28)
WIDTH_GRID = np.linspace(-0.5, 0.5, 501)


@lru_cache(maxsize=None)
def unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    c, s = unit_circle(n)
    return cx + rx * c, cy + ry * s


@dataclass(frozen=True)
class Pose:
    """Where the canonical face lands: centre pixel, pixels per face height, roll and yaw in degrees.
    Positive yaw turns the face towards the image right; positive roll turns it clockwise on screen."""

    center_x: float
    center_y: float
    scale: float
    roll_deg: float = 0.0
    yaw_deg: float = 0.0


def project(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Canonical (N, 3) points -> pixel (N, 2): yaw about the vertical axis, orthographic view, roll,
    scale, shift."""
    yaw = math.radians(pose.yaw_deg)
    roll = math.radians(pose.roll_deg)
    x = points[:, 0] * math.cos(yaw) + points[:, 2] * math.sin(yaw)
    y = points[:, 1]
    cr, sr = math.cos(roll) * pose.scale, math.sin(roll) * pose.scale
    out = np.empty((len(points), 2))
    out[:, 0] = pose.center_x + cr * x - sr * y
    out[:, 1] = pose.center_y + sr * x + cr * y
    return out


class Head:
    """The head surface of one identity: outline half width w(y), slice depth and centre."""

    def __init__(self, p: IdentityParams, width_table: np.ndarray | None = None):
        self.width_table = width_table  # w(y) sampled on WIDTH_GRID, for fast lookups
        self.W = p.face_half_width
        self.jaw = p.jaw_exponent
        self.chin = p.chin_exponent
        self.depth = p.head_depth
        self.forward = p.chin_forward
        self.split = p.eye_y - 0.02  # the contour starts here (WFLW point 0 is near eye height)
        self.upper = self.split + 0.5
        self.lower = 0.5 - self.split

    def half_width(self, y):
        """w(y): superellipse |x/W|^jaw-ish jaw below the contour start, ellipse-like forehead above."""
        y = np.asarray(y, dtype=float)
        w = np.empty_like(y)
        below = y >= self.split
        v = np.minimum((y[below] - self.split) / self.lower, 1.0)
        w[below] = self.W * (1.0 - v ** self.jaw) ** (1.0 / self.chin)
        above = ~below
        u = np.minimum((self.split - y[above]) / self.upper, 1.0)
        w[above] = self.W * (1.0 - u ** FOREHEAD_EXPONENT) ** (1.0 / FOREHEAD_EXPONENT)
        return w

    def width_at(self, y: float) -> float:
        return float(self.half_width(np.array([y]))[0])

    def slice(self, w):
        ratio = w / self.W
        return self.depth * ratio, self.forward * self.depth * np.maximum(1.0 - ratio, 0.0)

    def rim_xz(self, w: np.ndarray, side: np.ndarray, cos: float, sin: float) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) of the silhouette point of slices of half width ``w`` on ``side`` (-1 left, +1 right)
        for a head turned by the yaw whose cosine and sine are given: the slice point whose tangent
        runs along the view direction, x cos + (z - z_c) sin = side sqrt(w^2 cos^2 + d^2 sin^2)."""
        d, zc = self.slice(w)
        s = np.sqrt((w * cos) ** 2 + (d * sin) ** 2) + 1e-12
        return side * w * w * cos / s, zc + side * d * d * sin / s

    def tabulate(self) -> np.ndarray:
        return self.half_width(WIDTH_GRID)

    def surface_z(self, x: np.ndarray, y: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Depth of the face surface above canonical (x, y), plus ``dz``."""
        if self.width_table is None:
            w = self.half_width(y)
        else:  # linear interpolation in a table of 501 heights: far below a pixel at any size used
            w = np.interp(y, WIDTH_GRID, self.width_table)
        d, zc = self.slice(w)
        r = np.minimum(np.maximum(x / np.maximum(w, 1e-9), -1.0), 1.0)
        return zc + d * np.sqrt(1.0 - r * r) + dz

    def lower_outline(self):
        """(w, y) of the outline from the contour start down to the chin (one side)."""
        y = self.split + LOWER_S * self.lower
        w = self.W * (1.0 - LOWER_S ** self.jaw) ** (1.0 / self.chin)
        return w, y

    def upper_outline(self, extra_w: float = 0.0, extra_h: float = 0.0, wave=0.0, psi=UPPER_PSI):
        """(x, y) of the forehead/skull arc from the right contour start over the top to the left,
        optionally grown by ``extra_w`` sideways and ``extra_h`` upwards (hair, hats)."""
        c, s = np.cos(psi), np.sin(psi)
        e = 2.0 / FOREHEAD_EXPONENT
        x = (self.W + extra_w + wave) * np.sign(c) * np.abs(c) ** e
        y = self.split - (self.upper + extra_h + wave) * np.abs(s) ** e
        return x, y
