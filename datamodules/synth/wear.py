"""Canonical shapes of what a face wears (glasses, hat, earrings) and of the neck and upper body
(clothes, shirt collar and necktie, necklace)."""
from __future__ import annotations

import math

import numpy as np

from datamodules.synth.geometry import FaceGeometry
from datamodules.synth.head import ellipse, unit_circle

HAT_PSI = np.linspace(math.pi, 0.0, 21)


def add_glasses(fg: FaceGeometry) -> None:
    p, h, sh = fg.p, fg.head, fg.shapes
    if p.glasses is None:
        return
    exponent, size = p.glasses[0], p.glasses[1]
    a = p.eye_half_width * size
    b = a * 0.72
    c, s = unit_circle(20)
    e = 2.0 / exponent
    rx, ry = a * np.sign(c) * np.abs(c) ** e, b * np.sign(s) * np.abs(s) ** e
    for side in (-1.0, 1.0):
        start = sh.mark()
        sh.surface(side * p.eye_spacing + rx, p.eye_y + 0.006 + ry, 0.06)
        sh.close("lenses", start)
    inner = p.eye_spacing - a
    start = sh.mark()
    sh.surface(np.array([-inner, -inner * 0.4, inner * 0.4, inner]),
               p.eye_y - 0.3 * b + np.array([0.0, -0.012, -0.012, 0.0]), 0.065)
    sh.close("glasses_bridge", start)
    y = p.eye_y - 0.4 * b
    w = h.width_at(y)
    for side in (-1.0, 1.0):
        x0 = side * (p.eye_spacing + a)
        start = sh.mark()
        sh.surface(np.array([x0, side * 0.5 * (abs(x0) + w), side * w * 0.995]), np.array([y, y - 0.004, y - 0.008]),
                   np.array([0.06, 0.03, 0.0]))
        sh.close("glasses_temples", start)


def add_hat(fg: FaceGeometry) -> None:
    """A dome over the skull down to a band across the forehead, plus the style's band or brim."""
    p, h, sh = fg.p, fg.head, fg.shapes
    if p.hat is None:
        return
    style, _, band = p.hat
    haired = p.hair_style != "bald"
    vol = (p.hair_side_volume + 0.04 if haired else 0.0) + 0.02
    top = (p.hair_volume if haired else 0.0) + (0.12 if style == "fedora" else 0.04)
    band_y = fg.brow_y - 0.17  # across the upper forehead, whatever the hairline
    x_arc, y_arc = h.upper_outline(vol, top, 0.0, HAT_PSI)
    keep = y_arc <= band_y
    w_band = h.width_at(band_y) + vol
    fx = np.linspace(w_band * 0.97, -w_band * 0.97, 9)
    curve = 1 - (fx / w_band) ** 2
    start = sh.mark()
    sh.rim_xy(np.concatenate([[-w_band], x_arc[keep], [w_band]]), np.concatenate([[band_y], y_arc[keep], [band_y]]))
    sh.surface(fx, band_y + 0.012 * curve, 0.02)
    sh.close("hat", start)
    start = sh.mark()
    if style == "beanie":  # folded band above the forehead edge
        sh.surface(fx, band_y + 0.012 * curve, 0.02)
        sh.surface(fx[::-1], band_y - band + 0.01 * curve[::-1], 0.03)
        sh.close("hat_band", start)
    elif style == "cap":  # brim seen from the front
        bx = np.linspace(-0.85, 0.85, 9) * w_band
        sh.surface(bx, band_y + 0.01 * (1 - (bx / w_band) ** 2), 0.05)
        sh.surface(bx[::-1], band_y + 0.015 + 0.05 * (1 - (bx[::-1] / (0.85 * w_band)) ** 2), 0.12)
        sh.close("hat_band", start)
    else:  # fedora: wide brim and a ribbon
        bx, by = ellipse(0.0, band_y - 0.005, 1.45 * w_band, 0.045, 18)
        sh.fixed(bx, by, 0.02)
        sh.close("hat_band", start)
        rx = np.linspace(-w_band * 0.98, w_band * 0.98, 7)
        start = sh.mark()
        sh.surface(rx, band_y - 0.04, 0.03)
        sh.surface(rx[::-1], band_y - 0.075, 0.03)
        sh.close("hat_ribbon", start)


def add_earrings(fg: FaceGeometry) -> None:
    p, sh = fg.p, fg.shapes
    if p.earrings is None:
        return
    style = p.earrings[0]
    for name in ("left", "right"):
        lx, ly, lz = fg.lobes[name]
        if style == "stud":
            x, y = ellipse(lx, ly, 0.011, 0.011, 8)
        elif style == "hoop":
            x, y = ellipse(lx, ly + 0.025, 0.022, 0.026, 12)
        else:
            x, y = ellipse(lx, ly + 0.03, 0.01, 0.028, 10)
        start = sh.mark()
        sh.fixed(x, y, lz)
        sh.close("earrings", start)


def add_body(fg: FaceGeometry) -> None:
    """Neck, clothes, shirt collar and necktie, necklace: fixed points in the plane z = 0 (the body
    does not turn with the head; a yaw only narrows it by cos(yaw))."""
    p, sh = fg.p, fg.shapes
    nw = p.neck_width
    depth, shoulder_y, neckline_y = p.neckline

    def poly(name: str, xy, z: float = 0.0) -> None:
        xy = np.asarray(xy, dtype=float)
        start = sh.mark()
        sh.fixed(xy[:, 0], xy[:, 1], z)
        sh.close(name, start)

    poly("neck", [[-nw, 0.15], [nw, 0.15], [nw * 1.06, 1.0], [-nw * 1.06, 1.0]])
    poly("clothes", [[-nw * 1.3, neckline_y], [0.0, neckline_y + depth], [nw * 1.3, neckline_y],
                     [0.95, shoulder_y], [1.25, shoulder_y + 0.2], [1.4, 2.5], [-1.4, 2.5],
                     [-1.25, shoulder_y + 0.2], [-0.95, shoulder_y]])
    if p.necktie is not None:
        sy = neckline_y - 0.02
        poly("shirt", [[-nw * 0.9, sy], [nw * 0.9, sy], [0.17, 1.5], [-0.17, 1.5]])
        poly("collar", [[-nw * 0.95, sy - 0.01], [-0.01, sy + 0.07], [-nw * 0.6, sy + 0.1]])
        poly("collar", [[nw * 0.95, sy - 0.01], [0.01, sy + 0.07], [nw * 0.6, sy + 0.1]])
        poly("tie", [[-0.028, sy + 0.035], [0.028, sy + 0.035], [0.022, sy + 0.08], [0.055, sy + 0.4],
                     [0.0, sy + 0.47], [-0.055, sy + 0.4], [-0.022, sy + 0.08]])
    if p.necklace is not None:
        t = np.linspace(-1.0, 1.0, 9)
        poly("necklace", np.stack([t * nw, neckline_y - 0.1 + 0.09 * (1 - t ** 2)], 1))
