"""Canonical shapes of head hair, facial hair, ears and skin marks (frame: see geometry.py).

Each function adds named polygons to a ``FaceGeometry``'s shape buffer; draw.py fills them. Hair
outside the face outline is made of slice silhouettes (``Shapes.rim``) so that it follows the head
when it turns; hair on the face (hairline, fringe, beard edges) is made of surface points.
"""
from __future__ import annotations

import math

import numpy as np

from datamodules.synth.geometry import POUT_OUT, U_OUT, FaceGeometry
from datamodules.synth.head import ellipse

# (amplitude, spatial frequency) of the hair outline for each texture
WAVES = {"straight": (0.004, 5.0), "wavy": (0.02, 11.0), "other": (0.012, 26.0)}
CAP_PSI = np.linspace(math.pi, 0.0, 25)
BACK_PSI = np.linspace(math.pi, 0.0, 17)[4:-4]
SIDE_T = np.linspace(0.0, 1.0, 4)
LONG_T = np.linspace(0.0, 1.0, 9)
STRAND_T = np.linspace(0.0, 1.0, 4)
HAIR_BAND = 0.035  # width of the hair strip inside the face outline at the temples


def _cap_outer(fg: FaceGeometry, side_bottom: float, vol: float, vol_side: float):
    """Outer edge of the hair over the skull, left side bottom -> top -> right side bottom (2-D)."""
    p, h = fg.p, fg.head
    amp, freq = WAVES[p.hair_texture]
    ys = side_bottom + (h.split - side_bottom) * SIDE_T
    ws = h.half_width(ys) + vol_side
    x_arc, y_arc = h.upper_outline(vol_side, vol, amp * np.sin(freq * CAP_PSI + p.hair_phase), CAP_PSI)
    x_arc = x_arc + 0.04 * p.hair_parting * np.sin(CAP_PSI) ** 2  # hair leans away from the parting
    return np.concatenate([-ws, x_arc[1:-1], ws[::-1]]), np.concatenate([ys, y_arc[1:-1], ys[::-1]])


def _hairline(fg: FaceGeometry, side_bottom: float, temple_y: float):
    """Inner edge of the hair on the face, right side bottom -> across the forehead -> left side
    bottom (2-D), shaped by the style: plain (with a parting), receding (M-shape) or a jagged fringe."""
    p, h = fg.p, fg.head
    side_y = np.array([side_bottom, 0.5 * (side_bottom + temple_y), temple_y])
    side_x = h.half_width(side_y) - HAIR_BAND
    if p.hair_style == "bangs":
        fringe_y = fg.brow_y - 0.03
        xw = h.width_at(fringe_y) - HAIR_BAND
        x = np.linspace(xw, -xw, 13)
        y = fringe_y - 0.02 * (x / xw) ** 2 - 0.012 * (np.arange(13) % 2)
    elif p.hair_style == "receding":
        xw = h.width_at(temple_y) - HAIR_BAND
        x = np.linspace(xw, -xw, 11)
        r = x / xw
        y = p.hairline + 0.05 * np.exp(-(r / 0.3) ** 2) - 0.03 * r ** 2 + 0.07 * np.abs(r) ** 6
    else:
        xw = h.width_at(temple_y) - HAIR_BAND
        x = np.linspace(xw, -xw, 11)
        apex = p.hair_parting * 0.3 * xw
        r = np.minimum(np.abs(x - apex) / (xw + abs(apex)), 1.0)
        y = p.hairline + (temple_y - p.hairline) * r ** 2.2
    return np.concatenate([side_x, x, -side_x[::-1]]), np.concatenate([side_y, y, side_y[::-1]])


def add_hair_back(fg: FaceGeometry) -> None:
    """Long hair falling behind the head and beside the neck (drawn before the face)."""
    p, h, sh = fg.p, fg.head, fg.shapes
    if p.hair_style == "bald" or not p.hair_long:
        return
    vol = p.hair_volume
    amp, freq = WAVES[p.hair_texture]
    bottom = 0.35 + p.hair_length
    top = h.split - 0.05
    ys = top + (bottom - top) * LONG_T
    flare = (0.04 + 0.06 * p.hair_length) * LONG_T  # hair spreads towards its ends
    out_w = h.W + p.hair_side_volume + 0.01 + flare + 1.5 * amp * np.sin(freq * 3.8 * ys + p.hair_phase)
    inner = p.neck_width + 0.03
    bottom_x = np.linspace(out_w[-1], inner, 4)
    jag = 0.03 * (np.arange(4) % 2)
    ax, ay = h.upper_outline(p.hair_side_volume + 0.01, vol, 0.0, BACK_PSI)
    x = np.concatenate([-out_w, -bottom_x, [-inner, inner], bottom_x[::-1], out_w[::-1], ax[::-1]])
    y = np.concatenate([ys, bottom - jag, [0.3, 0.3], bottom - jag[::-1], ys[::-1], ay[::-1]])
    start = sh.mark()
    sh.rim_xy(x, y)
    sh.close("hair_back", start)


