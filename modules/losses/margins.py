"""Margin-softmax heads: turn cosine logits into scaled logits with an angular or additive margin.

Input: ``cosine`` (B x C), cos(theta) between each L2-normalised embedding and each L2-normalised class
centre, and ``labels`` (B,) giving each row's target column, or -1 when the target is not among these
columns (a PartialFC shard that does not own the class). Output: logits for softmax cross-entropy.

Margins (one code path for the three additive kinds):

- combined (Deng et al., ArcFace, CVPR 2019, eq. 4): target ``s * (cos(m1*theta + m2) - m3)``,
  other columns ``s * cos(theta)``.
- arcface = combined (1, m2, 0); cosface (Wang et al., CVPR 2018) = combined (1, 0, m3).
- sphereface (A-softmax, Liu et al., CVPR 2017): ``psi(theta) = (-1)^k cos(m theta) - 2k`` on
  ``[k pi/m, (k+1) pi/m]``, mixed with the plain cosine by lambda annealing.

Where ``m1*theta + m2 > pi`` the additive-angular target is no longer monotonic in theta; there the
target falls back to ``cos(theta) - m2*sin(m2) - m3`` (the guard of pytorch-metric-learning and of
insightface before 2022; for m1 = 1 it is applied where cos(theta) < cos(pi - m2)).
``straight_through=True`` reproduces current insightface: the margin changes the value, the gradient
is that of the plain ``s * cos(theta)``.

SphereFace here uses normalised features: logits are scaled by ``s`` instead of the feature norm
``||x||`` of the original paper (the form used by later normalised-softmax work); its gradient is the
exact gradient of psi, not the normalised surrogate gradient of the authors' Caffe layer.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from modules.losses.kinds import margins

MarginKind = Literal["arcface", "cosface", "sphereface", "combined"]


def additive_margin_cosine(cosine: torch.Tensor, m1: float, m2: float, m3: float,
                           eps: float = 1e-7) -> torch.Tensor:
    """cos(m1*theta + m2) - m3 for target cosines, with the ArcFace guard beyond theta = (pi - m2)/m1."""
    if m1 == 1.0 and m2 == 0.0:
        return cosine - m3  # CosFace, eq. 4 of Wang et al.: no angle needed
    theta = torch.acos(cosine.clamp(-1.0 + eps, 1.0 - eps))
    angle = m1 * theta + m2
    with_margin = torch.cos(angle)
    fallback = cosine - m2 * math.sin(m2)
    return torch.where(angle <= math.pi, with_margin, fallback) - m3


def chebyshev_cos_multiple(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m*theta) as the Chebyshev polynomial T_m(cos theta).

    T_0 = 1, T_1 = x, T_n = 2x T_{n-1} - T_{n-2}.
    """
    previous, current = torch.ones_like(cosine), cosine
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * cosine * current - previous
    return current


def sphereface_psi(cosine: torch.Tensor, m: int, eps: float = 1e-7) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m] (SphereFace eq. 6)."""
    with torch.no_grad():
        theta = torch.acos(cosine.clamp(-1.0 + eps, 1.0 - eps))
        k = torch.floor(theta * m / math.pi).clamp(max=m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (-1)^k
    return sign * chebyshev_cos_multiple(cosine, m) - 2.0 * k


class MarginHead(nn.Module):
    """Map cosine logits and labels to scaled margin logits.

    Args:
        kind: 'arcface' (uses m2), 'cosface' (uses m3), 'combined' (m1, m2, m3) or 'sphereface'
            (uses sphere_m and the lambda schedule).
        s: logit scale.
        m1, m2, m3: margins; None takes the kind's default (arcface m2 = 0.5, cosface m3 = 0.35,
            combined (1, 0.3, 0.2)). Giving a margin the kind does not use raises ValueError.
        straight_through: forward with the margin, backward as plain ``s * cos`` (current insightface).
        eps: cosines are clamped to [-1 + eps, 1 - eps] before acos.
        sphere_m: SphereFace's integer angular margin.
        lambda_base, lambda_gamma, lambda_power, lambda_min: SphereFace annealing,
            ``lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)``; target logit
            ``s * (lambda * cos + psi) / (1 + lambda)``. Defaults are those of the authors' Caffe
            model (base 1000, gamma 0.12, power 1, lambda_min 5). Each forward in training mode first
            increments the ``iteration`` buffer (saved in checkpoints), as the Caffe layer does.
    """

    def __init__(self, kind: MarginKind, s: float = 64.0, m1: float | None = None,
                 m2: float | None = None, m3: float | None = None, *, straight_through: bool = False,
                 eps: float = 1e-7, sphere_m: int = 4, lambda_base: float = 1000.0,
                 lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0):
        super().__init__()
        chosen = margins(kind, m1, m2, m3, straight_through, sphere_m)  # the kinds' rules and defaults
        self.kind, self.s, self.eps = kind, float(s), float(eps)
        self.straight_through = bool(straight_through)
        if chosen is None:  # sphereface
            self.sphere_m = int(sphere_m)
            self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
            self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
            self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
            self.m1 = self.m2 = self.m3 = None
            return
        self.m1, self.m2, self.m3 = chosen

    def sphereface_lambda(self) -> float:
        """The current softmax / A-softmax mixing weight (SphereFace only)."""
        decayed = self.lambda_base * (1.0 + self.lambda_gamma * float(self.iteration)) ** -self.lambda_power
        return max(self.lambda_min, decayed)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """The margin-modified cosine of target entries (before scaling by s)."""
        if self.kind == "sphereface":
            lam = self.sphereface_lambda()
            return (lam * cosine + sphereface_psi(cosine, self.sphere_m, self.eps)) / (1.0 + lam)
        modified = additive_margin_cosine(cosine, self.m1, self.m2, self.m3, self.eps)
        if self.straight_through:
            return cosine + (modified - cosine).detach()
        return modified

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if cosine.dim() != 2 or labels.shape != cosine.shape[:1]:
            raise ValueError(f"expected cosine (B, C) and labels (B,), got {tuple(cosine.shape)} "
                             f"and {tuple(labels.shape)}")
        if self.kind == "sphereface" and self.training:
            self.iteration += 1
        logits = cosine * self.s
        rows = torch.nonzero(labels >= 0).squeeze(1)
        cols = labels[rows].long()
        logits[rows, cols] = self.s * self.target_cosine(cosine[rows, cols])
        return logits

    def extra_repr(self) -> str:
        if self.kind == "sphereface":
            return f"kind=sphereface, s={self.s}, m={self.sphere_m}, lambda_min={self.lambda_min}"
        return (f"kind={self.kind}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"straight_through={self.straight_through}")
