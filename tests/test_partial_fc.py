"""PartialFC at 2 and 3 gloo ranks against single-process cross-entropy on the concatenated batch.

Each world size is started once (module fixture); the workers record losses, gradients, sampled
columns, errors and checkpoints, and the tests compare them here with references computed in this
process from the full weight (F.cross_entropy on margin-head logits).
"""
from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modules.losses.margins import MarginHead
from modules.losses.partial_fc import (LabelError, PartialFC, class_range,
                                       exclude_partial_fc_from_ddp)

pytestmark = pytest.mark.ddp

EMBEDDING = 8
CLASSES = 11        # divisible by neither 2 nor 3
HEADS = {"arcface": dict(kind="arcface"), "cosface": dict(kind="cosface"),
         "combined": dict(kind="combined"), "sphereface": dict(kind="sphereface")}
SAMPLE_CLASSES, SAMPLE_RATE = 40, 0.25
SAMPLE_LABELS = [1, 3, 20, 21, 22, 23, 24, 25, 1, 3, 20, 21]  # positives: {1, 3} and {20..25}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch_sizes(world: int) -> list[int]:
    return [3 + rank for rank in range(world)]  # uneven on purpose


def problem(world: int, classes: int = CLASSES, seed: int = 0, dtype=torch.float64, sizes=None):
    """Full weight, global embeddings and labels, and each rank's row offsets."""
    gen = torch.Generator().manual_seed(seed)
    sizes = sizes or batch_sizes(world)
    total = sum(sizes)
    weight = torch.randn(classes, EMBEDDING, generator=gen, dtype=dtype)
    embeddings = torch.randn(total, EMBEDDING, generator=gen, dtype=dtype)
    labels = torch.randint(0, classes, (total,), generator=gen)
    offsets = [sum(sizes[:r]) for r in range(world + 1)]
    return weight, embeddings, labels, offsets


def reference(head: MarginHead, weight, embeddings, labels):
    """Single-process margin cross-entropy; returns loss, d/d embeddings, d/d weight."""
    weight = weight.clone().requires_grad_()
    embeddings = embeddings.clone().requires_grad_()
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t()
    loss = F.cross_entropy(head(cosine, labels), labels)
    loss.backward()
    return loss.detach(), embeddings.grad, weight.grad


def build(num_classes, head_kwargs, dtype=torch.float64, full_weight=None, **kwargs) -> PartialFC:
    module = PartialFC(EMBEDDING, num_classes, MarginHead(**head_kwargs), **kwargs).to(dtype)
    if full_weight is not None:
        with torch.no_grad():
            module.weight.copy_(full_weight[module.start:module.end])
    return module


class TinyModel(nn.Module):
    def __init__(self, num_classes: int, compensate: bool):
        super().__init__()
        self.backbone = nn.Linear(6, EMBEDDING)
        self.head = PartialFC(EMBEDDING, num_classes, MarginHead("cosface"),
                              compensate_ddp_average=compensate)

    def forward(self, x, y):
        return self.head(self.backbone(x), y)


# --------------------------------------------------------------------------------- the workers
def _exactness(rank, world, record):
    weight, embeddings, labels, off = problem(world)
    mine = slice(off[rank], off[rank + 1])
    for name, head_kwargs in HEADS.items():
        module = build(CLASSES, head_kwargs, full_weight=weight)
        x = embeddings[mine].clone().requires_grad_()
        loss = module(x, labels[mine])
        loss.backward()
        record[f"exact/{name}"] = (loss.detach(), x.grad, module.weight.grad, module.start, module.end)


def _sampling(rank, world, record):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(SAMPLE_CLASSES, EMBEDDING, generator=gen, dtype=torch.float64)
    embeddings = torch.randn(len(SAMPLE_LABELS), EMBEDDING, generator=gen, dtype=torch.float64)
    labels = torch.tensor(SAMPLE_LABELS)
    share = len(SAMPLE_LABELS) // world
    mine = slice(rank * share, (rank + 1) * share)
    torch.manual_seed(100 + rank)
    module = build(SAMPLE_CLASSES, HEADS["arcface"], full_weight=weight, sample_rate=SAMPLE_RATE)
    x = embeddings[mine].clone().requires_grad_()
    loss = module(x, labels[mine])
    loss.backward()
    record["sampling"] = (loss.detach(), x.grad, module.weight.grad, module.sampled_classes.clone(),
                          module.num_sample, module.start, module.end, weight, embeddings, labels)


def _bad_labels(rank, world, record):
    module = build(CLASSES, HEADS["arcface"])
    x = torch.randn(4, EMBEDDING, dtype=torch.float64)
    outcomes = []
    for case in ("range", "float"):
        labels = torch.tensor([0, 1, 2, 3])
        if case == "range" and rank == 1:
            labels = torch.tensor([0, CLASSES, 2, -1])
        if case == "float":
            labels = labels.float()
        try:
            module(x, labels)
            outcomes.append((case, None, None))
        except LabelError as error:
            outcomes.append((case, str(error), error.positions))
    record["bad_labels"] = outcomes


