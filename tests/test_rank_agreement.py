"""Per-step agreements across ranks (the stop signals, a NaN loss): one all-reduce that every rank
joins, on 2 real gloo processes; a flag raised on one rank is seen by all of them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.slurm_cluster import free_port


class _NoTrainer(torch.nn.Module):
    """A module outside a trainer: the guard then names no step."""


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from modules.distributed import any_rank
    from modules.guards import NonFiniteLossError, stop_if_not_finite
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seen = {"one_rank": any_rank([rank == 1, False]), "none": any_rank([False, False])}
        stops = []
        for loss in (torch.tensor(1.0), torch.tensor(float("nan") if rank == 1 else 2.0)):
            try:
                stop_if_not_finite(_NoTrainer(), loss)
                stops.append(None)
            except NonFiniteLossError as err:
                stops.append(str(err))
        Path(out, f"rank{rank}.json").write_text(json.dumps({**seen, "stops": stops}))
    finally:
        dist.destroy_process_group()


def test_a_flag_or_a_nan_loss_on_one_rank_is_seen_by_every_rank(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["one_rank"] == [True, False] and seen["none"] == [False, False]
        assert seen["stops"][0] is None  # finite on both ranks: no stop
        assert "at global step ? (on some rank)" in seen["stops"][1]  # NaN on rank 1 only: both stop
