"""Optimizers and per-step learning-rate schedules from the ``optim`` config section."""
from __future__ import annotations

import torch

from modules.schedules import WarmupConstantLambda, WarmupCosineLambda, WarmupPolyLambda


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    name = optim["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
    return torch.optim.Adam(params, lr=optim["lr"], weight_decay=optim["weight_decay"])


def schedule(kind: str, total_steps: int, warmup_steps: int):
    """The per-step lr multiplier: linear warm-up, then cosine, polynomial (power 1) or constant."""
    total_steps = max(total_steps, warmup_steps + 1)
    if kind == "cosine":
        return WarmupCosineLambda(total_steps, warmup_steps)
    if kind == "warmup_poly":
        return WarmupPolyLambda(total_steps, warmup_steps)
    return WarmupConstantLambda(warmup_steps)


def configure_optimizers(module, params, optim: dict) -> dict:
    """Lightning's configure_optimizers result with a per-step schedule over the whole run."""
    optimizer = build_optimizer(params, optim)
    multiplier = schedule(optim["scheduler"], int(module.trainer.estimated_stepping_batches), optim["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