def _autocast(rank, world, record):
    torch.manual_seed(3)
    backbone = nn.Linear(6, EMBEDDING)
    module = build(CLASSES, HEADS["arcface"], dtype=torch.float32)
    inputs = torch.randn(4, 6)
    labels = torch.tensor([0, 5, 7, 10])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = backbone(inputs)
        embeddings.retain_grad()
        shard = module.shard_logits(embeddings, labels)
        loss = module(embeddings, labels)
    loss.backward()
    full = module.gather_full(module.weight.detach())
    record["autocast"] = (embeddings.dtype, shard.logits.dtype, loss.dtype, loss.detach(),
                          embeddings.detach(), embeddings.grad.dtype,
                          bool(torch.isfinite(backbone.weight.grad).all()), full, labels)


def _accumulation(rank, world, record):
    weight, embeddings, labels, off = problem(world, seed=4, sizes=[4] * world)
    mine = slice(off[rank], off[rank + 1])
    accumulated = build(CLASSES, HEADS["combined"], full_weight=weight)
    halves = [embeddings[mine][:2].clone().requires_grad_(), embeddings[mine][2:].clone().requires_grad_()]
    for half, y in zip(halves, (labels[mine][:2], labels[mine][2:])):
        (accumulated(half, y) / 2).backward()  # Lightning divides by accumulate_grad_batches
    whole = build(CLASSES, HEADS["combined"], full_weight=weight)
    x = embeddings[mine].clone().requires_grad_()
    whole(x, labels[mine]).backward()
    record["accumulation"] = (accumulated.weight.grad, whole.weight.grad,
                              torch.cat([h.grad for h in halves]), x.grad)


def _checkpoint(rank, world, record, directory: Path):
    """Save at this world (W=2 only) and compute logits for a fixed input after loading the W=2 file."""
    gen = torch.Generator().manual_seed(7)
    inputs = torch.randn(6, EMBEDDING, generator=gen)
    labels = torch.randint(0, CLASSES, (6,), generator=gen)
    share = 6 // world
    mine = slice(rank * share, (rank + 1) * share)
    path = directory / "partial_fc_w2.pt"
    if world == 2:
        saved = PartialFC(EMBEDDING, CLASSES, MarginHead("sphereface"), seed=5)
        saved.margin_head.iteration.fill_(42)
        state = saved.state_dict()  # every rank: a collective
        if rank == 0:
            torch.save(state, path)
        dist.barrier()
        record["checkpoint/state"] = {k: v.clone() for k, v in state.items()}
        record["checkpoint/local"] = (saved.weight.detach().clone(), saved.start, saved.end)
    dist.barrier()
    loaded = PartialFC(EMBEDDING, CLASSES, MarginHead("sphereface"), seed=99).eval()
    loaded.load_state_dict(torch.load(path))
    shard = loaded.shard_logits(inputs[mine], labels[mine])
    record["checkpoint/logits"] = loaded.gather_full(shard.logits.detach().t().contiguous()).t()
    record["checkpoint/iteration"] = int(loaded.margin_head.iteration)
    record["checkpoint/helpers"] = (loaded.gather_full(torch.arange(loaded.start, loaded.end)),
                                    loaded.local_shard(torch.arange(CLASSES)), loaded.start, loaded.end)


def _ddp(rank, world, record):
    weight, embeddings, labels, off = problem(world, classes=7, seed=6)
    mine = slice(off[rank], off[rank + 1])
    for compensate in (True, False):
        torch.manual_seed(0)
        model = TinyModel(7, compensate).double()
        with torch.no_grad():
            model.head.weight.copy_(weight[model.head.start:model.head.end])
        initial = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        ignored = exclude_partial_fc_from_ddp(model)
        wrapped = DistributedDataParallel(model)
        loss = wrapped(embeddings[mine][:, :6], labels[mine])
        loss.backward()
        record[f"ddp/{compensate}"] = (
            ignored, initial, loss.detach(), model.backbone.weight.grad.clone(),
            model.backbone.bias.grad.clone(), model.head.weight.grad.clone(), model.head.start,
            model.head.end)


