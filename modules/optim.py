"""Optimizers and per-step learning-rate schedules from the ``optim`` config section."""
from __future__ import annotations

import math

import torch


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    name = optim["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
    return torch.optim.Adam(params, lr=optim["lr"], weight_decay=optim["weight_decay"])


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base lr at ``step``: linear warmup, then cosine or polynomial (power 1) decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # warmup_poly with power 1


def configure_optimizers(module, params, optim: dict) -> dict:
    """Lightning's configure_optimizers result with a per-step schedule over the whole run."""
    optimizer = build_optimizer(params, optim)
    total = int(module.trainer.estimated_stepping_batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, optim["warmup_steps"], optim["scheduler"]))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
