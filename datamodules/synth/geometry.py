"""Canonical 3-D geometry of a synthetic face, and its projection to pixels.

Canonical frame: x to the image right, y down, z towards the viewer; lengths in face heights with
the skull top at y = -0.5 and the chin at y = +0.5. The head is a stack of horizontal elliptical
slices: at height y the outline half width is w(y) (a superellipse below the contour start, an
ellipse above), the slice depth is d = D w / W and its centre sits at z_c = c D (1 - w / W), so the
chin and skull top come forward. Features are points on that surface (plus a protrusion for nose
and lips); outline points are the slice silhouettes for the current yaw, so a turned head keeps a
true outline and the features never cross it.

Every drawn shape and every landmark is built here as canonical points; ``project`` maps them all
through the same yaw, roll, scale and shift, so landmarks lie exactly on what is drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datamodules.synth.identity import Expression, IdentityParams

FOREHEAD_EXPONENT = 2.2
NUM_LANDMARKS = 98


@dataclass(frozen=True)
class Pose:
    """Where the canonical face lands: centre pixel, pixels per face height, roll and yaw in degrees.
    Positive yaw turns the face towards the image right; positive roll turns it clockwise on screen."""

    center_x: float
    center_y: float
    scale: float
    roll_deg: float = 0.0
    yaw_deg: float = 0.0


def project(points: np.ndarray, pose: Pose, yaw_factor: float = 1.0) -> np.ndarray:
    """Canonical (N, 3) points -> pixel (N, 2): yaw about the vertical axis, orthographic view, roll,
    scale, shift. ``yaw_factor`` < 1 turns a part less than the head (the body)."""
    yaw = math.radians(pose.yaw_deg * yaw_factor)
    roll = math.radians(pose.roll_deg)
    x = points[:, 0] * math.cos(yaw) + points[:, 2] * math.sin(yaw)
    y = points[:, 1]
    cr, sr = math.cos(roll) * pose.scale, math.sin(roll) * pose.scale
    out = np.empty((len(points), 2))
    out[:, 0] = pose.center_x + cr * x - sr * y
    out[:, 1] = pose.center_y + sr * x + cr * y
    return out


class Head:
    """The head surface of one identity (outline half width, slice depth, surface depth)."""

    def __init__(self, p: IdentityParams, yaw_deg: float):
        self.W = p.face_half_width
        self.jaw = p.jaw_exponent
        self.chin = p.chin_exponent
        self.depth = p.head_depth
        self.forward = p.chin_forward
        self.split = p.eye_y - 0.02  # contour starts here (WFLW point 0 is near eye height)
        self.upper = self.split + 0.5
        self.lower = 0.5 - self.split
        yaw = math.radians(yaw_deg)
        self.cos, self.sin = math.cos(yaw), math.sin(yaw)

    def half_width(self, y):
        y = np.asarray(y, dtype=float)
        v = np.clip((y - self.split) / self.lower, 0.0, 1.0)
        u = np.clip((self.split - y) / self.upper, 0.0, 1.0)
        lower = self.W * (1.0 - v ** self.jaw) ** (1.0 / self.chin)
        upper = self.W * (1.0 - u ** FOREHEAD_EXPONENT) ** (1.0 / FOREHEAD_EXPONENT)
        return np.where(y >= self.split, lower, upper)

    def _slice(self, w):
        ratio = np.asarray(w, dtype=float) / self.W
        return self.depth * ratio, self.forward * self.depth * np.clip(1.0 - ratio, 0.0, None)

    def surface(self, x, y, dz=0.0) -> np.ndarray:
        """Points on the face surface above canonical (x, y), pushed ``dz`` towards the viewer."""
        x = np.asarray(x, dtype=float)
        y = np.broadcast_to(np.asarray(y, dtype=float), x.shape)
        w = self.half_width(y)
        d, zc = self._slice(w)
        r = np.clip(x / np.maximum(w, 1e-9), -1.0, 1.0)
        z = zc + d * np.sqrt(1.0 - r * r) + dz
        return np.stack([x, y, z], axis=-1)

    def rim(self, w, y, side) -> np.ndarray:
        """Silhouette points of slices of half width ``w`` at heights ``y`` on ``side`` (-1 left, +1 right)
        for the current yaw: the slice point whose tangent is parallel to the view direction."""
        w = np.asarray(w, dtype=float)
        y = np.broadcast_to(np.asarray(y, dtype=float), w.shape)
        side = np.broadcast_to(np.asarray(side, dtype=float), w.shape)
        d, zc = self._slice(w)
        s = np.sqrt((w * self.cos) ** 2 + (d * self.sin) ** 2) + 1e-12
        x = side * w * w * self.cos / s
        z = zc + side * d * d * self.sin / s
        return np.stack([x, y, z], axis=-1)

    def outline_2d(self, n_lower: int = 40, n_upper: int = 28):
        """Canonical 2-D outline: (lower w, lower y) from the contour start to the chin on one side,
        and the forehead arc (x, y) from the right contour start over the skull to the left one."""
        s = np.linspace(0.0, 1.0, n_lower)
        v = 1.0 - (1.0 - s) ** 1.6  # denser near the chin where the outline turns fastest
        y_low = self.split + v * self.lower
        w_low = self.W * (1.0 - v ** self.jaw) ** (1.0 / self.chin)
        psi = np.linspace(0.0, math.pi, n_upper)
        c, sn = np.cos(psi), np.sin(psi)
        e = 2.0 / FOREHEAD_EXPONENT
        x_up = self.W * np.sign(c) * np.abs(c) ** e
        y_up = self.split - self.upper * np.abs(sn) ** e
        return w_low, y_low, x_up, y_up


def _arc_positions(w: np.ndarray, y: np.ndarray, fractions: np.ndarray):
    """Points at given fractions of the arc length of the polyline (w, y)."""
    seg = np.hypot(np.diff(w), np.diff(y))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    target = fractions * cum[-1]
    return np.interp(target, cum, w), np.interp(target, cum, y)


def _ellipse(cx, cy, rx, ry, n, angle0=0.0):
    t = angle0 + np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return cx + rx * np.cos(t), cy + ry * np.sin(t)


class FaceGeometry:
    """All canonical shapes of one face in one pose: ``parts`` maps a name to (N, 3) points,
    ``landmarks`` is (98, 3) in WFLW order."""

    def __init__(self, p: IdentityParams, expr: Expression, yaw_deg: float):
        self.p, self.expr = p, expr
        self.head = Head(p, yaw_deg)
        self.parts: dict[str, np.ndarray] = {}
        self.landmarks = np.zeros((NUM_LANDMARKS, 3))
        self._outline()
        self._eyes()
        self._brows()
        self._nose()
        self._mouth()

    # --- head outline and WFLW contour 0-32 -------------------------------------------------------
    def _outline(self):
        h = self.head
        w_low, y_low, x_up, y_up = h.outline_2d()
        self.lower_w, self.lower_y = w_low, y_low
        left = h.rim(w_low, y_low, -1.0)
        right = h.rim(w_low[::-1], y_low[::-1], 1.0)
        top = h.rim(np.abs(x_up), y_up, np.sign(x_up))
        self.parts["outline"] = np.concatenate([left, right[1:], top[1:-1]])
        # 17 points per side equally spaced along the arc, point 16 the chin
        cw, cy = _arc_positions(w_low, y_low, np.linspace(0.0, 1.0, 17))
        self.landmarks[0:17] = h.rim(cw, cy, -1.0)
        self.landmarks[16:33] = h.rim(cw[::-1], cy[::-1], 1.0)

    # --- eyes: WFLW 60-67 (image-left), 68-75 (image-right), pupils 96/97 --------------------------
    def _eyes(self):
        p, e, h = self.p, self.expr, self.head
        t = np.linspace(0.0, 1.0, 9)  # outer corner (0) to inner corner (1)
        opening = p.eye_open * (1.0 - 0.3 * e.smile + 0.3 * e.brow_raise)
        lower_open = 0.5 * p.eye_open * (1.0 - 0.15 * e.smile)
        r_iris = p.iris_ratio * p.eye_half_width
        for side, name in ((-1.0, "left"), (1.0, "right")):
            cx, cy = side * p.eye_spacing, p.eye_y
            xo, xi = cx + side * p.eye_half_width, cx - side * p.eye_half_width
            yo, yi = cy - p.eye_tilt, cy + 0.4 * p.eye_tilt
            xs = xo + (xi - xo) * t
            base = yo + (yi - yo) * t
            upper_y = base - opening * np.sin(math.pi * t ** p.lid_shape) ** 0.9
            lower_y = base + lower_open * np.sin(math.pi * t)
            upper = h.surface(xs, upper_y, -0.005)
            lower = h.surface(xs, lower_y, -0.005)
            self.parts[f"{name}_eye"] = np.concatenate([upper, lower[-2:0:-1]])
            self.parts[f"{name}_lid_upper"] = upper
            self.parts[f"{name}_lid_lower"] = lower
            cover = r_iris + 0.012
            self.parts[f"{name}_mask_upper"] = np.concatenate([upper, h.surface(xs[::-1], upper_y[::-1] - cover)])
            self.parts[f"{name}_mask_lower"] = np.concatenate([lower, h.surface(xs[::-1], lower_y[::-1] + cover)])
            # iris and pupil, shifted by gaze
            ix = cx + e.gaze[0] * 0.3 * p.eye_half_width
            iy = cy - 0.2 * opening + e.gaze[1] * 0.2 * p.eye_open
            ex_, ey_ = _ellipse(ix, iy, r_iris, r_iris, 14)
            self.parts[f"{name}_iris"] = h.surface(ex_, ey_, 0.0)
            px_, py_ = _ellipse(ix, iy, 0.42 * r_iris, 0.42 * r_iris, 10)
            self.parts[f"{name}_pupil"] = h.surface(px_, py_, 0.001)
            gx_, gy_ = _ellipse(ix + 0.3 * r_iris, iy - 0.35 * r_iris, 0.18 * r_iris, 0.18 * r_iris, 6)
            self.parts[f"{name}_glint"] = h.surface(gx_, gy_, 0.002)
            centre = h.surface(np.array([ix]), iy, 0.001)
            # eyeshadow band above the upper lid, bags below the lower lid
            self.parts[f"{name}_shadow"] = np.concatenate(
                [upper, h.surface(xs[::-1], upper_y[::-1] - 0.35 * opening - 0.018 * np.sin(math.pi * t))])
            self.parts[f"{name}_bag"] = h.surface(xs[2:8], lower_y[2:8] + 0.022 + 0.01 * np.sin(math.pi * t[2:8]))
            if side < 0:  # 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid back to outer
                self.landmarks[60:65] = upper[[0, 2, 4, 6, 8]]
                self.landmarks[65:68] = lower[[6, 4, 2]]
                self.landmarks[96] = centre[0]
            else:  # 68 inner corner, 69-71 upper lid, 72 outer corner, 73-75 lower lid back to inner
                self.landmarks[68:73] = upper[[8, 6, 4, 2, 0]]
                self.landmarks[73:76] = lower[[2, 4, 6]]
                self.landmarks[97] = centre[0]

    # --- brows: WFLW 33-41 (left), 42-50 (right) --------------------------------------------------
    def _brows(self):
        p, e, h = self.p, self.expr, self.head
        t = np.linspace(0.0, 1.0, 21)  # tail (0) to head (1)
        taper = 0.12 + 0.88 * np.sin(0.5 * math.pi * t) ** 0.6
        base = p.eye_y - p.brow_gap - 0.03 * e.brow_raise
        arch = p.brow_arch * (1.0 + 0.4 * e.brow_raise)
        centre = base - arch * np.sin(math.pi * t ** 0.65) ** 1.5 + p.brow_slope * (t - 0.5)
        half = 0.5 * p.brow_thickness * taper
        for side, name in ((-1.0, "left"), (1.0, "right")):
            x_tail = side * (p.eye_spacing + 1.25 * p.eye_half_width * p.brow_length)
            x_head = side * (p.eye_spacing - 1.0 * p.eye_half_width)
            xs = x_tail + (x_head - x_tail) * t
            upper = h.surface(xs, centre - half, 0.003)
            lower = h.surface(xs, centre + half, 0.003)
            self.parts[f"{name}_brow"] = np.concatenate([upper, lower[::-1]])
            if side < 0:  # 33 tail .. 37 head along the upper edge, 38-41 lower edge head -> tail
                self.landmarks[33:38] = upper[[0, 5, 10, 15, 20]]
                self.landmarks[38:42] = lower[[16, 12, 8, 4]]
            else:  # 42 head .. 46 tail along the upper edge, 47-50 lower edge tail -> head
                self.landmarks[42:47] = upper[[20, 15, 10, 5, 0]]
                self.landmarks[47:51] = lower[[4, 8, 12, 16]]

    # --- nose: WFLW 51-54 bridge, 55-59 bottom ----------------------------------------------------
    def _nose(self):
        p, h = self.p, self.head
        top, base_y = p.eye_y - 0.01, p.eye_y + p.nose_length
        tip_y = p.eye_y + 0.8 * p.nose_length
        self.nose_base_y = base_y
        lift = p.nose_length / 0.21
        bridge_y = top + (tip_y - top) * np.array([0.0, 1 / 3, 2 / 3, 1.0])
        self.landmarks[51:55] = h.surface(np.zeros(4), bridge_y, np.array([0.02, 0.05, 0.09, 0.13]) * lift)
        nw = p.nose_width
        bx = nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        by = base_y + np.array([-0.022, -0.006, 0.012 * p.nose_pointy, -0.006, -0.022])
        self.landmarks[55:60] = h.surface(bx, by, np.array([0.02, 0.06, 0.08, 0.06, 0.02]) * lift)
        self.parts["nose_bridge"] = self.landmarks[51:55]
        self.parts["nose_bottom"] = self.landmarks[55:60]
        for side, name in ((-1.0, "left"), (1.0, "right")):
            ax = side * nw * np.array([1.0, 1.12, 0.8])
            ay = base_y + np.array([-0.022, -0.05, -0.075])
            self.parts[f"{name}_ala"] = h.surface(ax, ay, np.array([0.02, 0.03, 0.05]) * lift)
            nx, ny = _ellipse(side * nw * 0.5, base_y - 0.013, nw * 0.28, 0.0085, 8)
            self.parts[f"{name}_nostril"] = h.surface(nx, ny, 0.05 * lift)
        tx, ty = _ellipse(0.0, tip_y + 0.004, nw * 0.32, nw * 0.24, 8)
        self.parts["nose_tip"] = h.surface(tx, ty, 0.13 * lift)

    # --- mouth: WFLW 76-87 outer lip, 88-95 inner lip ---------------------------------------------
    def _mouth(self):
        p, e, h = self.p, self.expr, self.head
        mw = p.mouth_half_width * (1.0 + 0.15 * e.smile)
        my = self.nose_base_y + p.mouth_gap
        lift = 0.022 * e.smile
        gap = 0.05 * e.mouth_open
        upper_t = p.upper_lip * (1.0 - 0.25 * e.smile)
        u_out = np.array([-1, -0.8, -0.6, -0.44, -0.28, -0.14, 0, 0.14, 0.28, 0.44, 0.6, 0.8, 1.0])
        u_in = np.array([-0.85, -0.64, -0.42, -0.21, 0.0, 0.21, 0.42, 0.64, 0.85])

        def mid(u):
            return my - lift * u * u

        def opening(u):
            return gap * np.clip(1.0 - (u / 0.85) ** 2, 0.0, 1.0)

        bow = np.sqrt(np.clip(1 - u_out ** 2, 0, 1)) * (1.0 - 0.3 * np.exp(-(u_out / 0.13) ** 2))
        up_out_y = mid(u_out) - 0.3 * opening(u_out) - upper_t * bow
        lo_out_y = mid(u_out) + 0.7 * opening(u_out) + p.lower_lip * np.clip(1 - u_out ** 2, 0, 1) ** 0.6
        up_in_y = mid(u_in) - 0.3 * opening(u_in)
        lo_in_y = mid(u_in) + 0.7 * opening(u_in)
        pout_out = 0.035 * np.clip(1 - u_out ** 2, 0, 1)
        pout_in = 0.03 * np.clip(1 - u_in ** 2, 0, 1)
        upper_outer = h.surface(mw * u_out, up_out_y, pout_out)
        lower_outer = h.surface(mw * u_out, lo_out_y, pout_out)
        upper_inner = h.surface(mw * u_in, up_in_y, pout_in)
        lower_inner = h.surface(mw * u_in, lo_in_y, pout_in)
        self.mouth_y, self.mouth_half = my, mw
        self.lower_lip_bottom = float(lo_out_y[6])
        self.parts["lips"] = np.concatenate([upper_outer, lower_outer[-2:0:-1]])
        self.parts["mouth_inside"] = np.concatenate([upper_inner, lower_inner[-2:0:-1]])
        self.parts["lip_line"] = upper_inner
        teeth_low = np.minimum(up_in_y + gap * (0.35 + 0.45 * e.smile), lo_in_y)
        self.parts["teeth"] = np.concatenate([upper_inner, h.surface(mw * u_in[::-1], teeth_low[::-1], pout_in)])
        self.parts["upper_lip_outer"] = upper_outer
        self.parts["lower_lip_outer"] = lower_outer
        self.landmarks[76:83] = upper_outer[[0, 2, 4, 6, 8, 10, 12]]
        self.landmarks[83:88] = lower_outer[[10, 8, 6, 4, 2]]
        self.landmarks[88:93] = upper_inner[[0, 2, 4, 6, 8]]
        self.landmarks[93:96] = lower_inner[[6, 4, 2]]