def add_hair(fg: FaceGeometry) -> None:
    """Hair cap over the skull with its hairline or fringe, strands, or a bald scalp shine."""
    p, h, sh = fg.p, fg.head, fg.shapes
    if p.hair_style == "bald":
        start = sh.mark()
        sh.surface(*ellipse(-0.06, -0.40, 0.09, 0.035, 10))
        sh.close("scalp_shine", start)
        return
    vol, vol_side = p.hair_volume, p.hair_side_volume
    side_bottom = p.eye_y - 0.05
    temple_y = fg.brow_y - 0.045
    ox, oy = _cap_outer(fg, side_bottom, vol, vol_side)
    ix, iy = _hairline(fg, side_bottom, temple_y)
    start = sh.mark()
    sh.rim_xy(ox, oy)
    sh.surface(ix, iy, 0.004)
    sh.close("hair_cap", start)
    for k, frac in enumerate((0.2, 0.4, 0.6, 0.8)):  # strands from the hairline towards the crown
        j = int(frac * (len(ix) - 1))
        x0, y0 = ix[j], iy[j] - 0.01
        x1, y1 = 0.5 * ix[j] + 0.03 * (k - 1.5), -0.5 - 0.3 * vol
        start = sh.mark()
        sh.surface(x0 + (x1 - x0) * STRAND_T, y0 + (y1 - y0) * STRAND_T, 0.006)
        sh.close("hair_strands", start)


def add_ears(fg: FaceGeometry) -> None:
    """Ears behind the cheek line (z behind the slice centre, so the far ear hides when the head turns)."""
    p, sh = fg.p, fg.shapes
    y_ear = p.eye_y + 0.055
    w = fg.head.width_at(y_ear)
    z = -0.25 * p.head_depth
    fg.lobes = {}
    for side, name in ((-1.0, "left"), (1.0, "right")):
        cx = side * (w + 0.5 * p.ear_out - 0.012)
        start = sh.mark()
        sh.fixed(*ellipse(cx, y_ear, 0.6 * p.ear_out + 0.012, 0.5 * p.ear_size, 12), z)
        sh.close("ears", start)
        start = sh.mark()
        sh.fixed(*ellipse(cx - side * 0.004, y_ear, 0.3 * p.ear_out + 0.006, 0.3 * p.ear_size, 8), z + 0.002)
        sh.close("ears_inner", start)
        fg.lobes[name] = (side * (w + 0.45 * p.ear_out), y_ear + 0.42 * p.ear_size, z + 0.01)


def _lower_outline_below(fg: FaceGeometry, y0: float, w_max: float | None = None) -> None:
    """Append rim points of the lower outline below height y0 (narrower than w_max): the left side
    from the top down to the chin, then the right side back up."""
    w, y = fg.lower_w, fg.lower_y
    keep = y >= y0
    if w_max is not None:
        keep &= w <= w_max
    w, y = w[keep], y[keep]
    fg.shapes.rim(w, y, -1.0)
    fg.shapes.rim(w[-2::-1], y[-2::-1], 1.0)


