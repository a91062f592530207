"""The large-batch learning-rate recipe of margin-softmax face recognition (insightface arcface_torch).

- ``scaled_lr``: the learning rate for a global batch from one tuned at a base batch (Goyal et al.
  2017 linear scaling rule, or square-root scaling).
- ``warmup_poly_lambda``: per-iteration multiplier for ``torch.optim.lr_scheduler.LambdaLR``: linear
  warm-up, then polynomial decay to 0 at ``total_steps``.
- ``SampleSchedule``: the warm-up/decay multiplier counted in samples seen, so that a run resumed
  with another global batch continues its schedule where it was.
- ``param_groups``: optimizer groups with weight decay on weights, none on biases and norm layers.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn


def scaled_lr(base_lr: float, base_batch: int, global_batch: int, rule: str = "linear") -> float:
    """lr = base_lr * k (linear) or base_lr * sqrt(k) (sqrt), with k = global_batch / base_batch."""
    if base_batch <= 0 or global_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got base {base_batch} and global {global_batch}")
    ratio = global_batch / base_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    raise ValueError(f"unknown lr scaling rule {rule!r}: use 'linear' or 'sqrt'")


class WarmupPolyLambda:
    """Multiplier at iteration ``step`` (0-based, the value LambdaLR applies before that step runs):

        step < W:       (step + 1) / W                            linear warm-up, 1/W ... 1
        W <= step < T:  (1 - (step - W) / (T - W)) ** power       polynomial decay, 1 ... > 0
        step >= T:      0

    A plain class rather than a closure so that it pickles (checkpoints, spawned workers).
    """

    def __init__(self, total_steps: int, warmup_steps: int, power: float = 1.0):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}")
        self.total_steps, self.warmup_steps, self.power = total_steps, warmup_steps, power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return 0.0
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return (1.0 - progress) ** self.power


class WarmupCosineLambda(WarmupPolyLambda):
    """Linear warm-up as above, then half a cosine from 1 to 0 at ``total_steps``."""

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupConstantLambda:
    """Linear warm-up, then the base learning rate for good."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0


def warmup_poly_lambda(total_steps: int, warmup_steps: int, power: float = 1.0) -> Callable[[int], float]:
    """For ``LambdaLR(optimizer, warmup_poly_lambda(T, W))`` stepped once per iteration."""
    return WarmupPolyLambda(total_steps, warmup_steps, power)


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int, power: float = 1.0) -> Callable[[float], float]:
    """The one schedule of ``optim.scheduler``: a linear warm-up, then polynomial decay ('warmup_poly'),
    half a cosine ('cosine') or the base lr ('none') over ``total_steps``. The warm-up is always the
    one asked for: a run shorter than it stretches the schedule (the lr of step t does not depend on
    the run's length while it warms up, so a run stopped early and resumed matches a straight one)."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(int(total_steps), warmup_steps + 1)
    if kind == "warmup_poly":
        return WarmupPolyLambda(total_steps, warmup_steps, power)
    if kind == "cosine":
        return WarmupCosineLambda(total_steps, warmup_steps)
    return WarmupConstantLambda(warmup_steps)


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool = True) -> list[dict]:
    """Optimizer parameter groups over the trainable parameters of ``model``.

    With ``no_decay_bn_bias`` every bias and every parameter of a normalisation layer (BatchNorm,
    GroupNorm, LayerNorm, InstanceNorm) goes to a group with ``weight_decay=0``; everything else
    (conv/linear weights, PReLU slopes, classifier weights) is decayed. Frozen parameters
    (``requires_grad=False``) are left out. Empty groups are dropped. Each group carries a ``name``
    ("decay" / "no_decay") that torch optimizers keep and ignore.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if no_decay_bn_bias and (isinstance(module, NORM_LAYERS) or name == "bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class SampleSchedule:
    """The lr multiplier for ``LambdaLR``, in steps of the global batch the run was planned with.

    ``kind`` 'warmup_poly' (linear warm-up, then (1 - progress) ** power), 'cosine' or 'none' over
    ``total_steps`` planned steps. LambdaLR passes the optimizer step; a run resumed with another
    global batch calls ``rebase(step, ratio)`` and each later step then advances the schedule by
    ``ratio`` = new global batch / planned global batch planned steps, so warm-up and decay follow
    the samples seen, continuously across the change. Plain numbers only: it is saved in checkpoints.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, power: float, planned_global_batch: int):
        self.kind, self.total_steps, self.warmup_steps, self.power = kind, int(total_steps), int(warmup_steps), power
        self.planned_global_batch = int(planned_global_batch)
        self.anchor_step, self.anchor_position, self.ratio = 0, 0.0, 1.0

    def position(self, step: int) -> float:
        return self.anchor_position + (step - self.anchor_step) * self.ratio

    def __call__(self, step: int) -> float:
        return lr_multiplier(self.kind, self.total_steps, self.warmup_steps, self.power)(self.position(step))

    def rebase(self, step: int, global_batch: int) -> None:
        self.anchor_position = self.position(step)
        self.anchor_step, self.ratio = int(step), global_batch / self.planned_global_batch
