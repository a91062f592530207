"""Triplet mining across ranks: gathering the global batch reproduces the one-process gradient.

Each gloo rank holds a slice of one P x K batch. The embeddings are gathered with
``all_gather_keep_local_grad`` (labels with ``all_gather_no_grad``), the loss is computed on the
global batch and multiplied by the world size; after the gradients are averaged over the ranks (what
DDP does: all-reduce SUM / world), every rank must hold the gradient of the same loss computed in one
process on the whole batch. The averaging is written out because constructing
DistributedDataParallel imports torch._dynamo, about 5 s per process on this machine.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modules.distributed import all_gather_keep_local_grad, all_gather_no_grad
from modules.losses.triplet import triplet_loss

pytestmark = pytest.mark.ddp

CASES = [("batch_hard", None), ("batch_hard", 0.3), ("batch_all", 0.3), ("semi_hard", 0.3)]
IDENTITIES, PER_IDENTITY, IN_DIM, OUT_DIM = 4, 3, 10, 6  # 12 images: splits over 2 and 3 ranks


def global_batch():
    """The same shuffled batch on every process: identities are spread over the ranks' slices."""
    generator = torch.Generator().manual_seed(1234)
    labels = torch.arange(IDENTITIES).repeat_interleave(PER_IDENTITY)
    centres = torch.randn(IDENTITIES, IN_DIM, generator=generator, dtype=torch.float64)
    inputs = torch.randn(labels.numel(), IN_DIM, generator=generator, dtype=torch.float64)
    inputs = inputs + centres[labels]
    order = torch.randperm(labels.numel(), generator=generator)
    return inputs[order], labels[order]


def make_model():
    torch.manual_seed(99)
    return torch.nn.Linear(IN_DIM, OUT_DIM).double()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    """DDP's gradient reduction: the mean over the ranks."""
    grad = grad.detach().clone()
    dist.all_reduce(grad, op=dist.ReduceOp.SUM)
    return grad / dist.get_world_size()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        inputs, labels = global_batch()
        local = slice(rank * len(labels) // world, (rank + 1) * len(labels) // world)
        model = make_model()
        results = {}
        for mining, margin in CASES:
            model.zero_grad(set_to_none=True)
            embeddings = all_gather_keep_local_grad(model(inputs[local]))
            gathered_labels = all_gather_no_grad(labels[local])
            loss, _ = triplet_loss(embeddings, gathered_labels, mining, margin)
            (loss * world).backward()
            grads = [average_over_ranks(p.grad) for p in model.parameters()]
            # the naive alternative, each rank mining its own slice only, for contrast
            plain = make_model()
            local_loss, _ = triplet_loss(plain(inputs[local]), labels[local], mining, margin)
            local_loss.backward()
            local_grads = [p.grad.detach().clone() for p in plain.parameters()]
            results[(mining, margin)] = (loss.detach(), grads, local_grads,
                                         torch.equal(gathered_labels, labels))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_reference():
    inputs, labels = global_batch()
    reference = {}
    for mining, margin in CASES:
        model = make_model()
        loss, _ = triplet_loss(model(inputs), labels, mining, margin)
        loss.backward()
        reference[(mining, margin)] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    return reference


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_triplet_gradients_equal_single_process(world, tmp_path):
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    reference = single_process_reference()
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for case, (ref_loss, ref_grads) in reference.items():
            loss, grads, local_grads, labels_in_rank_order = results[case]
            assert labels_in_rank_order, "all_gather_no_grad must concatenate in rank order"
            assert abs(loss.item() - ref_loss.item()) < 1e-9, (rank, case)
            assert ref_loss.item() > 0, case
            for grad, ref in zip(grads, ref_grads):
                torch.testing.assert_close(grad, ref, rtol=0, atol=1e-6, msg=f"{rank} {case}")
            # mining only within the slice gives another gradient: the gather matters here
            assert any((g - r).abs().max() > 1e-3 for g, r in zip(local_grads, ref_grads)), case
