"""Scene backgrounds and face-like distractors for synthetic detection scenes.

A detector trained on faces over plain colour fields learns "a skin-coloured oval anywhere" and
little else, so scene backgrounds carry texture (colour fields, noise, stripes, tiles, letters,
shapes) and distractors that share some cue with a face but are not one: skin-coloured ovals and
blobs, blobs with dark spots, rings, balls with a highlight, hands, the backs of heads. None of them
holds the eyes-above-nose-above-mouth layout of a face.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

AA = cv2.LINE_AA
SKIN_BASE = np.array([205.0, 160.0, 130.0])  # a mid skin tone; distractors scale it darker or lighter
HAIR_TONES = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [190, 160, 110], [140, 140, 140]], np.float64)
LETTERS = "ABCDEFGHKLMNPRSTUVWXYZ0123456789"


def _colour(rng: np.random.Generator, low: float = 0.0, high: float = 255.0) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(low, high, 3))


def skin_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A skin-like RGB colour, from dark to light."""
    return tuple(float(c) for c in np.clip(SKIN_BASE * rng.uniform(0.4, 1.2) + rng.normal(0, 8, 3), 0, 255))


def colour_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field: a coarse random grid resized bilinearly (gradients, blotches)."""
    kx = int(rng.integers(2, 7))
    ky = max(2, int(round(kx * height / width)))
    base = rng.uniform(0, 255, 3)
    grid = base + (rng.uniform(0, 255, (ky, kx, 3)) - base) * rng.uniform(0.2, 1.0)
    return cv2.resize(grid.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)


def add_texture(img: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    """Blotchy mid-frequency texture (blurred noise at a random scale), added in place."""
    height, width = img.shape[:2]
    cell = float(rng.uniform(3, 24))
    small = rng.normal(0, 1, (max(2, int(height / cell)), max(2, int(width / cell)), 1)).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    field *= float(rng.uniform(8, 40) * strength)
    img[:] = cv2.add(img, cv2.merge([field, field, field]), dtype=cv2.CV_8U)  # saturating, 6x numpy's


def add_stripes(img: np.ndarray, rng: np.random.Generator) -> None:
    height, width = img.shape[:2]
    colour, step = _colour(rng), float(rng.uniform(6, 60))
    angle = rng.uniform(0, math.pi)
    reach = 2 * max(width, height)
    dx, dy = math.cos(angle) * reach, math.sin(angle) * reach
    thickness = max(1, int(step * rng.uniform(0.15, 0.5)))
    cx, cy = width / 2, height / 2
    for j in range(-int(reach / step), int(reach / step) + 1):
        ox, oy = cx - math.sin(angle) * j * step, cy + math.cos(angle) * j * step
        cv2.line(img, (int(ox - dx), int(oy - dy)), (int(ox + dx), int(oy + dy)), colour, thickness, AA)


def add_tiles(img: np.ndarray, rng: np.random.Generator) -> None:
    """A grid of tiles or bricks over a random rectangle of the image (walls, floors, windows)."""
    height, width = img.shape[:2]
    x0, y0 = int(rng.uniform(0, width * 0.6)), int(rng.uniform(0, height * 0.6))
    x1, y1 = int(rng.uniform(x0 + width * 0.2, width)), int(rng.uniform(y0 + height * 0.2, height))
    tile_w, tile_h = int(rng.uniform(8, 60)), int(rng.uniform(8, 60))
    line = _colour(rng)
    for y in range(y0, y1, tile_h):
        cv2.line(img, (x0, y), (x1, y), line, 1, AA)
        shift = (tile_w // 2) * (((y - y0) // tile_h) % 2)
        for x in range(x0 + shift, x1, tile_w):
            cv2.line(img, (x, y), (x, min(y + tile_h, y1)), line, 1, AA)


def add_letters(img: np.ndarray, rng: np.random.Generator) -> None:
    """A line of random letters (signs, shirts, posters)."""
    height, width = img.shape[:2]
    text = "".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), int(rng.integers(2, 9))))
    scale = float(rng.uniform(0.4, 2.5))
    origin = (int(rng.uniform(-20, width * 0.8)), int(rng.uniform(10, height)))
    cv2.putText(img, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _colour(rng), max(1, int(scale * 2)), AA)


def add_shape(img: np.ndarray, rng: np.random.Generator, radius: float) -> None:
    """One rectangle, circle, line or triangle of about ``radius`` pixels at a random place."""
    height, width = img.shape[:2]
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    colour = _colour(rng)
    kind = int(rng.integers(4))
    if kind == 0:
        cv2.rectangle(img, (int(x - radius), int(y - radius * rng.uniform(0.3, 1.5))),
                      (int(x + radius), int(y + radius * rng.uniform(0.3, 1.5))), colour, -1, AA)
    elif kind == 1:
        cv2.circle(img, (int(x), int(y)), int(radius), colour, -1, AA)
    elif kind == 2:
        a = rng.uniform(0, math.pi)
        dx, dy = radius * math.cos(a), radius * math.sin(a)
        cv2.line(img, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), colour,
                 max(1, int(rng.uniform(0.03, 0.2) * radius)), AA)
    else:
        points = (np.array([x, y]) + rng.uniform(-radius, radius, (3, 2))).astype(np.int32)
        cv2.fillPoly(img, [points], colour, AA)


def scene_background(rng: np.random.Generator, width: int, height: int, clutter: float) -> np.ndarray:
    """A (height, width, 3) uint8 RGB background: colour field, texture, and with ``clutter`` in
    [0, 1] more stripes, tiles, letters and shapes (up to about 40 shapes at 1)."""
    img = colour_field(rng, width, height)
    if rng.uniform() < 0.8:
        add_texture(img, rng, 0.3 + 0.7 * clutter)
    if rng.uniform() < 0.3 * clutter:
        add_stripes(img, rng)
    if rng.uniform() < 0.3 * clutter:
        add_tiles(img, rng)
    for _ in range(int(rng.integers(0, 1 + round(4 * clutter)))):
        add_letters(img, rng)
    small = min(width, height)
    for _ in range(int(rng.integers(0, 1 + round(40 * clutter)))):
        add_shape(img, rng, float(small * math.exp(rng.uniform(math.log(0.01), math.log(0.4)))))
    return img


# --- distractors: things with some of a face's cues that are not faces ----------------------------------------

def _oval(img, centre, axes, angle, colour) -> None:
    cv2.ellipse(img, centre, axes, angle, 0, 360, colour, -1, AA)


def draw_distractor(img: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], size: float) -> None:
    """One face-like non-face of about ``size`` pixels (height) centred at ``centre``, drawn in place."""
    cx, cy = int(centre[0]), int(centre[1])
    rx, ry = max(1, int(size * rng.uniform(0.3, 0.45))), max(1, int(size * 0.5))
    angle = float(rng.uniform(-40, 40))
    kind = int(rng.integers(6))
    if kind == 0:  # a plain skin-coloured oval (an egg, a bald patch, a lamp)
        _oval(img, (cx, cy), (rx, ry), angle, skin_colour(rng))
    elif kind == 1:  # a skin blob with a few dark spots scattered anywhere on it
        _oval(img, (cx, cy), (rx, ry), angle, skin_colour(rng))
        dark = _colour(rng, 0, 70)
        for _ in range(int(rng.choice([1, 4, 5, 6]))):
            sx, sy = rng.uniform(-0.7, 0.7) * rx, rng.uniform(-0.7, 0.7) * ry
            cv2.circle(img, (int(cx + sx), int(cy + sy)), max(1, int(size * rng.uniform(0.03, 0.1))), dark, -1, AA)
    elif kind == 2:  # a ring or plate: an oval outline, maybe with a centre dot
        thickness = max(1, int(size * rng.uniform(0.03, 0.12)))
        cv2.ellipse(img, (cx, cy), (rx, ry), angle, 0, 360, _colour(rng), thickness, AA)
        if rng.uniform() < 0.5:
            cv2.circle(img, (cx, cy), max(1, int(size * 0.06)), _colour(rng, 0, 90), -1, AA)
    elif kind == 3:  # a ball: a disc with a highlight
        colour = np.array(skin_colour(rng) if rng.uniform() < 0.5 else _colour(rng))
        cv2.circle(img, (cx, cy), rx, tuple(float(c) for c in colour), -1, AA)
        cv2.circle(img, (int(cx - rx * 0.35), int(cy - rx * 0.35)), max(1, int(rx * 0.3)),
                   tuple(float(c) for c in np.minimum(colour * 1.35 + 30, 255)), -1, AA)
    elif kind == 4:  # a hand: a skin palm with four fingers and a thumb
        skin = skin_colour(rng)
        _oval(img, (cx, cy), (rx, int(ry * 0.7)), angle, skin)
        finger = max(1, int(rx * 0.35))
        a = math.radians(angle - 90)
        for k in range(4):
            bx = cx + (k - 1.5) * rx * 0.45 * math.cos(math.radians(angle))
            by = cy + (k - 1.5) * rx * 0.45 * math.sin(math.radians(angle))
            length = ry * rng.uniform(0.9, 1.3)
            cv2.line(img, (int(bx), int(by)), (int(bx + length * math.cos(a)), int(by + length * math.sin(a))),
                     skin, finger, AA)
        cv2.line(img, (cx, cy), (int(cx + 1.2 * rx * math.cos(math.radians(angle))),
                                 int(cy + 1.2 * rx * math.sin(math.radians(angle)) + 0.3 * ry)), skin, finger, AA)
    else:  # the back of a head: hair over the whole oval, ears and a neck of skin
        skin, hair = skin_colour(rng), tuple(float(c) for c in HAIR_TONES[rng.integers(len(HAIR_TONES))])
        cv2.rectangle(img, (cx - rx // 2, cy), (cx + rx // 2, cy + int(1.3 * ry)), skin, -1, AA)
        for side in (-1, 1):
            _oval(img, (cx + side * rx, cy), (max(1, rx // 5), max(1, ry // 4)), 0, skin)
        _oval(img, (cx, cy), (rx, ry), angle / 4, hair)
