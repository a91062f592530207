"""Canonical shapes of what a face wears (glasses, hat, earrings) and of the neck and upper body
(clothes, necktie, necklace). Body parts go to ``body`` (drawn with a smaller yaw than the head)."""
from __future__ import annotations

import math

import numpy as np

from datamodules.synth.geometry import FOREHEAD_EXPONENT, FaceGeometry, _ellipse


def add_glasses(fg: FaceGeometry) -> None:
    p, h = fg.p, fg.head
    if p.glasses is None:
        return
    exponent, size, _, _, _ = p.glasses
    a = p.eye_half_width * size
    b = a * 0.72
    t = np.linspace(0.0, 2 * math.pi, 20, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / exponent
    lenses = []
    for side in (-1.0, 1.0):
        cx, cy = side * p.eye_spacing, p.eye_y + 0.006
        x = cx + a * np.sign(c) * np.abs(c) ** e
        y = cy + b * np.sign(s) * np.abs(s) ** e
        lenses.append(h.surface(x, y, 0.06))
    fg.parts["lenses"] = lenses
    inner = p.eye_spacing - a
    fg.parts["glasses_bridge"] = h.surface(np.array([-inner, -inner * 0.4, inner * 0.4, inner]),
                                           p.eye_y - 0.3 * b + np.array([0.0, -0.012, -0.012, 0.0]), 0.065)
    temples = []
    for side in (-1.0, 1.0):
        y = p.eye_y - 0.4 * b
        w = float(h.half_width(np.array([y]))[0])
        x0 = side * (p.eye_spacing + a)
        temples.append(h.surface(np.array([x0, side * (0.5 * (abs(x0) + w)), side * w * 0.995]),
                                 np.array([y, y - 0.004, y - 0.008]), np.array([0.06, 0.03, 0.0])))
    fg.parts["glasses_temples"] = temples


def add_hat(fg: FaceGeometry) -> None:
    p, h = fg.p, fg.head
    if p.hat is None:
        return
    style, _, band = p.hat
    vol = (p.hair_volume if p.hair_style != "bald" else 0.0) + 0.02
    band_y = min(p.hairline, -0.3) + 0.01
    ys = np.linspace(band_y, h.split, 3) if band_y > h.split else np.array([band_y])
    psi = np.linspace(math.pi, 0.0, 21)
    c, s = np.cos(psi), np.sin(psi)
    e = 2.0 / FOREHEAD_EXPONENT
    top_extra = vol + (0.1 if style == "fedora" else 0.02)
    x_arc = (h.W + vol) * np.sign(c) * np.abs(c) ** e
    y_arc = h.split - (h.upper + top_extra) * np.abs(s) ** e
    keep = y_arc <= band_y
    x_arc, y_arc = x_arc[keep], y_arc[keep]
    w_band = float(h.half_width(np.array([band_y]))[0]) + vol
    x = np.concatenate([[-w_band], x_arc, [w_band]])
    y = np.concatenate([[band_y], y_arc, [band_y]])
    dome = h.rim(np.abs(x), y, np.where(x < 0, -1.0, 1.0))
    fx = np.linspace(w_band * 0.97, -w_band * 0.97, 9)
    front = h.surface(fx, band_y + 0.012 * (1 - (fx / w_band) ** 2), 0.02)
    fg.parts["hat"] = np.concatenate([dome, front])
    if style == "beanie":
        fx2 = fx[::-1]
        upper = h.surface(fx2, band_y - band + 0.01 * (1 - (fx2 / w_band) ** 2), 0.03)
        fg.parts["hat_band"] = np.concatenate([front, upper])
    elif style == "cap":
        bx = np.linspace(-0.85, 0.85, 9) * w_band
        brim_low = h.surface(bx[::-1], band_y + 0.015 + 0.05 * (1 - (bx[::-1] / (0.85 * w_band)) ** 2), 0.12)
        brim_top = h.surface(bx, band_y + 0.01 * (1 - (bx / w_band) ** 2), 0.05)
        fg.parts["hat_band"] = np.concatenate([brim_top, brim_low])
    else:  # fedora: wide brim and a ribbon
        bx, by = _ellipse(0.0, band_y - 0.005, 1.45 * w_band, 0.045, 18)
        fg.parts["hat_band"] = np.stack([bx, by, np.full_like(bx, 0.02)], 1)
        ribbon_y = band_y - 0.04
        rx = np.linspace(-w_band * 0.98, w_band * 0.98, 7)
        fg.parts["hat_ribbon"] = np.concatenate(
            [h.surface(rx, ribbon_y, 0.03), h.surface(rx[::-1], ribbon_y - 0.035, 0.03)])


def add_earrings(fg: FaceGeometry) -> None:
    p = fg.p
    if p.earrings is None:
        return
    style = p.earrings[0]
    shapes = []
    for name in ("left", "right"):
        lx, ly, lz = fg.parts[f"{name}_lobe"][0]
        if style == "stud":
            x, y = _ellipse(lx, ly, 0.011, 0.011, 8)
        elif style == "hoop":
            x, y = _ellipse(lx, ly + 0.025, 0.022, 0.026, 12)
        else:
            x, y = _ellipse(lx, ly + 0.03, 0.01, 0.028, 10)
        shapes.append(np.stack([x, y, np.full_like(x, lz + 0.01)], 1))
    fg.parts["earrings"] = shapes


def body_parts(fg: FaceGeometry, rng: np.random.Generator) -> dict:
    """Neck, clothes, shirt/necktie, necklace. Also returns the per-image clothes colours."""
    p = fg.p
    nw = p.neck_width
    body: dict[str, np.ndarray] = {}
    z0 = np.zeros(4)
    body["neck"] = np.stack([np.array([-nw, nw, nw * 1.06, -nw * 1.06]), np.array([0.15, 0.15, 1.0, 1.0]), z0], 1)
    depth = rng.uniform(0.03, 0.14)
    shoulder_y = rng.uniform(0.84, 0.9)
    neckline_y = rng.uniform(0.74, 0.8)
    cloth = np.array([
        [-nw * 1.3, neckline_y], [0.0, neckline_y + depth], [nw * 1.3, neckline_y],
        [0.95, shoulder_y], [1.25, shoulder_y + 0.2], [1.4, 2.5], [-1.4, 2.5],
        [-1.25, shoulder_y + 0.2], [-0.95, shoulder_y]])
    body["clothes"] = np.concatenate([cloth, np.zeros((len(cloth), 1))], 1)
    if p.necktie is not None:
        sy = neckline_y - 0.02
        body["shirt"] = np.array([[-nw * 0.9, sy], [nw * 0.9, sy], [0.17, 1.5], [-0.17, 1.5]])
        body["collar"] = [np.array([[-nw * 0.95, sy - 0.01], [-0.01, sy + 0.07], [-nw * 0.6, sy + 0.1]]),
                          np.array([[nw * 0.95, sy - 0.01], [0.01, sy + 0.07], [nw * 0.6, sy + 0.1]])]
        body["tie"] = np.array([[-0.028, sy + 0.035], [0.028, sy + 0.035], [0.022, sy + 0.08], [0.055, sy + 0.4],
                                [0.0, sy + 0.47], [-0.055, sy + 0.4], [-0.022, sy + 0.08]])
        for key in ("shirt", "tie"):
            body[key] = np.concatenate([body[key], np.full((len(body[key]), 1), 0.01)], 1)
        body["collar"] = [np.concatenate([c, np.full((3, 1), 0.02)], 1) for c in body["collar"]]
    if p.necklace is not None:
        t = np.linspace(-1.0, 1.0, 9)
        body["necklace"] = np.stack([t * nw * 1.0, neckline_y - 0.1 + 0.09 * (1 - t ** 2), np.full(9, 0.03)], 1)
    return body
