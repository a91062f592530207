"""Canonical shapes of head hair, facial hair, ears and skin marks (see geometry.py for the frame).

Each function adds named (N, 3) point arrays to a ``FaceGeometry``'s ``parts``; draw.py fills them.
Hair outside the face outline is built from slice silhouettes (``Head.rim``) so that it follows the
head when it turns; hair on the face (hairline, fringe, beard edges) is made of surface points.
"""
from __future__ import annotations

import math

import numpy as np

from datamodules.synth.geometry import FOREHEAD_EXPONENT, FaceGeometry, _ellipse

# (amplitude, spatial frequency) of the hair outline for each texture
WAVES = {"straight": (0.004, 5.0), "wavy": (0.02, 11.0), "other": (0.012, 26.0)}


def _rim_xy(fg: FaceGeometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return fg.head.rim(np.abs(x), y, np.where(x < 0, -1.0, 1.0))


def _cap_outer(fg: FaceGeometry, side_bottom: float, vol: float, vol_side: float, n: int = 25):
    """Outer edge of the hair over the skull, left side bottom -> top -> right side bottom (2-D)."""
    p, h = fg.p, fg.head
    amp, freq = WAVES[p.hair_texture]
    ys = np.linspace(side_bottom, h.split, 4)
    ws = h.half_width(ys) + vol_side
    psi = np.linspace(math.pi, 0.0, n)
    c, s = np.cos(psi), np.sin(psi)
    e = 2.0 / FOREHEAD_EXPONENT
    wave = amp * np.sin(freq * psi + p.hair_phase)
    x_arc = (h.W + vol_side + wave) * np.sign(c) * np.abs(c) ** e
    y_arc = h.split - (h.upper + vol + wave) * np.abs(s) ** e
    x = np.concatenate([-ws, x_arc[1:-1], ws[::-1]])
    y = np.concatenate([ys, y_arc[1:-1], ys[::-1]])
    return x, y


def _hairline(fg: FaceGeometry, side_bottom: float, temple_y: float):
    """Inner edge of the hair on the face, right side bottom -> across the forehead -> left side
    bottom (2-D), shaped by the hair style (plain, receding M-shape, or a jagged fringe)."""
    p, h = fg.p, fg.head
    band = 0.035
    side_y = np.linspace(side_bottom, temple_y, 3)
    side_x = h.half_width(side_y) - band
    brow_y = p.eye_y - p.brow_gap
    if p.hair_style == "bangs":
        xw = h.half_width(np.array([brow_y - 0.03]))[0] - band
        x = np.linspace(xw, -xw, 13)
        jag = 0.012 * (np.arange(13) % 2)
        y = brow_y - 0.03 - 0.02 * (x / xw) ** 2 - jag
    elif p.hair_style == "receding":
        xw = h.half_width(np.array([temple_y]))[0] - band
        x = np.linspace(xw, -xw, 11)
        r = x / xw
        y = p.hairline + 0.05 * np.exp(-(r / 0.3) ** 2) - 0.03 * r ** 2 + 0.07 * np.abs(r) ** 6
    else:
        xw = h.half_width(np.array([temple_y]))[0] - band
        x = np.linspace(xw, -xw, 11)
        apex = p.hair_parting * 0.3 * xw
        r = np.clip(np.abs(x - apex) / (xw + abs(apex)), 0, 1)
        y = p.hairline + (temple_y - p.hairline) * r ** 2.2
    xs = np.concatenate([side_x, x, -side_x[::-1]])
    ys = np.concatenate([side_y, y, side_y[::-1]])
    return xs, ys


def add_hair(fg: FaceGeometry) -> None:
    """Hair cap (front), long back hair, strands, or a bald scalp shine."""
    p, h = fg.p, fg.head
    if p.hair_style == "bald":
        x, y = _ellipse(-0.06, -0.40, 0.09, 0.035, 10)
        fg.parts["scalp_shine"] = h.surface(x, y, 0.0)
        return
    vol = p.hair_volume
    vol_side = vol if p.hair_long else 0.6 * vol
    side_bottom = p.eye_y - 0.05
    temple_y = p.eye_y - p.brow_gap - 0.045
    ox, oy = _cap_outer(fg, side_bottom, vol, vol_side)
    ix, iy = _hairline(fg, side_bottom, temple_y)
    fg.parts["hair_cap"] = np.concatenate([_rim_xy(fg, ox, oy), h.surface(ix, iy, 0.004)])
    # strands: from the hairline towards the crown
    strands = []
    for k, frac in enumerate((0.2, 0.4, 0.6, 0.8)):
        j = int(frac * (len(ix) - 1))
        sx = np.linspace(ix[j], ix[j] * 0.5 + 0.03 * (k - 1.5), 4)
        sy = np.linspace(iy[j] - 0.01, -0.5 - 0.3 * vol, 4)
        strands.append(h.surface(sx, sy, 0.006))
    fg.parts["hair_strands"] = strands
    if p.hair_long:
        amp, freq = WAVES[p.hair_texture]
        bottom = 0.35 + p.hair_length
        flare = 0.04 + 0.06 * p.hair_length
        ys = np.linspace(h.split - 0.05, bottom, 9)
        frac = (ys - ys[0]) / (ys[-1] - ys[0])
        wave = amp * 1.5 * np.sin(freq * 0.6 * ys * 2 * math.pi / 1.0 + p.hair_phase)
        out_w = h.W + vol + 0.01 + flare * frac + wave
        inner = fg.p.neck_width + 0.03
        jag = 0.03 * (np.arange(4) % 2)
        bottom_x = np.linspace(out_w[-1], inner, 4)
        left = np.stack([-out_w, ys], 1)
        left_bottom = np.stack([-bottom_x, bottom - jag], 1)
        left_inner = np.array([[-inner, bottom], [-inner, 0.3]])
        right_inner = np.array([[inner, 0.3], [inner, bottom]])
        right_bottom = np.stack([bottom_x[::-1], bottom - jag[::-1]], 1)
        right = np.stack([out_w[::-1], ys[::-1]], 1)
        ax, ay = _cap_outer(fg, h.split - 0.05, vol, vol + 0.01, n=17)
        pts = np.concatenate([left, left_bottom, left_inner, right_inner, right_bottom, right,
                              np.stack([ax[::-1], ay[::-1]], 1)[4:-4]])
        back = _rim_xy(fg, pts[:, 0], pts[:, 1])
        back[:, 2] -= 0.05
        fg.parts["hair_back"] = back


def add_ears(fg: FaceGeometry) -> None:
    p, h = fg.p, fg.head
    y_ear = p.eye_y + 0.055
    w = float(h.half_width(np.array([y_ear]))[0])
    z = -0.25 * p.head_depth
    for side, name in ((-1.0, "left"), (1.0, "right")):
        cx = side * (w + 0.4 * p.ear_out - 0.01)
        x, y = _ellipse(cx, y_ear, 0.55 * p.ear_out + 0.012, 0.5 * p.ear_size, 12)
        fg.parts[f"{name}_ear"] = np.stack([x, y, np.full_like(x, z)], 1)
        x, y = _ellipse(cx - side * 0.004, y_ear, 0.3 * p.ear_out + 0.006, 0.3 * p.ear_size, 8)
        fg.parts[f"{name}_ear_inner"] = np.stack([x, y, np.full_like(x, z + 0.002)], 1)
        fg.parts[f"{name}_lobe"] = np.array([[side * (w + 0.35 * p.ear_out), y_ear + 0.42 * p.ear_size, z + 0.004]])


def _lower_outline_below(fg: FaceGeometry, y0: float, w_max: float | None = None) -> np.ndarray:
    """Rim points of the lower outline below height y0 (and narrower than w_max), left side from
    the top down to the chin, then the right side back up."""
    w, y = fg.lower_w, fg.lower_y
    keep = y >= y0
    if w_max is not None:
        keep &= w <= w_max
    w, y = w[keep], y[keep]
    left = fg.head.rim(w, y, -1.0)
    right = fg.head.rim(w[::-1], y[::-1], 1.0)
    return np.concatenate([left, right[1:]])


def add_facial_hair(fg: FaceGeometry) -> None:
    """Beard, goatee, mustache, sideburns and stubble: regions bounded by the face outline (so the
    outline stays the silhouette) and by curves around the mouth and nose."""
    p, h = fg.p, fg.head
    mw, my, base = fg.mouth_half, fg.mouth_y, fg.nose_base_y
    llb = fg.lower_lip_bottom
    if p.stubble or p.beard == "full":
        y0 = base - 0.02 if p.beard == "full" else p.eye_y + 0.1
        outer = _lower_outline_below(fg, y0)
        w0 = float(h.half_width(np.array([y0]))[0])
        if p.beard == "full":
            half = np.array([[w0 * 0.82, y0], [mw + 0.035, my - 0.01], [mw * 0.55, llb + 0.018]])
            inner = np.concatenate([half, [[0.0, llb + 0.022]], half[::-1] * [-1, 1]])
        else:
            half = np.array([[w0 * 0.85, y0], [p.nose_width + 0.03, base + 0.005]])
            inner = np.concatenate([half, [[0.0, base + 0.012]], half[::-1] * [-1, 1]])
        fg.parts["beard" if p.beard == "full" else "stubble"] = np.concatenate(
            [outer, h.surface(inner[:, 0], inner[:, 1], 0.01)])
    if p.beard == "goatee":
        u = np.linspace(-0.62, 0.62, 7)
        top = h.surface(mw * u, llb + 0.006 - 0.008 * (1 - (u / 0.62) ** 2) + 0.01 * (u / 0.62) ** 2, 0.03)
        chin = _lower_outline_below(fg, h.split, w_max=0.7 * mw)
        fg.parts["goatee"] = np.concatenate([top, chin[::-1]])
    if p.mustache:
        upper_outer = fg.parts["upper_lip_outer"]
        u = np.linspace(-1.0, 1.0, 9)
        corner_y = float(upper_outer[0, 1])
        top_y = base + 0.014 + (u ** 2) * (corner_y - base - 0.014) * 0.55
        top = h.surface(1.05 * mw * u, top_y, 0.04)
        droop_l = h.surface(np.array([-1.12 * mw]), my + 0.012, 0.02)
        droop_r = h.surface(np.array([1.12 * mw]), my + 0.012, 0.02)
        under = upper_outer[::-1].copy()
        under[:, 1] -= 0.002
        fg.parts["mustache"] = np.concatenate([droop_l, top, droop_r, under])
    if p.sideburns:
        ys = np.linspace(p.eye_y - 0.06, p.eye_y + 0.11, 6)
        ws = h.half_width(ys)
        for side, name in ((-1.0, "left"), (1.0, "right")):
            outer = h.rim(ws, ys, side)
            inner = h.surface(side * (ws[::-1] - 0.045 + 0.015 * np.linspace(0, 1, 6)), ys[::-1], 0.0)
            fg.parts[f"{name}_sideburn"] = np.concatenate([outer, inner])


def add_skin_marks(fg: FaceGeometry) -> None:
    """Cheek highlights and blush, eye bags, wrinkles, folds, double chin, moles and scars."""
    p, e, h = fg.p, fg.expr, fg.head
    mw, my, base = fg.mouth_half, fg.mouth_y, fg.nose_base_y
    for side, name in ((-1.0, "left"), (1.0, "right")):
        cx = side * (p.eye_spacing + 0.02)
        if p.high_cheekbones:
            x, y = _ellipse(cx + side * 0.02, p.eye_y + 0.1, 0.075, 0.022, 10, angle0=0.0)
            fg.parts[f"{name}_cheekbone"] = h.surface(x, y - side * 0.3 * (x - cx - side * 0.02) * 0.4, 0.0)
        if p.rosy_cheeks or p.heavy_makeup:
            x, y = _ellipse(cx, p.eye_y + 0.15, 0.055, 0.04, 10)
            fg.parts[f"{name}_blush"] = h.surface(x, y, 0.0)
        fold = max(e.smile, 0.6 if p.wrinkles else 0.0)
        if fold > 0.3:
            fx = side * np.array([p.nose_width + 0.012, p.nose_width + 0.04, mw + 0.022])
            fy = np.array([base - 0.03, base + 0.025, my + 0.015])
            fg.parts[f"{name}_fold"] = h.surface(fx, fy, 0.0)
    if p.wrinkles:
        brow_y = p.eye_y - p.brow_gap
        lines = []
        for k in range(2):
            x = np.linspace(-0.11, 0.11, 5)
            lines.append(h.surface(x, brow_y - 0.05 - 0.03 * k - 0.012 * (1 - (x / 0.11) ** 2), 0.0))
        fg.parts["forehead_lines"] = lines
    if p.double_chin:
        keep = fg.lower_w <= 0.55 * p.face_half_width
        w, y = fg.lower_w[keep], fg.lower_y[keep] + 0.04
        w = w * 0.9
        fg.parts["double_chin"] = np.concatenate([h.rim(w, y, -1.0), h.rim(w[::-1], y[::-1], 1.0)[1:]])
    moles = []
    for mx, my_, r in p.moles:
        x, y = _ellipse(mx, my_, r, r, 8)
        moles.append(h.surface(x, y, 0.002))
    fg.parts["moles"] = moles
    if p.scar is not None:
        x0, y0, dx, dy = p.scar
        fg.parts["scar"] = h.surface(np.array([x0, x0 + dx * 0.5, x0 + dx]), np.array([y0, y0 + dy * 0.5 + 0.005, y0 + dy]), 0.001)