def _worker(rank: int, world: int, port: int, directory: str) -> None:
    torch.set_num_threads(1)
    early = PartialFC(EMBEDDING, CLASSES, MarginHead("arcface"))  # built before the process group
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # a desynchronised collective fails, not hangs
    record = {}
    try:
        early(torch.randn(2, EMBEDDING), torch.tensor([0, 1]))
        record["early"] = None
    except RuntimeError as error:
        record["early"] = str(error)
    _exactness(rank, world, record)
    _sampling(rank, world, record)
    _bad_labels(rank, world, record)
    _autocast(rank, world, record)
    _accumulation(rank, world, record)
    _checkpoint(rank, world, record, Path(directory))
    if world == 2:
        _ddp(rank, world, record)
    torch.save(record, Path(directory) / f"w{world}_r{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{world: [record of rank 0, rank 1, ...]}; W=2 runs first (W=3 loads its checkpoint)."""
    directory = tmp_path_factory.mktemp("partial_fc")
    results = {}
    for world in (2, 3):
        mp.spawn(_worker, args=(world, free_port(), str(directory)), nprocs=world, join=True)
        results[world] = [torch.load(directory / f"w{world}_r{r}.pt", weights_only=False)
                          for r in range(world)]
    results["directory"] = directory
    return results


WORLDS = [2, 3]


# ----------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("head_name", list(HEADS))
def test_loss_and_gradients_equal_single_process_cross_entropy(runs, world, head_name):
    weight, embeddings, labels, _ = problem(world)
    ref_loss, ref_x, ref_w = reference(MarginHead(**HEADS[head_name]), weight, embeddings, labels)
    records = [r[f"exact/{head_name}"] for r in runs[world]]
    for loss, *_ in records:  # the same global loss on every rank
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([x for _, x, *_ in records]), ref_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([w for _, _, w, *_ in records]), ref_w, rtol=0, atol=1e-6)
    shard_rows = [end - start for *_, start, end in records]
    assert shard_rows == [CLASSES // world + (r < CLASSES % world) for r in range(world)]


def test_world_size_one_is_the_plain_full_softmax():
    weight, embeddings, labels, _ = problem(1)
    module = build(CLASSES, HEADS["arcface"], full_weight=weight)
    x = embeddings.clone().requires_grad_()
    loss = module(x, labels)
    loss.backward()
    ref_loss, ref_x, ref_w = reference(MarginHead("arcface"), weight, embeddings, labels)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(module.weight.grad, ref_w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("world", WORLDS)
def test_sampling_keeps_positives_and_the_configured_count(runs, world):
    records = [r["sampling"] for r in runs[world]]
    *_, weight, embeddings, labels = records[0]
    union = []
    for loss, x_grad, w_grad, sampled, num_sample, start, end, *_ in records:
        assert num_sample == int(SAMPLE_RATE * (end - start))
        positives = {int(y) for y in labels if start <= y < end}
        kept = set(sampled.tolist())
        assert positives <= kept
        assert all(start <= c < end for c in kept) and len(kept) == sampled.numel()
        assert sampled.numel() == max(num_sample, len(positives))
        outside = torch.ones(end - start, dtype=torch.bool)
        outside[sampled - start] = False
        assert torch.all(w_grad[outside] == 0)  # gradient only into the sampled rows
        assert torch.all(w_grad[~outside].abs().sum(dim=1) > 0)
        union.append(sampled)
    # by hand: W=2 owns [0,20) [20,40), 5 columns each, rank 1 holds 6 positives; W=3 [0,14) [14,27)
    # [27,40), 3 columns each, rank 1 holds 6 positives, rank 2 none
    assert [r.numel() for r in union] == ([5, 6] if world == 2 else [3, 6, 3])
    # the loss is the full-softmax loss restricted to the sampled columns
    columns = torch.cat(union)
    remap = {int(c): i for i, c in enumerate(columns)}
    ref_loss, ref_x, ref_w_sub = reference(MarginHead("arcface"), weight[columns], embeddings,
                                           torch.tensor([remap[int(y)] for y in labels]))
    ref_w = torch.zeros_like(weight)
    ref_w[columns] = ref_w_sub
    for record in records:
        torch.testing.assert_close(record[0], ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[1] for r in records]), ref_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[2] for r in records]), ref_w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("world", WORLDS)
def test_bad_labels_raise_on_every_rank_with_positions(runs, world):
    for rank, record in enumerate(runs[world]):
        (case_a, message_a, positions_a), (case_b, message_b, positions_b) = record["bad_labels"]
        assert message_a is not None and message_b is not None
        if rank == 1:
            assert positions_a == [1, 3] and "positions [1, 3]" in message_a and "[11, -1]" in message_a
        else:
            assert positions_a == [] and "rank(s) [1]" in message_a
        assert positions_b == [0, 1, 2, 3] and "integer" in message_b