def add_facial_hair(fg: FaceGeometry) -> None:
    """Beard, goatee, mustache, sideburns and stubble: regions bounded by the face outline (so the
    outline stays the silhouette) and by curves around the mouth and nose."""
    p, h, sh = fg.p, fg.head, fg.shapes
    mw, my, base = fg.mouth_half, fg.mouth_y, fg.nose_base_y
    llb = fg.lower_lip_bottom
    if p.stubble or p.beard == "full":
        y0 = base - 0.02 if p.beard == "full" else p.eye_y + 0.1
        w0 = h.width_at(y0)
        if p.beard == "full":
            half = np.array([[w0 * 0.82, y0], [mw + 0.035, my - 0.01], [mw * 0.55, llb + 0.018]])
            inner = np.concatenate([half, [[0.0, llb + 0.022]], half[::-1] * [-1, 1]])
        else:
            half = np.array([[w0 * 0.85, y0], [p.nose_width + 0.03, base + 0.005]])
            inner = np.concatenate([half, [[0.0, base + 0.012]], half[::-1] * [-1, 1]])
        start = sh.mark()
        _lower_outline_below(fg, y0)
        sh.surface(inner[:, 0], inner[:, 1], 0.01)
        sh.close("beard" if p.beard == "full" else "stubble", start)
    if p.beard == "goatee":
        u = np.linspace(-1.0, 1.0, 7)
        start = sh.mark()
        sh.surface(0.62 * mw * u, llb + 0.006 - 0.008 * (1 - u ** 2) + 0.01 * u ** 2, 0.03)
        keep = fg.lower_w <= 0.7 * mw
        w, y = fg.lower_w[keep], fg.lower_y[keep]
        sh.rim(w, y, 1.0)  # down the right side of the chin, then back up the left
        sh.rim(w[-2::-1], y[-2::-1], -1.0)
        sh.close("goatee", start)
    if p.mustache:
        u = np.linspace(-1.0, 1.0, 9)
        corner_y = float(fg.upper_lip_y[0])
        start = sh.mark()
        sh.surface([-1.12 * mw], my + 0.012, 0.02)
        sh.surface(1.05 * mw * u, base + 0.014 + u ** 2 * (corner_y - base - 0.014) * 0.55, 0.04)
        sh.surface([1.12 * mw], my + 0.012, 0.02)
        sh.surface(mw * U_OUT[::-1], fg.upper_lip_y[::-1] - 0.002, POUT_OUT[::-1])
        sh.close("mustache", start)
    if p.sideburns:
        ys = np.linspace(p.eye_y - 0.06, p.eye_y + 0.11, 6)
        ws = h.half_width(ys)
        for side in (-1.0, 1.0):
            start = sh.mark()
            sh.rim(ws, ys, side)
            sh.surface(side * (ws[::-1] - 0.045 + 0.015 * np.linspace(0.0, 1.0, 6)), ys[::-1])
            sh.close("sideburns", start)


def add_folds(fg: FaceGeometry) -> None:
    """Nose-to-mouth folds: with a smile, or always on older faces."""
    p, sh = fg.p, fg.shapes
    mw, my, base = fg.mouth_half, fg.mouth_y, fg.nose_base_y
    if max(fg.expr.smile, 0.6 if p.wrinkles else 0.0) <= 0.3:
        return
    for side in (-1.0, 1.0):
        start = sh.mark()
        sh.surface(side * np.array([p.nose_width + 0.012, p.nose_width + 0.04, mw + 0.022]),
                   np.array([base - 0.03, base + 0.025, my + 0.015]))
        sh.close("folds", start)


def add_skin_marks(fg: FaceGeometry) -> None:
    """Cheek highlights and blush, wrinkles, double chin, moles and scars."""
    p, sh = fg.p, fg.shapes
    for side in (-1.0, 1.0):
        cx = side * (p.eye_spacing + 0.02)
        if p.high_cheekbones:
            start = sh.mark()
            sh.surface(*ellipse(cx + side * 0.02, p.eye_y + 0.1, 0.075, 0.022, 10))
            sh.close("cheekbones", start)
        if p.rosy_cheeks or p.heavy_makeup:
            start = sh.mark()
            sh.surface(*ellipse(cx, p.eye_y + 0.15, 0.055, 0.04, 10))
            sh.close("blush", start)
    if p.wrinkles:
        x = np.linspace(-0.11, 0.11, 5)
        for k in range(2):
            start = sh.mark()
            sh.surface(x, fg.brow_y - 0.05 - 0.03 * k - 0.012 * (1 - (x / 0.11) ** 2))
            sh.close("forehead_lines", start)
    if p.double_chin:
        keep = fg.lower_w <= 0.55 * p.face_half_width
        w, y = 0.9 * fg.lower_w[keep], fg.lower_y[keep] + 0.04
        start = sh.mark()
        sh.rim(w, y, -1.0)
        sh.rim(w[-2::-1], y[-2::-1], 1.0)
        sh.close("double_chin", start)
    for mx, my_, r in p.moles:
        start = sh.mark()
        sh.surface(*ellipse(mx, my_, r, r, 8), 0.002)
        sh.close("moles", start)
    if p.scar is not None:
        x0, y0, dx, dy = p.scar
        start = sh.mark()
        sh.surface(np.array([x0, x0 + 0.5 * dx, x0 + dx]), np.array([y0, y0 + 0.5 * dy + 0.005, y0 + dy]), 0.001)
        sh.close("scar", start)
