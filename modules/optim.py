"""Optimizers and per-step learning-rate schedules from the ``optim`` config section."""
from __future__ import annotations

import torch

from modules.schedules import lr_multiplier


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    name = optim["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
    return torch.optim.Adam(params, lr=optim["lr"], weight_decay=optim["weight_decay"])


def configure_optimizers(module, params, optim: dict) -> dict:
    """Lightning's configure_optimizers result with a per-step schedule over the whole run."""
    optimizer = build_optimizer(params, optim)
    multiplier = lr_multiplier(optim["scheduler"], int(module.trainer.estimated_stepping_batches), optim["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
