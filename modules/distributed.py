"""Collectives the losses and the per-step agreements need, written for any torch.distributed backend
(gloo on CPU, nccl on GPU).

Every function works unchanged in a single process (world size 1), so one code path serves both.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_rank(flags: list[bool], device: torch.device | str = "cpu") -> list[bool]:
    """Each flag OR-ed over the ranks, in one all-reduce. For checks made at every step: Lightning's
    ``strategy.reduce`` puts a barrier before its all-reduce, a second wait per step (``device``: where
    the backend reduces, the module's device)."""
    if not is_distributed():
        return [bool(flag) for flag in flags]
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank along dim 0 (rank order), no gradient."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_gather_keep_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate from every rank; this rank's slice is ``tensor`` itself and keeps its gradient.

    A loss computed on the result over the *global* batch, multiplied by the world size, gives after
    DDP's gradient averaging exactly the gradient of the same loss in one process on the
    concatenated batch (each rank back-propagates through its own slice only).
    """
    if not is_distributed():
        return tensor
    gathered = list(all_gather_no_grad(tensor).chunk(dist.get_world_size(), dim=0))
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered, dim=0)


class _AllGatherSumBackward(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient and hands each rank its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        return all_gather_no_grad(tensor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank = dist.get_rank()
        return grad[rank * ctx.batch:(rank + 1) * ctx.batch]


def all_gather_sum_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather for model-parallel losses (PartialFC): every rank's loss term reaches every input.

    Each rank computes its part of a loss from the gathered tensor; the backward all-reduces the
    gradients so the input of rank r receives d(sum_k loss_k)/d(input_r).
    """
    if not is_distributed():
        return tensor
    return _AllGatherSumBackward.apply(tensor)
