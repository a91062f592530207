"""The losses' kinds, defaults and the rules between their parameters, without torch: the loss
modules and the config checks both ask here, so each rule has one home."""
from __future__ import annotations

from configs.errors import ParameterError

MARGIN_KINDS = ("arcface", "cosface", "sphereface", "combined")
# (m1, m2, m3) of the target logit s * (cos(m1 theta + m2) - m3) when none is given
DEFAULT_MARGINS = {
    "arcface": (1.0, 0.5, 0.0),    # Deng et al. 2019
    "cosface": (1.0, 0.0, 0.35),   # Wang et al. 2018
    "combined": (1.0, 0.3, 0.2),   # insightface's combined margin
}
MINING_STRATEGIES = ("batch_hard", "batch_all", "semi_hard")


def margins(kind: str, m1: float | None = None, m2: float | None = None, m3: float | None = None,
            straight_through: bool = False, sphere_m: int = 4) -> tuple[float, float, float] | None:
    """The (m1, m2, m3) a margin head of ``kind`` uses (None for sphereface, which takes ``sphere_m``);
    raises ParameterError naming the parameter that does not fit the kind."""
    if kind not in MARGIN_KINDS:
        raise ParameterError("kind", f"{kind!r} is not one of {', '.join(MARGIN_KINDS)}")
    given = {"m1": m1, "m2": m2, "m3": m3}
    if kind == "sphereface":
        name = next((k for k, v in given.items() if v is not None), None)
        if name is not None:
            raise ParameterError(name, "sphereface takes sphere_m, not m1/m2/m3")
        if straight_through:
            raise ParameterError("straight_through", "applies to the additive margins only")
        if int(sphere_m) != sphere_m or sphere_m < 1:
            raise ParameterError("sphere_m", f"must be a positive integer, got {sphere_m}")
        return None
    chosen = tuple(float(DEFAULT_MARGINS[kind][i] if v is None else v) for i, v in enumerate(given.values()))
    if kind == "arcface" and (chosen[0] != 1.0 or chosen[2] != 0.0):
        raise ParameterError("kind", "arcface uses m2 only; use kind=combined for m1 or m3")
    if kind == "cosface" and (chosen[0] != 1.0 or chosen[1] != 0.0):
        raise ParameterError("kind", "cosface uses m3 only; use kind=combined for m1 or m2")
    return chosen


def check_triplet(mining: str, margin: float | None) -> None:
    """A triplet loss's mining strategy and margin fit together (None = soft margin)."""
    if mining not in MINING_STRATEGIES:
        raise ParameterError("mining", f"unknown triplet mining {mining!r}; expected one of "
                                       f"{', '.join(MINING_STRATEGIES)}")
    if margin is None and mining != "batch_hard":
        raise ParameterError("margin", f"{mining} mining needs a hinge margin (soft margin is batch_hard only)")
    if margin is not None and (margin < 0 or (mining == "semi_hard" and margin == 0)):
        raise ParameterError("margin", f"must be >= 0 (> 0 for semi_hard) or null for the soft margin, got {margin}")
