"""Canonical 3-D geometry of a synthetic face's features on its head (``head.py``).

Features are points on the head's surface (plus a protrusion for nose
and lips); outline points are slice silhouettes for the current yaw, so a turned head keeps a true
outline and the features never cross it.

Shapes are collected as canonical 2-D requests in one ``Shapes`` buffer (surface points, silhouette
points, fixed 3-D points) and resolved to 3-D in one vectorised pass; ``project`` then maps every
point through the same yaw, roll, scale and shift, so landmarks lie exactly on what is drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from datamodules.synth.head import Head, ellipse, unit_circle
from datamodules.synth.identity import Expression, IdentityParams

NUM_LANDMARKS = 98
SURFACE, RIM, FIXED = 0, 1, 2

SIDES = np.array([[-1.0], [1.0]])  # image-left, image-right
T9 = np.linspace(0.0, 1.0, 9)
SIN_T9 = np.sin(math.pi * T9)
T21 = np.linspace(0.0, 1.0, 21)
BROW_TAPER = 0.12 + 0.88 * np.sin(0.5 * math.pi * T21) ** 0.6
BROW_ARCH = np.sin(math.pi * T21 ** 0.65) ** 1.5
CONTOUR_FRACTIONS = np.linspace(0.0, 1.0, 17)
U_OUT = np.array([-1, -0.8, -0.6, -0.44, -0.28, -0.14, 0, 0.14, 0.28, 0.44, 0.6, 0.8, 1.0])
U_IN = np.array([-0.85, -0.64, -0.42, -0.21, 0.0, 0.21, 0.42, 0.64, 0.85])
LIP_BOW = np.sqrt(1 - U_OUT ** 2) * (1.0 - 0.25 * np.exp(-(U_OUT / 0.13) ** 2))  # Cupid's bow dip
LIP_LOWER = (1 - U_OUT ** 2) ** 0.6
POUT_OUT = 0.035 * (1 - U_OUT ** 2)
POUT_IN = 0.03 * (1 - U_IN ** 2)
OPEN_OUT = np.maximum(1.0 - (U_OUT / 0.85) ** 2, 0.0)
OPEN_IN = np.maximum(1.0 - (U_IN / 0.85) ** 2, 0.0)
# Rows of landmarks inside the polygons that carry them (see add_eyes, add_brows, add_mouth).
# Eyes: 16 rows per eye (upper lid t = 0..1 in 9 rows, then the lower lid t = 7/8..1/8).
# 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid back to the outer corner;
# 68 inner corner, 69-71 upper lid, 72 outer corner, 73-75 lower lid back to the inner corner.
EYE_ROWS = np.array([0, 2, 4, 6, 8, 10, 12, 14, 16 + 8, 16 + 6, 16 + 4, 16 + 2, 16, 16 + 14, 16 + 12, 16 + 10])
# Brows: 42 rows per brow (upper edge tail -> head at t = k/20, then lower edge head -> tail at
# t = 1 - k/20). 33 tail .. 37 head, 38-41 lower edge head -> tail; 42 head .. 46 tail, 47-50
# lower edge tail -> head.
BROW_ROWS = np.array([0, 5, 10, 15, 20, 25, 29, 33, 37, 42 + 20, 42 + 15, 42 + 10, 42 + 5, 42, 42 + 37, 42 + 33,
                      42 + 29, 42 + 25])
UPPER_OUTER_ROWS = np.array([0, 2, 4, 6, 8, 10, 12])
LOWER_OUTER_ROWS = np.array([1, 3, 5, 7, 9])
UPPER_INNER_ROWS = np.array([0, 2, 4, 6, 8])


def _twice(a: np.ndarray) -> np.ndarray:
    """``a`` repeated for the second of a left/right pair."""
    return np.concatenate([a, a])


@dataclass(frozen=True)
class ShapeTemplate:
    """A frozen ``Shapes`` buffer to start others from: its points resolved in 3-D except the
    silhouette points, which depend on the yaw and are kept as (w, side) requests."""

    points: np.ndarray  # (N, 3); rows listed in rim_rows are recomputed for every yaw
    rim_rows: np.ndarray
    rim_w: np.ndarray
    rim_side: np.ndarray
    parts: dict
    landmark_rows: np.ndarray
    landmark_set: np.ndarray  # which landmark rows the template defines
    width_table: np.ndarray  # the head's w(y) on WIDTH_GRID


class Shapes:
    """A buffer of canonical points for one face. Each request appends points (surface points from
    (x, y, dz), silhouette points from (w, y, side), or fixed (x, y, z)); ``close`` names the range
    added since ``mark`` as one polygon of a part. ``resolve`` computes every 3-D point at once."""

    def __init__(self, head: Head | None, template: ShapeTemplate | None = None):
        self.head = head
        self.template = template
        self._x, self._y, self._a, self._kinds, self._lens = [], [], [], [], []
        self.n = 0
        self.parts: dict[str, list[tuple[int, int]]] = {}
        self.landmark_rows = np.zeros(NUM_LANDMARKS, dtype=np.int64)
        self.landmark_set = np.zeros(NUM_LANDMARKS, dtype=bool)
        if template is not None:
            self.n = len(template.points)
            self.parts = {name: list(spans) for name, spans in template.parts.items()}
            self.landmark_rows[:] = template.landmark_rows
            self.landmark_set[:] = template.landmark_set

    def freeze(self) -> ShapeTemplate:
        """Resolve everything that does not depend on the yaw, once (only for a buffer without template)."""
        assert self.template is None and self.head is not None
        x, y, a = np.concatenate(self._x), np.concatenate(self._y), np.concatenate(self._a)
        kind = np.repeat(np.array(self._kinds, dtype=np.int8), self._lens)
        rim = np.flatnonzero(kind == RIM)
        return ShapeTemplate(self.resolve(0.0), rim, x[rim], a[rim], {k: tuple(v) for k, v in self.parts.items()},
                             self.landmark_rows.copy(), self.landmark_set.copy(), self.head.tabulate())

    def _add(self, x, y, a, kind: int) -> int:
        x = np.asarray(x, dtype=float).ravel()
        n = x.size
        self._x.append(x)
        self._y.append(y.ravel() if isinstance(y, np.ndarray) else np.full(n, y))
        self._a.append(a.ravel() if isinstance(a, np.ndarray) else np.full(n, a))
        self._kinds.append(kind)
        self._lens.append(n)
        start = self.n
        self.n += n
        return start

    def surface(self, x, y, dz=0.0) -> int:
        return self._add(x, y, dz, SURFACE)

    def rim(self, w, y, side) -> int:
        return self._add(w, y, side, RIM)

    def rim_xy(self, x, y) -> int:
        x = np.asarray(x, dtype=float)
        return self._add(np.abs(x), y, np.where(x < 0, -1.0, 1.0), RIM)

    def fixed(self, x, y, z) -> int:
        return self._add(x, y, z, FIXED)

    def mark(self) -> int:
        return self.n

    def close(self, name: str, start: int) -> None:
        self.parts.setdefault(name, []).append((start, self.n))

    def close_split(self, name: str, start: int, count: int) -> None:
        """Name the points added since ``start`` as ``count`` polygons of equal size."""
        size = (self.n - start) // count
        self.parts.setdefault(name, []).extend((start + k * size, start + (k + 1) * size) for k in range(count))

    def set_landmarks(self, index, rows) -> None:
        self.landmark_rows[index] = rows
        self.landmark_set[index] = True

    def resolve(self, yaw_deg: float = 0.0) -> np.ndarray:
        """Every requested point in 3-D; silhouettes are taken for a head turned by ``yaw_deg``."""
        cos, sin = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
        blocks = []
        if self.template is not None:
            t = self.template
            points = t.points.copy()
            points[t.rim_rows, 0], points[t.rim_rows, 2] = self.head.rim_xz(t.rim_w, t.rim_side, cos, sin)
            blocks.append(points)
        if self._x:
            x, y, a = np.concatenate(self._x), np.concatenate(self._y), np.concatenate(self._a)
            out = np.empty((len(x), 3))
            out[:, 0], out[:, 1], out[:, 2] = x, y, a  # fixed points as they are
            if self.head is not None:
                kind = np.repeat(np.array(self._kinds, dtype=np.int8), self._lens)
                surface = kind == SURFACE
                if surface.all():  # the usual case for expression parts
                    out[:, 2] = self.head.surface_z(x, y, a)
                else:
                    out[surface, 2] = self.head.surface_z(x[surface], y[surface], a[surface])
                    rim = kind == RIM
                    out[rim, 0], out[rim, 2] = self.head.rim_xz(x[rim], a[rim], cos, sin)
            blocks.append(out)
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0] if blocks else np.zeros((0, 3))


def _arc_positions(w: np.ndarray, y: np.ndarray, fractions: np.ndarray):
    """Points at given fractions of the arc length of the polyline (w, y)."""
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(w), np.diff(y)))])
    target = fractions * cum[-1]
    return np.interp(target, cum, w), np.interp(target, cum, y)


class FaceGeometry:
    """The canonical shapes of one face with one expression, in ``shapes``; landmark rows point
    into it. Start from a ``ShapeTemplate`` of the identity's expression-free parts to skip them."""

    def __init__(self, p: IdentityParams, expr: Expression, template: ShapeTemplate | None = None):
        self.p, self.expr = p, expr
        self.head = Head(p, template.width_table if template is not None else None)
        self.shapes = Shapes(self.head, template)
        self.brow_y = p.eye_y - p.brow_gap
        self._nose_mouth_levels()

    @cached_property
    def _lower_outline(self) -> tuple[np.ndarray, np.ndarray]:
        return self.head.lower_outline()

    @property
    def lower_w(self) -> np.ndarray:
        return self._lower_outline[0]

    @property
    def lower_y(self) -> np.ndarray:
        return self._lower_outline[1]

    def _nose_mouth_levels(self):
        """Heights of the nose base and mouth, mouth width and the outer lip curves for this expression."""
        p, e = self.p, self.expr
        self.nose_base_y = p.eye_y + p.nose_length
        self.mouth_y = self.nose_base_y + p.mouth_gap
        self.mouth_half = p.mouth_half_width * (1.0 + 0.15 * e.smile)
        gap = 0.05 * e.mouth_open
        mid = self.mouth_y - 0.022 * e.smile * U_OUT ** 2
        self.upper_lip_y = mid - 0.3 * gap * OPEN_OUT - p.upper_lip * (1.0 - 0.25 * e.smile) * LIP_BOW
        self.lower_lip_y = mid + 0.7 * gap * OPEN_OUT + p.lower_lip * LIP_LOWER
        self.lower_lip_bottom = float(self.lower_lip_y[6])

    def landmark(self, index, rows) -> None:
        self.shapes.set_landmarks(index, rows)

    # --- head outline and WFLW contour 0-32 -------------------------------------------------------
    def add_outline(self):
        sh, h = self.shapes, self.head
        w, y = self.lower_w, self.lower_y
        x_up, y_up = h.upper_outline()
        start = sh.mark()
        sh.rim(w, y, -1.0)
        sh.rim(w[-2::-1], y[-2::-1], 1.0)
        sh.rim_xy(x_up[1:-1], y_up[1:-1])
        sh.close("outline", start)
        # 17 points per side equally spaced along the arc, point 16 the chin
        cw, cy = _arc_positions(w, y, CONTOUR_FRACTIONS)
        left = sh.rim(cw, cy, -1.0)
        right = sh.rim(cw[-2::-1], cy[-2::-1], 1.0)
        self.landmark(slice(0, 17), np.arange(left, left + 17))
        self.landmark(slice(17, 33), np.arange(right, right + 16))

    # --- eyes: WFLW 60-67 (image-left), 68-75 (image-right), pupils 96/97 --------------------------
    def add_eyes(self):
        """Both eyes at once: row 0 of every (2, n) array is the image-left eye, row 1 the right."""
        p, e, sh = self.p, self.expr, self.shapes
        opening = p.eye_open * (1.0 - 0.3 * e.smile + 0.3 * e.brow_raise)
        lower_open = 0.5 * p.eye_open * (1.0 - 0.15 * e.smile)
        r_iris = p.iris_ratio * p.eye_half_width
        cover = r_iris + 0.012
        xs = SIDES * (p.eye_spacing + p.eye_half_width * (1.0 - 2.0 * T9))  # outer corner (t = 0) -> inner (t = 1)
        back = xs[:, ::-1]
        base = p.eye_y - p.eye_tilt + 1.4 * p.eye_tilt * T9
        upper_y = base - opening * np.sin(math.pi * T9 ** p.lid_shape) ** 0.9
        lower_y = base + lower_open * SIN_T9
        # eye opening: upper lid outer -> inner corner, lower lid back (t = 7/8 .. 1/8)
        eye = sh.surface(np.concatenate([xs, xs[:, 7:0:-1]], 1), _twice(np.concatenate([upper_y, lower_y[7:0:-1]])),
                         -0.005)
        sh.parts["eyes"] = [(eye, eye + 16), (eye + 16, eye + 32)]
        sh.parts["lids_upper"] = [(eye, eye + 9), (eye + 16, eye + 25)]
        ix = SIDES[:, 0] * p.eye_spacing + e.gaze[0] * 0.3 * p.eye_half_width
        iy = p.eye_y - 0.2 * opening + e.gaze[1] * 0.2 * p.eye_open
        for name, n, dx, dy, r, dz in (("irises", 14, 0.0, 0.0, 1.0, 0.0), ("pupils", 10, 0.0, 0.0, 0.42, 0.001),
                                       ("glints", 6, 0.3, -0.35, 0.18, 0.002)):
            c, s_ = unit_circle(n)
            start = sh.surface(ix[:, None] + r_iris * (dx + r * c), _twice(iy + r_iris * (dy + r * s_)), dz)
            sh.parts[name] = [(start, start + n), (start + n, start + 2 * n)]
        centres = sh.surface(ix, np.array([iy, iy]), 0.001)
        # skin above the upper lid and below the lower lid hides the iris outside the opening
        masks_y = np.concatenate([upper_y, upper_y[::-1] - cover, lower_y, lower_y[::-1] + cover])
        start = sh.surface(np.concatenate([xs, back, xs, back], 1), _twice(masks_y))
        sh.parts["eye_masks"] = [(start + 18 * k, start + 18 * (k + 1)) for k in (0, 2, 1, 3)]
        if p.heavy_makeup:
            shadow_y = np.concatenate([upper_y, (upper_y - 0.35 * opening - 0.018 * SIN_T9)[::-1]])
            start = sh.surface(np.concatenate([xs, back], 1), _twice(shadow_y))
            sh.parts["eye_shadows"] = [(start, start + 18), (start + 18, start + 36)]
        start = sh.surface(xs, _twice(lower_y), -0.005)
        sh.parts["lids_lower"] = [(start, start + 9), (start + 9, start + 18)]
        if p.bags_under_eyes:
            start = sh.surface(xs[:, 2:8], _twice(lower_y[2:8] + 0.022 + 0.01 * SIN_T9[2:8]))
            sh.parts["bags"] = [(start, start + 6), (start + 6, start + 12)]
        # 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid back to the outer corner;
        # 68 inner corner, 69-71 upper lid, 72 outer corner, 73-75 lower lid back to the inner corner
        self.landmark(slice(60, 76), eye + EYE_ROWS)
        self.landmark(slice(96, 98), centres + np.arange(2))

    # --- brows: WFLW 33-41 (image-left), 42-50 (image-right) ---------------------------------------
    def add_brows(self):
        """Both brows: upper edge tail -> head, then the lower edge head -> tail (row 21 + k: t = 1 - k/20)."""
        p, e, sh = self.p, self.expr, self.shapes
        base = self.brow_y - 0.03 * e.brow_raise
        centre = base - p.brow_arch * (1.0 + 0.4 * e.brow_raise) * BROW_ARCH + p.brow_slope * (T21 - 0.5)
        half = 0.5 * p.brow_thickness * BROW_TAPER
        x_tail = SIDES * (p.eye_spacing + 1.25 * p.eye_half_width * p.brow_length)
        x_head = SIDES * (p.eye_spacing - p.eye_half_width)
        xs = x_tail + (x_head - x_tail) * T21
        ys = np.hstack([centre - half, (centre + half)[::-1]])
        start = sh.mark()
        sh.surface(np.hstack([xs, xs[:, ::-1]]), _twice(ys), 0.003)
        sh.close_split("brows", start, 2)
        self.landmark(slice(33, 51), start + BROW_ROWS)

    # --- nose: WFLW 51-54 bridge, 55-59 bottom ----------------------------------------------------
    def add_nose(self):
        p, sh = self.p, self.shapes
        top, base_y = p.eye_y - 0.01, self.nose_base_y
        tip_y = p.eye_y + 0.8 * p.nose_length
        lift = p.nose_length / 0.21
        nw = p.nose_width
        start = sh.mark()
        sh.surface(*ellipse(0.0, tip_y + 0.004, nw * 0.32, nw * 0.24, 8), 0.13 * lift)
        sh.close("nose_tip", start)
        start = sh.mark()
        sh.surface(np.zeros(4), top + (tip_y - top) * np.array([0.0, 1 / 3, 2 / 3, 1.0]),
                   np.array([0.02, 0.05, 0.09, 0.13]) * lift)
        sh.close("nose_bridge", start)
        self.landmark(slice(51, 55), np.arange(start, start + 4))
        for side in (-1.0, 1.0):
            start = sh.mark()
            sh.surface(side * nw * np.array([1.0, 1.12, 0.8]), base_y + np.array([-0.022, -0.05, -0.075]),
                       np.array([0.02, 0.03, 0.05]) * lift)
            sh.close("alae", start)
            start = sh.mark()
            sh.surface(*ellipse(side * nw * 0.5, base_y - 0.013, nw * 0.28, 0.0085, 8), 0.05 * lift)
            sh.close("nostrils", start)
        start = sh.mark()
        sh.surface(nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0]),
                   base_y + np.array([-0.022, -0.006, 0.012 * p.nose_pointy, -0.006, -0.022]),
                   np.array([0.02, 0.06, 0.08, 0.06, 0.02]) * lift)
        sh.close("nose_bottom", start)
        self.landmark(slice(55, 60), np.arange(start, start + 5))

    # --- mouth: WFLW 76-87 outer lip, 88-95 inner lip ---------------------------------------------
    def add_mouth(self):
        e, sh = self.expr, self.shapes
        mw, my = self.mouth_half, self.mouth_y
        gap = 0.05 * e.mouth_open
        mid_in = my - 0.022 * e.smile * U_IN ** 2
        up_in_y = mid_in - 0.3 * gap * OPEN_IN
        lo_in_y = mid_in + 0.7 * gap * OPEN_IN
        x_out, x_in = mw * U_OUT, mw * U_IN
        start = sh.mark()
        upper_outer = sh.surface(x_out, self.upper_lip_y, POUT_OUT)
        # the lower lip runs back from u = 0.8 to -0.8: its row k holds U_OUT[11 - k]
        lower_outer = sh.surface(x_out[-2:0:-1], self.lower_lip_y[-2:0:-1], POUT_OUT[-2:0:-1])
        sh.close("lips", start)
        if e.mouth_open > 0:
            start = sh.mark()
            sh.surface(x_in, up_in_y, POUT_IN)
            sh.surface(x_in[-2:0:-1], lo_in_y[-2:0:-1], POUT_IN[-2:0:-1])
            sh.close("mouth_inside", start)
            start = sh.mark()
            sh.surface(x_in, up_in_y, POUT_IN)
            teeth_low = np.minimum(up_in_y + gap * (0.35 + 0.45 * e.smile), lo_in_y)
            sh.surface(x_in[::-1], teeth_low[::-1], POUT_IN[::-1])
            sh.close("teeth", start)
        start = sh.mark()
        upper_inner = sh.surface(x_in, up_in_y, POUT_IN)
        sh.close("lip_line", start)
        lower_inner = sh.surface(x_in[[6, 4, 2]], lo_in_y[[6, 4, 2]], POUT_IN[[6, 4, 2]])
        self.landmark(slice(76, 83), upper_outer + UPPER_OUTER_ROWS)
        self.landmark(slice(83, 88), lower_outer + LOWER_OUTER_ROWS)  # u = .6, .28, 0, -.28, -.6
        self.landmark(slice(88, 93), upper_inner + UPPER_INNER_ROWS)
        self.landmark(slice(93, 96), lower_inner + np.arange(3))
