"""Stopping a run cleanly when training diverges."""
from __future__ import annotations

import torch

from configs.errors import VisageError
from modules.distributed import any_rank


class NonFiniteLossError(VisageError, FloatingPointError):
    pass


def stop_if_not_finite(module, loss: torch.Tensor, name: str = "loss") -> None:
    """Raise on every rank at once when any rank's loss is NaN or Inf (a lone rank raising would hang DDP).

    The checkpoints already written (last.ckpt, best) stay untouched: the run stops before the
    optimizer applies the bad step.
    """
    trainer = getattr(module, "_trainer", None)
    bad, = any_rank([not bool(torch.isfinite(loss.detach()).all())], loss.device)
    if bad:
        step = trainer.global_step if trainer is not None else "?"
        raise NonFiniteLossError(
            f"{name} became {loss.detach().float().flatten()[0].item()} at global step {step} (on some rank); "
            "training stopped. Lower optim.lr, check the data, or resume from last.ckpt.")
