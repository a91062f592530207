"""Per-image degradations of a rendered face crop, each scaled by a difficulty in [0, 1]:
occluders, lighting (directional gradient, colour cast, gamma, contrast), blur, sensor noise, JPEG."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

AA = cv2.LINE_AA
_NOISE_BANKS: dict[int, np.ndarray] = {}
NOISE_MARGIN = 64
LEVELS = np.arange(256, dtype=np.float64) / 255.0


@dataclass(frozen=True)
class Nuisance:
    """Strength in [0, 1] of each kind of per-image nuisance; ``Nuisance.at(d)`` sets all of them to d.

    At strength s: pose = roll up to 20 s degrees, yaw up to 36 s, scale x exp(+-0.18 s), shift up to
    7 s % of the crop; expression = brow raise and gaze (smiles and open mouths follow their attribute
    rates at every strength); clutter = up to 5 s background shapes; occlusion = an occluder with
    probability 0.3 s; lighting = gradient, colour cast, gamma, contrast and brightness; blur = a
    Gaussian of sigma up to 0.9 s px at 112 px on half the images; noise = Gaussian noise of sigma up to
    10 s grey levels; jpeg = quality down to 95 - 70 s (no JPEG round trip at 0)."""

    pose: float = 0.5
    expression: float = 0.5
    clutter: float = 0.5
    occlusion: float = 0.5
    lighting: float = 0.5
    blur: float = 0.5
    noise: float = 0.5
    jpeg: float = 0.5

    @classmethod
    def at(cls, difficulty: float) -> "Nuisance":
        d = float(min(max(difficulty, 0.0), 1.0))
        return cls(d, d, d, d, d, d, d, d)


def occlude(img: np.ndarray, rng: np.random.Generator, box, difficulty: float) -> bool:
    """With probability 0.3 * difficulty draw one occluder (bar, block, blob or hand-like ellipse)
    over part of the face box. Returns whether one was drawn."""
    if rng.uniform() >= 0.3 * difficulty:
        return False
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    rx, ry = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
    kind = rng.integers(4)
    colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
    if kind == 0:  # bar across the face
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * w, np.sin(angle) * h
        cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), colour,
                 max(1, int(rng.uniform(0.06, 0.16) * h)), AA)
    elif kind == 1:
        cv2.rectangle(img, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), colour, -1, AA)
    elif kind == 2:
        cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(0, 180)), 0, 360, colour, -1, AA)
    else:  # a hand: skin-like ellipse coming from the image border
        skin = tuple(float(c) for c in np.array([200, 150, 120]) * rng.uniform(0.45, 1.15))
        bx = int(x0 - 0.2 * w) if rng.uniform() < 0.5 else int(x1 + 0.2 * w)
        cv2.ellipse(img, (bx, int(cy)), (int(0.55 * w), int(ry)), 0, 0, 360, skin, -1, AA)
    return True


def relight(img: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Directional light gradient and colour cast (one multiply), then gamma/contrast/brightness (one LUT)."""
    d = difficulty
    if d <= 0:
        return img
    size_y, size_x = img.shape[:2]
    a = rng.uniform(0, 0.5 * d)
    angle = rng.uniform(0, 2 * np.pi)
    cast = np.exp(rng.normal(0, 0.15 * d, 3))
    # gain at the four corners of a plane tilted along ``angle``; bilinear in between
    dx, dy = a * math.cos(angle) / math.sqrt(2), a * math.sin(angle) / math.sqrt(2)
    ramp = np.array([[1 - dx - dy, 1 + dx - dy], [1 - dx + dy, 1 + dx + dy]])
    gain = cv2.resize((ramp[:, :, None] * cast).astype(np.float32), (size_x, size_y), interpolation=cv2.INTER_LINEAR)
    img = cv2.multiply(img, gain, dtype=cv2.CV_8U)
    gamma = math.exp(rng.uniform(-1, 1) * 0.4 * d)
    contrast = math.exp(rng.uniform(-1, 1) * 0.3 * d)
    brightness = rng.uniform(-1, 1) * 30 * d
    lut = (LEVELS ** gamma - 0.5) * (contrast * 255.0) + (127.5 + brightness)
    return cv2.LUT(img, np.clip(lut, 0, 255).astype(np.uint8))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    k = 2 * int(np.ceil(2.5 * sigma)) + 1
    return cv2.GaussianBlur(img, (k, k), sigma)


def _noise_bank(height: int, width: int) -> np.ndarray:
    """A fixed bank of unit Gaussian noise (seeded constant); images take random windows of it."""
    key = max(height, width)
    if key not in _NOISE_BANKS:
        rng = np.random.default_rng(20240611)
        _NOISE_BANKS[key] = rng.standard_normal((key + NOISE_MARGIN, key + NOISE_MARGIN, 3)).astype(np.float32)
    return _NOISE_BANKS[key]


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    h, w = img.shape[:2]
    bank = _noise_bank(h, w)
    oy, ox = rng.integers(0, NOISE_MARGIN, 2)
    window = bank[oy:oy + h, ox:ox + w]
    out = cv2.scaleAdd(window, float(sigma), img.astype(np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB image as JPEG at ``quality`` and decode it back (compression artefacts)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
