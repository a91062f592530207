"""Who a synthetic face is: identity parameters, CelebA attributes, per-image expression.

``sample_identity(identity, seed)`` draws everything that stays fixed across the images of one
person (face geometry, colours, hair, facial hair, accessories) and the identity-level CelebA flags,
from an RNG derived from ``SeedSequence([seed, identity, 0, IDENTITY_STREAM])``, so a person is the
same whatever else is generated and in whatever order. Flags are drawn first, at CelebA's positive
rates, and the appearance follows them (a Big_Nose face gets a nose from the "big" range, a Goatee
face gets a goatee drawn...). Canonical lengths are in face heights (skull top to chin = 1).

Visible in a rendering: every attribute except Attractive (drawn at its rate, never rendered).
Male shows through jaw, brow, nose and lip ranges, hair length and facial hair; Young through
wrinkles and eye bags (older faces) and gray hair being reserved to older faces. The per-image
attributes Smiling, Mouth_Slightly_Open (``sample_expression``) and Blurry (the renderer) are drawn
for every image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.layouts import CELEBA_ATTRIBUTES

IDENTITY_STREAM = 1
IMAGE_STREAM = 2

# Positive rates of the 40 attributes over CelebA (public attribute statistics), in CELEBA_ATTRIBUTES order.
CELEBA_POSITIVE_RATES: tuple[float, ...] = (
    .111, .267, .513, .205, .022, .152, .241, .235, .239, .148, .051, .205, .142, .058, .047, .065,
    .063, .042, .387, .455, .417, .483, .042, .115, .835, .284, .043, .277, .080, .066, .057, .482,
    .208, .320, .189, .048, .472, .123, .073, .774,
)
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
PER_IMAGE_ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open", "Blurry")
NOT_RENDERED_ATTRIBUTES = ("Attractive",)

RGB = tuple[float, float, float]

# Skin tones from dark to light; a face interpolates between neighbours (Pale_Skin takes the far end).
SKIN_TONES = np.array([
    (66, 42, 32), (98, 64, 46), (134, 92, 64), (172, 124, 90), (200, 154, 118), (222, 180, 146),
    (236, 198, 168), (246, 218, 196), (252, 232, 218)], dtype=np.float64)
HAIR_COLOURS = {  # (low, high) RGB corners; a face draws uniformly between them
    "black": ((14, 11, 10), (42, 32, 28)),
    "brown": ((78, 48, 28), (124, 80, 50)),
    "blond": ((196, 160, 96), (240, 210, 150)),
    "gray": ((150, 150, 150), (215, 212, 208)),
    # hair carrying none of CelebA's four colour flags
    "auburn": ((130, 52, 26), (175, 85, 45)),
    "light_brown": ((140, 104, 66), (172, 134, 92)),
    "dyed": ((60, 40, 110), (220, 90, 160)),
}
OTHER_HAIR = ("auburn", "light_brown", "light_brown", "auburn", "dyed")
IRIS_COLOURS = np.array([(52, 32, 20), (96, 60, 32), (122, 96, 52), (80, 118, 74), (70, 115, 170),
                         (118, 128, 140)], dtype=np.float64)
LIPSTICK_COLOURS = np.array([(176, 24, 40), (208, 84, 120), (126, 26, 58), (218, 96, 74),
                             (186, 100, 104)], dtype=np.float64)
FRAME_COLOURS = np.array([(18, 18, 20), (86, 52, 28), (196, 166, 78), (168, 172, 178), (150, 30, 36),
                          (30, 50, 120)], dtype=np.float64)
METAL_COLOURS = np.array([(212, 175, 55), (196, 198, 204), (240, 234, 222)], dtype=np.float64)


@dataclass(frozen=True)
class IdentityParams:
    """Everything fixed for one synthetic person (lengths in face heights, colours RGB 0-255)."""

    identity: int
    seed: int
    attributes: tuple[int, ...]  # 40 flags; per-image ones (Smiling, Mouth_Slightly_Open, Blurry) are 0
    male: bool
    young: bool
    # head outline: half width, jaw and chin exponents, head depth, chin forwardness
    face_half_width: float
    jaw_exponent: float
    chin_exponent: float
    head_depth: float
    chin_forward: float
    skin: RGB
    # eyes (centre height, half spacing, half width, opening, corner tilt, lid shape, iris)
    eye_y: float
    eye_spacing: float
    eye_half_width: float
    eye_open: float
    eye_tilt: float
    lid_shape: float
    iris_ratio: float
    iris: RGB
    sclera: RGB
    # brows
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_length: float
    brow_slope: float
    brow_colour: RGB
    # nose (nasion to nose base), half width, pointiness
    nose_length: float
    nose_width: float
    nose_pointy: float
    # mouth
    mouth_gap: float  # nose base to mouth centre
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    lip_colour: RGB
    # ears
    ear_size: float
    ear_out: float
    # hair: style in bald/short/long/bangs/receding; long back hair for bangs/receding styles too
    hair_style: str
    hair_long: bool
    hair_texture: str  # straight / wavy / other
    hair_colour_name: str
    hair_colour: RGB
    hair_volume: float  # hair thickness over the crown
    hair_side_volume: float  # ... and at the sides
    hairline: float
    hair_parting: float
    hair_length: float
    hair_phase: float
    # marks: moles as (x, y, radius), scar as (x0, y0, x1, y1) or None
    moles: tuple[tuple[float, float, float], ...]
    scar: tuple[float, float, float, float] | None
    # facial hair
    beard: str  # none / goatee / full
    mustache: bool
    sideburns: bool
    stubble: bool
    facial_hair_colour: RGB
    # make-up and skin marks
    lipstick: bool
    heavy_makeup: bool
    eyeshadow: RGB
    rosy_cheeks: bool
    high_cheekbones: bool
    bags_under_eyes: bool
    wrinkles: bool
    double_chin: bool
    chubby: bool
    # accessories (None when absent)
    glasses: tuple | None  # (shape exponent, size, frame RGB, thickness, sunglasses)
    hat: tuple | None  # (style, RGB, band height)
    earrings: tuple | None  # (style, RGB)
    necklace: RGB | None
    necktie: RGB | None
    neck_width: float
    neckline: tuple[float, float, float]  # clothes: neckline dip, shoulder height, neckline height

    def attribute(self, name: str) -> int:
        return self.attributes[ATTRIBUTE_INDEX[name]]


@dataclass(frozen=True)
class Expression:
    """Per-image expression: smile and mouth opening in [0, 1], brow raise in [0, 1], gaze in [-1, 1]^2."""

    smile: float = 0.0
    mouth_open: float = 0.0
    brow_raise: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)
    smiling: bool = False
    open_flag: bool = False


NEUTRAL = Expression()


def identity_rng(identity: int, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(identity), 0, IDENTITY_STREAM]))


def image_rng(identity: int, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(identity), int(index), IMAGE_STREAM]))


def _rate(name: str) -> float:
    return CELEBA_POSITIVE_RATES[ATTRIBUTE_INDEX[name]]


def _split_rate(name: str, p_male: float) -> tuple[float, float]:
    """(rate among men, rate among women) keeping the overall rate: p = P(M) p_m + P(F) p_f."""
    male = _rate("Male")
    p_female = (_rate(name) - male * p_male) / (1.0 - male)
    return p_male, p_female


def _eligible_split(name: str, p_male: float, male_eligible: float, female_eligible: float) -> tuple[float, float]:
    """Like ``_split_rate`` for a flag that only some faces can carry (e.g. Bangs needs hair):
    p = P(M) P(eligible | M) p_m + P(F) P(eligible | F) p_f, solved for p_f."""
    male = _rate("Male")
    p_female = (_rate(name) - male * male_eligible * p_male) / ((1.0 - male) * female_eligible)
    return p_male, p_female


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> RGB:
    """A palette colour, jittered."""
    base, noise = palette[rng.integers(len(palette))], rng.uniform(-jitter, jitter, 3)
    return tuple(min(255.0, max(0.0, float(c + n))) for c, n in zip(base, noise))


def _between(rng: np.random.Generator, low, high) -> RGB:
    """A colour between two corners, mostly along the diagonal (shade) with some hue jitter."""
    shade, jitter = rng.uniform(), rng.uniform(0, 1, 3)
    return tuple(float(lo + (hi - lo) * (0.7 * shade + 0.3 * j)) for lo, hi, j in zip(low, high, jitter))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))


def sample_identity(identity: int, seed: int) -> IdentityParams:
    """Draw one person, deterministically from (seed, identity) alone."""
    rng = identity_rng(identity, seed)
    u = rng.uniform
    flags = {name: False for name in CELEBA_ATTRIBUTES}
    male = bool(u() < _rate("Male"))
    young = bool(u() < _rate("Young"))
    flags["Male"], flags["Young"] = male, young
    flags["Attractive"] = bool(u() < _rate("Attractive"))  # not rendered

    def by_sex(name: str, p_male: float) -> bool:
        pm, pf = _split_rate(name, p_male)
        return bool(u() < (pm if male else pf))

    # Hair: Bald (men only), then Receding_Hairline, then Bangs among the rest (the three exclude each
    # other); colours exclusive, gray reserved to older faces: P(gray | old, haired) keeps the rate.
    p_bald_male = _rate("Bald") / _rate("Male")
    bald = bool(male and u() < p_bald_male)
    haired = 1.0 - _rate("Bald")
    p_receding = _eligible_split("Receding_Hairline", 0.15, male_eligible=1 - p_bald_male, female_eligible=1.0)
    receding = bool(not bald and u() < p_receding[0 if male else 1])
    p_bangs = _eligible_split("Bangs", 0.08, male_eligible=(1 - p_bald_male) * (1 - p_receding[0]),
                              female_eligible=1 - p_receding[1])
    bangs = bool(not bald and not receding and u() < p_bangs[0 if male else 1])
    if bald:
        colour_name = "none"
    else:
        p_gray = _rate("Gray_Hair") / ((1 - _rate("Young")) * haired)
        if not young and u() < p_gray:
            colour_name = "gray"
        else:  # P(colour | haired, not gray) = rate / (haired - gray rate); the rest carries no flag
            r = u() * (haired - _rate("Gray_Hair"))
            edges = np.cumsum([_rate("Black_Hair"), _rate("Blond_Hair"), _rate("Brown_Hair")])
            if r < edges[-1]:
                colour_name = ("black", "blond", "brown")[int(np.searchsorted(edges, r, side="right"))]
            else:
                colour_name = OTHER_HAIR[rng.integers(len(OTHER_HAIR))]
    flags["Bald"], flags["Receding_Hairline"], flags["Bangs"] = bald, receding, bangs
    flags["Black_Hair"] = colour_name == "black"
    flags["Blond_Hair"] = colour_name == "blond"
    flags["Brown_Hair"] = colour_name == "brown"
    flags["Gray_Hair"] = colour_name == "gray"
    if bald:
        texture = "other"
    else:
        r = u() * haired
        texture = "straight" if r < _rate("Straight_Hair") else \
            "wavy" if r < _rate("Straight_Hair") + _rate("Wavy_Hair") else "other"
    flags["Straight_Hair"], flags["Wavy_Hair"] = texture == "straight", texture == "wavy"
    hair_long = not bald and u() < (0.12 if male else 0.85)
    hair_style = "bald" if bald else "receding" if receding else "bangs" if bangs else \
        ("long" if hair_long else "short")

    # Facial hair (men only): goatee and full beard exclusive, No_Beard = neither.
    m = _rate("Male")
    beard = "none"
    if male:
        r = u()
        p_goatee = _rate("Goatee") / m
        p_full = (1 - _rate("No_Beard") - _rate("Goatee")) / m
        beard = "goatee" if r < p_goatee else "full" if r < p_goatee + p_full else "none"
    mustache = bool(male and u() < _rate("Mustache") / m)
    sideburns = bool(male and u() < _rate("Sideburns") / m)
    p_full = (1 - _rate("No_Beard") - _rate("Goatee")) / m
    stubble = bool(male and beard != "full" and u() < _rate("5_o_Clock_Shadow") / (m * (1 - p_full)))
    flags["Goatee"], flags["Mustache"], flags["Sideburns"] = beard == "goatee", mustache, sideburns
    flags["No_Beard"] = beard == "none"
    flags["5_o_Clock_Shadow"] = stubble

    # Make-up (women): Heavy_Makeup implies Wearing_Lipstick.
    lipstick = bool(not male and u() < _rate("Wearing_Lipstick") / (1 - m))
    heavy = bool(lipstick and u() < _rate("Heavy_Makeup") / _rate("Wearing_Lipstick"))
    flags["Wearing_Lipstick"], flags["Heavy_Makeup"] = lipstick, heavy

    # Independent or sex-skewed face flags.
    arched = by_sex("Arched_Eyebrows", 0.08)
    bushy = by_sex("Bushy_Eyebrows", 0.26)
    big_nose = by_sex("Big_Nose", 0.38)
    pointy = bool(not big_nose and u() < _rate("Pointy_Nose") / (1 - _rate("Big_Nose")))
    big_lips = bool(u() < _rate("Big_Lips"))
    narrow = bool(u() < _rate("Narrow_Eyes"))
    p_bags_young = 0.15
    p_bags_old = (_rate("Bags_Under_Eyes") - _rate("Young") * p_bags_young) / (1 - _rate("Young"))
    bags = bool(u() < (p_bags_young if young else p_bags_old))
    chubby = bool(u() < _rate("Chubby"))
    p_dc_chubby = 0.4
    p_dc_other = (_rate("Double_Chin") - _rate("Chubby") * p_dc_chubby) / (1 - _rate("Chubby"))
    double_chin = bool(u() < (p_dc_chubby if chubby else p_dc_other))
    oval = bool(not chubby and u() < _rate("Oval_Face") / (1 - _rate("Chubby")))
    pale = bool(u() < _rate("Pale_Skin"))
    cheekbones = bool(u() < _rate("High_Cheekbones"))
    rosy = by_sex("Rosy_Cheeks", 0.0185)
    glasses_on = bool(u() < _rate("Eyeglasses"))
    hat_on = bool(u() < _rate("Wearing_Hat"))
    earrings_on = by_sex("Wearing_Earrings", 0.048)
    necklace_on = by_sex("Wearing_Necklace", 0.03)
    necktie_on = by_sex("Wearing_Necktie", 0.16)
    for name, value in (("Arched_Eyebrows", arched), ("Bushy_Eyebrows", bushy), ("Big_Nose", big_nose),
                        ("Pointy_Nose", pointy), ("Big_Lips", big_lips), ("Narrow_Eyes", narrow),
                        ("Bags_Under_Eyes", bags), ("Chubby", chubby), ("Double_Chin", double_chin),
                        ("Oval_Face", oval), ("Pale_Skin", pale), ("High_Cheekbones", cheekbones),
                        ("Rosy_Cheeks", rosy), ("Eyeglasses", glasses_on), ("Wearing_Hat", hat_on),
                        ("Wearing_Earrings", earrings_on), ("Wearing_Necklace", necklace_on),
                        ("Wearing_Necktie", necktie_on)):
        flags[name] = value

    # ---- geometry following the flags ----
    half_width = u(0.36, 0.43) if male else u(0.345, 0.41)
    jaw = u(2.2, 3.2) if male else u(1.7, 2.5)
    chin = u(1.25, 2.1)
    if chubby:
        half_width, jaw, chin = half_width + u(0.035, 0.05), u(1.8, 2.3), u(1.8, 2.3)
    if oval:
        half_width, jaw, chin = half_width - 0.015, u(1.75, 2.05), u(1.65, 2.0)
    eye_y = u(-0.03, 0.02)
    eye_half = u(0.062, 0.09)
    eye_open = u(0.017, 0.024) if narrow else u(0.03, 0.042)
    brow_thick = u(0.036, 0.046) if bushy else (u(0.021, 0.029) if male else u(0.015, 0.023))
    brow_arch = u(0.024, 0.034) if arched else u(0.003, 0.016)
    nose_length = u(0.235, 0.28) if big_nose else u(0.18, 0.228)
    nose_width = u(0.068, 0.082) if big_nose else (u(0.044, 0.052) if pointy else u(0.05, 0.064))
    mouth_half = u(0.095, 0.13) if male else u(0.085, 0.12)
    lip_scale = u(1.4, 1.6) if big_lips else (u(0.85, 1.05) if male else u(0.95, 1.15))
    skin_t = u(0.93, 1.0) if pale else float(np.clip(rng.beta(2.4, 1.4) * 0.86, 0, 0.86))
    skin = tuple(float(c) for c in _skin_colour(skin_t) + u(-6, 6, 3))

    if bald:
        hair_colour = _mix(skin, (90, 70, 60), 0.25)
    elif colour_name in HAIR_COLOURS:
        hair_colour = _between(rng, *HAIR_COLOURS[colour_name])
    brow_colour = _mix(hair_colour, (30, 22, 18), 0.55 if colour_name in ("blond", "gray", "none") else 0.25)
    if bushy:
        brow_colour = _mix(brow_colour, (20, 16, 14), 0.4)
    natural_lip = _mix(skin, (150, 62, 62), 0.42)
    lip_colour = _pick(rng, LIPSTICK_COLOURS, 14) if lipstick else natural_lip
    eyeshadow = _pick(rng, np.array([(120, 80, 120), (90, 70, 60), (70, 90, 130), (150, 100, 80)]), 15)

    hair_volume = u(0.02, 0.1) if not hair_long else u(0.03, 0.11)
    hair_side_volume = u(0.01, 0.05) if not hair_long else u(0.03, 0.08)
    hairline = u(-0.44, -0.40) if receding else u(-0.37, -0.28)
    moles = tuple((*_mark_position(rng), float(u(0.008, 0.016))) for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))))
    scar = (*_mark_position(rng), float(u(-0.06, 0.06)), float(u(-0.05, 0.05))) if u() < 0.08 else None
    facial_hair_colour = _mix(hair_colour, (40, 30, 25), 0.35) if not bald else \
        _between(rng, *HAIR_COLOURS[("black", "brown", "gray")[rng.integers(3)]])
    glasses = None
    if glasses_on:
        glasses = (float(u(2.0, 5.0)), float(u(1.3, 1.6)), _pick(rng, FRAME_COLOURS, 12),
                   float(u(0.010, 0.02)), bool(u() < 0.15))
    hat = None
    if hat_on:
        style = ("cap", "beanie", "fedora")[rng.integers(3)]
        hat = (style, tuple(float(c) for c in u(20, 235, 3)), float(u(0.05, 0.08)))
    earrings = ((("stud", "hoop", "drop")[rng.integers(3)]), _pick(rng, METAL_COLOURS, 10)) \
        if earrings_on else None
    necklace = _pick(rng, METAL_COLOURS, 10) if necklace_on else None
    necktie = tuple(float(c) for c in u(20, 200, 3)) if necktie_on else None

    attributes = tuple(int(flags[name]) for name in CELEBA_ATTRIBUTES)
    return IdentityParams(
        identity=int(identity), seed=int(seed), attributes=attributes, male=male, young=young,
        face_half_width=half_width, jaw_exponent=jaw, chin_exponent=chin, head_depth=u(0.33, 0.40),
        chin_forward=u(0.45, 0.75), skin=skin,
        eye_y=eye_y, eye_spacing=half_width * u(0.42, 0.52), eye_half_width=eye_half, eye_open=eye_open,
        eye_tilt=u(-0.008, 0.014), lid_shape=u(0.75, 1.25), iris_ratio=u(0.42, 0.52),
        iris=_pick(rng, IRIS_COLOURS, 10), sclera=tuple(float(c) for c in u(222, 245, 3)),
        brow_gap=u(0.065, 0.1), brow_thickness=brow_thick, brow_arch=brow_arch,
        brow_length=u(0.9, 1.15), brow_slope=u(-0.012, 0.012), brow_colour=brow_colour,
        nose_length=nose_length, nose_width=nose_width, nose_pointy=u(0.6, 1.0) if pointy else u(0.0, 0.3),
        mouth_gap=u(0.06, 0.1), mouth_half_width=mouth_half, upper_lip=u(0.017, 0.024) * lip_scale,
        lower_lip=u(0.021, 0.03) * lip_scale, lip_colour=lip_colour,
        ear_size=u(0.12, 0.16), ear_out=u(0.025, 0.045),
        hair_style=hair_style, hair_long=bool(hair_long), hair_texture=texture,
        hair_colour_name=colour_name, hair_colour=hair_colour, hair_volume=hair_volume,
        hair_side_volume=hair_side_volume,
        hairline=hairline, hair_parting=u(-0.8, 0.8), hair_length=u(0.45, 1.05), hair_phase=u(0, 2 * np.pi),
        moles=moles, scar=scar, beard=beard, mustache=mustache, sideburns=sideburns, stubble=stubble,
        facial_hair_colour=facial_hair_colour, lipstick=lipstick, heavy_makeup=heavy, eyeshadow=eyeshadow,
        rosy_cheeks=rosy, high_cheekbones=cheekbones, bags_under_eyes=bags, wrinkles=not young,
        double_chin=double_chin, chubby=chubby, glasses=glasses, hat=hat, earrings=earrings,
        necklace=necklace, necktie=necktie, neck_width=half_width * (u(0.62, 0.72) if male else u(0.52, 0.6)),
        neckline=(float(u(0.03, 0.14)), float(u(0.84, 0.9)), float(u(0.74, 0.8))),
    )


def _mark_position(rng: np.random.Generator) -> tuple[float, float]:
    """A spot on a cheek, the forehead or the chin, away from eyes, nose and mouth."""
    zone = rng.integers(4)
    if zone < 2:  # cheeks
        side = -1.0 if zone == 0 else 1.0
        return float(side * rng.uniform(0.13, 0.24)), float(rng.uniform(0.1, 0.28))
    if zone == 2:  # forehead
        return float(rng.uniform(-0.16, 0.16)), float(rng.uniform(-0.27, -0.19))
    return float(rng.uniform(-0.06, 0.06)), float(rng.uniform(0.4, 0.44))  # chin


def _skin_colour(t: float) -> np.ndarray:
    pos = t * (len(SKIN_TONES) - 1)
    i = min(int(pos), len(SKIN_TONES) - 2)
    return SKIN_TONES[i] + (SKIN_TONES[i + 1] - SKIN_TONES[i]) * (pos - i)


def sample_expression(rng: np.random.Generator, difficulty: float = 0.5) -> Expression:
    """Per-image expression: Smiling and Mouth_Slightly_Open at CelebA's rates; brow raise and gaze
    grow with ``difficulty``."""
    smiling = bool(rng.uniform() < _rate("Smiling"))
    open_flag = bool(rng.uniform() < _rate("Mouth_Slightly_Open"))
    smile = rng.uniform(0.55, 1.0) if smiling else rng.uniform(0.0, 0.2)
    mouth_open = rng.uniform(0.4, 1.0) if open_flag else 0.0
    brow = rng.uniform(0, 1) * difficulty if rng.uniform() < 0.4 else 0.0
    gaze = (float(rng.uniform(-1, 1) * difficulty), float(rng.uniform(-1, 1) * difficulty))
    return Expression(smile=float(smile), mouth_open=float(mouth_open), brow_raise=float(brow), gaze=gaze,
                      smiling=smiling, open_flag=open_flag)