@pytest.mark.parametrize("world", WORLDS)
def test_fp32_logits_and_loss_under_bf16_autocast(runs, world):
    records = [r["autocast"] for r in runs[world]]
    for emb_dtype, logits_dtype, loss_dtype, _, _, grad_dtype, finite, *_ in records:
        assert emb_dtype == torch.bfloat16 and grad_dtype == torch.bfloat16
        assert logits_dtype == torch.float32 and loss_dtype == torch.float32 and finite
    weight = records[0][7]
    embeddings = torch.cat([r[4] for r in records]).float()
    labels = torch.cat([r[8] for r in records])
    ref_loss, _, _ = reference(MarginHead("arcface"), weight, embeddings, labels)
    for record in records:
        torch.testing.assert_close(record[3], ref_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("world", WORLDS)
def test_gradient_accumulation_equals_one_batch(runs, world):
    records = [r["accumulation"] for r in runs[world]]
    weight, embeddings, labels, _ = problem(world, seed=4, sizes=[4] * world)
    _, ref_x, ref_w = reference(MarginHead("combined"), weight, embeddings, labels)
    # .grad sums the two micro-batches' gradients of loss / 2: the gradient of the whole batch's mean
    torch.testing.assert_close(torch.cat([r[0] for r in records]), ref_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[1] for r in records]), ref_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[2] for r in records]), ref_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[3] for r in records]), ref_x, rtol=0, atol=1e-6)


def test_state_dict_holds_the_full_weight(runs):
    records = runs[2]
    state = records[0]["checkpoint/state"]
    assert state["weight"].shape == (CLASSES, EMBEDDING)
    assert int(state["margin_head.iteration"]) == 42
    torch.testing.assert_close(state["weight"], torch.cat([r["checkpoint/local"][0] for r in records]))
    torch.testing.assert_close(records[1]["checkpoint/state"]["weight"], state["weight"])
    assert [r["checkpoint/local"][1:] for r in records] == [(0, 6), (6, 11)]


def test_checkpoint_reshards_from_2_to_1_and_3_ranks(runs):
    gen = torch.Generator().manual_seed(7)
    inputs = torch.randn(6, EMBEDDING, generator=gen)
    labels = torch.randint(0, CLASSES, (6,), generator=gen)
    single = PartialFC(EMBEDDING, CLASSES, MarginHead("sphereface"), seed=99).eval()
    single.load_state_dict(torch.load(runs["directory"] / "partial_fc_w2.pt"))
    logits_w1 = single.shard_logits(inputs, labels).logits.detach()
    # independent: the same logits from the saved full weight by hand
    state = runs[2][0]["checkpoint/state"]
    head = MarginHead("sphereface").eval()
    head.iteration.fill_(42)
    by_hand = head(F.normalize(inputs, dim=1) @ F.normalize(state["weight"], dim=1).t(), labels)
    torch.testing.assert_close(logits_w1, by_hand, rtol=0, atol=1e-5)
    for world in WORLDS:
        for rank, record in enumerate(runs[world]):
            torch.testing.assert_close(record["checkpoint/logits"], logits_w1, rtol=0, atol=1e-5)
            assert record["checkpoint/iteration"] == 42
            full, local, start, end = record["checkpoint/helpers"]
            assert (start, end) == class_range(CLASSES, rank, world)
            torch.testing.assert_close(full, torch.arange(CLASSES))
            torch.testing.assert_close(local, torch.arange(start, end))


@pytest.mark.parametrize("world", WORLDS)
def test_built_before_the_process_group_fails_loudly(runs, world):
    for record in runs[world]:
        assert record["early"] is not None and "configure_model" in record["early"]


def test_ddp_excludes_the_shards_and_compensation_gives_single_process_gradients(runs):
    weight, embeddings, labels, _ = problem(2, classes=7, seed=6)
    records = runs[2]
    ignored, initial, *_ = records[0]["ddp/True"]
    assert sorted(ignored) == ["head.weight"]
    backbone = nn.Linear(6, EMBEDDING).double()
    backbone.load_state_dict(initial)
    head_weight = weight.clone().requires_grad_()
    x = embeddings[:, :6]
    cosine = F.normalize(backbone(x), dim=1) @ F.normalize(head_weight, dim=1).t()
    ref_loss = F.cross_entropy(MarginHead("cosface")(cosine, labels), labels)
    ref_loss.backward()
    for compensate, factor in ((True, 1.0), (False, 0.5)):
        records_c = [r[f"ddp/{compensate}"] for r in records]
        for _, _, loss, w_grad, b_grad, _, _, _ in records_c:
            torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=1e-6)
            torch.testing.assert_close(w_grad, factor * backbone.weight.grad, rtol=0, atol=1e-6)
            torch.testing.assert_close(b_grad, factor * backbone.bias.grad, rtol=0, atol=1e-6)
        # the classifier shards are neither averaged nor broadcast: each holds its own exact slice
        shards = torch.cat([r[5] for r in records_c])
        torch.testing.assert_close(shards, head_weight.grad, rtol=0, atol=1e-6)
