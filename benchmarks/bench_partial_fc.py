"""PartialFC on 2 gloo CPU ranks against a single-process full softmax.

For each class count, three runs in fresh processes (so that peak memory is per run):
  full     1 process, 2 threads: normalised C x D weight, ArcFace head, F.cross_entropy on the
           global batch (2 x 128 rows); the plain implementation PartialFC replaces.
  pfc 1.0  2 ranks, 1 thread each, 128 rows each: PartialFC, every class.
  pfc 0.1  the same with sample_rate 0.1.
Step = forward + backward of classifier and loss on a fixed batch (no optimizer). The time is the
mean over the timed steps of the slowest rank (a barrier starts each step).
Memory = peak resident set size (getrusage ru_maxrss) minus the resident size just before the
classifier is built: weights, gradients and every temporary of the step, as the OS sees them
(torch's CPU allocator returns large blocks to the OS). "param+grad" is the analytic
2 x rows x D x 4 bytes.

One warm-up step, then --steps timed steps; from 500k classes on, one timed step and no warm-up (a
1M-class full-softmax step is ~800 GFLOP). The full softmax runs only if its estimated peak fits in
the memory available; every benchmark process volunteers first for the OOM killer
(oom_score_adj 1000) so that a shared machine loses this benchmark rather than something else.
Rows print as they finish.

Usage: python benchmarks/bench_partial_fc.py [--classes 10000 100000 1000000] [--steps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modules.losses.margins import MarginHead
from modules.losses.partial_fc import PartialFC

EMBEDDING, BATCH_PER_RANK, WORLD = 512, 128, 2


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fixed_batch(rows: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(rows, EMBEDDING, generator=gen).requires_grad_()
    return embeddings, torch.randint(0, classes, (rows,), generator=gen)


def timed(step, steps: int, warm_up: bool, synchronise=lambda: None) -> float:
    if warm_up:
        step()
    total = 0.0
    for _ in range(steps):
        synchronise()
        start = time.perf_counter()
        step()
        total += time.perf_counter() - start
    return total / steps


def volunteer_for_oom_killer() -> None:
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")


def full_softmax_run(classes: int, steps: int, out: str) -> None:
    volunteer_for_oom_killer()
    torch.set_num_threads(WORLD)
    embeddings, labels = fixed_batch(WORLD * BATCH_PER_RANK, classes, seed=0)
    before = current_rss_mb()
    weight = torch.nn.Parameter(torch.randn(classes, EMBEDDING) * 0.01)
    head = MarginHead("arcface")

    def step():
        weight.grad = embeddings.grad = None
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t()
        F.cross_entropy(head(cosine, labels), labels).backward()

    seconds = timed(step, steps, warm_up=classes < 500_000)
    Path(out).write_text(json.dumps(dict(seconds=seconds, memory_mb=peak_rss_mb() - before,
                                         rows=classes)))


def partial_fc_rank(rank: int, classes: int, sample_rate: float, steps: int, port: int, out: str) -> None:
    volunteer_for_oom_killer()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    embeddings, labels = fixed_batch(BATCH_PER_RANK, classes, seed=1 + rank)
    before = current_rss_mb()
    module = PartialFC(EMBEDDING, classes, MarginHead("arcface"), sample_rate=sample_rate)

    def step():
        module.weight.grad = embeddings.grad = None
        module(embeddings, labels).backward()

    seconds = timed(step, steps, warm_up=classes < 500_000, synchronise=dist.barrier)
    result = torch.tensor([seconds, peak_rss_mb() - before], dtype=torch.float64)
    every = [torch.zeros_like(result) for _ in range(WORLD)]
    dist.all_gather(every, result)
    if rank == 0:
        Path(out).write_text(json.dumps(dict(
            seconds=max(float(r[0]) for r in every), memory_mb=max(float(r[1]) for r in every),
            rows=module.num_local, columns=module.num_sample)))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    print(f"batch {BATCH_PER_RANK}/rank x {WORLD} ranks (full softmax: {WORLD * BATCH_PER_RANK} rows, "
          f"{WORLD} threads), D = {EMBEDDING}, fp32; load average {os.getloadavg()[0]:.1f}")
    header = (f"{'classes':>9} {'variant':<15} {'ranks':>5} {'steps':>5} {'step s':>8} {'speedup':>8} "
              f"{'peak MB/rank':>13} {'mem ratio':>9} {'param+grad MB/rank':>19} {'columns/rank':>13}")
    print(header + "\n" + "-" * len(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for classes in args.classes:
            steps = args.steps if classes < 500_000 else 1
            out = str(Path(tmp) / f"full_{classes}.json")
            # measured here: the full softmax peaks at ~4.5 C x D + 4 N x C fp32 values
            need_mb = (4.5 * classes * EMBEDDING + 4 * WORLD * BATCH_PER_RANK * classes) * 4 / 2**20
            full = None
            if need_mb + 2048 < available_mb():
                process = mp.get_context("spawn").Process(target=full_softmax_run, args=(classes, steps, out))
                process.start()
                process.join()
                full = json.loads(Path(out).read_text()) if process.exitcode == 0 else None
            print_row(classes, "full softmax", 1, steps, full, full)
            for rate in (1.0, 0.1):
                out = str(Path(tmp) / f"pfc_{classes}_{rate}.json")
                mp.spawn(partial_fc_rank, args=(classes, rate, steps, free_port(), out),
                         nprocs=WORLD, join=True)
                print_row(classes, f"PartialFC {rate}", WORLD, steps, json.loads(Path(out).read_text()), full)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def print_row(classes, name, ranks, steps, result, full) -> None:
    if result is None:
        print(f"{classes:>9} {name:<15} {ranks:>5} {'does not fit in memory':>30}", flush=True)
        return
    speedup = f"{full['seconds'] / result['seconds']:.2f}x" if full else "-"
    mem_ratio = f"{result['memory_mb'] / full['memory_mb']:.2f}" if full else "-"
    param_grad = 2 * result["rows"] * EMBEDDING * 4 / 2**20
    columns = result.get("columns", result["rows"])
    print(f"{classes:>9} {name:<15} {ranks:>5} {steps:>5} {result['seconds']:>8.3f} {speedup:>8} "
          f"{result['memory_mb']:>13.0f} {mem_ratio:>9} {param_grad:>19.0f} {columns:>13}", flush=True)


if __name__ == "__main__":
    main()
