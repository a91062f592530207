"""Seconds per training step of the triplet embedder under Lightning against a raw PyTorch loop.

    python benchmarks/bench_training_overhead.py [--steps 20] [--warmup 4] [--repeats 3] [--p 16] [--k 4]

Both sides do the same work on the same data: the config of configs/embedder/triplet.yaml (TinyNet
width 32, 64 px, batch-hard soft-margin TripletLoss, Adam lr 1e-3 with the per-step cosine
LambdaLR of modules.schedules.lr_multiplier) on a fixed in-memory list of P x K batches (``--distinct`` different
random batches, cycled to ``--steps``), so data loading is excluded. The trainer section is set
to one CPU process (trainer.devices=1, trainer.strategy=auto; cross-rank mining is then a no-op).
  lightning   TripletEmbedder + Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
              .fit(module, train_dataloaders=FixedBatches(<the list>)).
  raw         a second TinyNet and TripletLoss built from the same seed, the same optimizer and
              schedule: forward, loss, zero_grad, backward, step, scheduler step.
The two sides run interleaved, step by step, in one process: a callback runs raw step k in
Lightning's on_train_batch_end of step k. On a shared machine the speed drifts by 10-20 % over
seconds (measured here: separate runs of the same side differed by that much), and interleaving
exposes both sides to the same drift, so their ratio stays meaningful.
Timing excludes Trainer start-up and the first ``--warmup`` steps: Lightning's step k lasts from
its on_train_batch_start to step k + 1's, minus the raw step run in between, so it includes all
that Lightning does between two steps (fetching the batch, hooks, self.log bookkeeping, the
non-finite guard, the optimizer and scheduler wrappers); the last step has no successor and is not
timed. Raw step k is stamped around its own code. Reported over all timed steps of ``--repeats``
runs: median and mean step times and the median of the per-pair ratios, in wall and CPU seconds
(time.process_time; CPU time is steadier on a shared machine). torch.set_num_threads(1) for both
sides (one thread each, no thread-pool noise).
Goal: lightning <= 1.05 x raw seconds per step.
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import torch

from _common import load_line, median, print_table, single_threaded, spread
from modules.embedder import TripletEmbedder
from modules.optim import build_optimizer
from modules.schedules import lr_multiplier
from configs.schema import to_plain
from trainers.config import load_config

GOAL = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="Trainer runs (each runs both sides)")
    parser.add_argument("--p", type=int, default=16, help="identities per batch")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--distinct", type=int, default=4, help="different batches in the fixed list")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides, key=value")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps - 1:
        parser.error("--warmup must be below --steps - 1 (the last step is not timed)")
    return args


def make_config(overrides: list[str]) -> dict:
    return to_plain(load_config("configs/embedder/triplet.yaml",
                                ["trainer.devices=1", "trainer.strategy=auto", *overrides]))


def make_batches(config: dict, p: int, k: int, distinct: int, steps: int) -> list[dict]:
    size = config["data"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(p).repeat_interleave(k)
    fixed = [{"image": torch.randn(p * k, 3, size, size, generator=gen), "label": labels + i * p}
             for i in range(distinct)]
    return [fixed[i % distinct] for i in range(steps)]


class FixedBatches:
    """An iterable over the in-memory batches (Lightning reads a bare list as a list of loaders)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class RawLoop:
    """The raw PyTorch side: the same net and loss (built from the same seed), optimizer and schedule."""

    def __init__(self, config: dict, total_steps: int):
        torch.manual_seed(0)
        module = TripletEmbedder(config)  # only for identical construction of the net and the loss
        self.net, self.loss_fn = module.net, module.loss_fn
        self.net.train()
        optim = config["optim"]
        self.optimizer = build_optimizer(self.net.parameters(), optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(optim["scheduler"], total_steps, optim["warmup_steps"]))

    def step(self, batch: dict) -> None:
        with torch.enable_grad():
            loss = self.loss_fn(self.net(batch["image"]), batch["label"])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class PairedClock(pl.Callback):
    """Runs the raw loop's step k right after Lightning's step k, and stamps both.

    Lightning's step k lasts from its on_train_batch_start to step k + 1's, minus the raw step run
    in between (in on_train_batch_end); the last step, which has no successor, is not timed.
    """

    def __init__(self, raw: RawLoop):
        self.raw = raw
        self.starts: list[tuple[float, float]] = []
        self.raw_times: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(now())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = now()
        self.raw.step(batch)
        end = now()
        self.raw_times.append((end[0] - start[0], end[1] - start[1]))

    def step_times(self, warmup: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """(lightning, raw) (wall, cpu) seconds of steps warmup .. last - 1."""
        lightning = [(b[0] - a[0] - r[0], b[1] - a[1] - r[1])
                     for a, b, r in zip(self.starts, self.starts[1:], self.raw_times)]
        return lightning[warmup:], self.raw_times[warmup:len(lightning)]


def paired_run(config: dict, batches: list[dict], warmup: int):
    """One Trainer run with the raw loop's steps interleaved; returns (lightning, raw) step times."""
    raw = RawLoop(config, len(batches))
    torch.manual_seed(0)
    module = TripletEmbedder(config)
    clock = PairedClock(raw)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])
    trainer.fit(module, train_dataloaders=FixedBatches(batches))
    assert trainer.global_step == len(batches) == len(clock.raw_times)
    return clock.step_times(warmup)


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.3f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    single_threaded()
    warnings.filterwarnings("ignore", module="pytorch_lightning|lightning_fabric")  # start-up chatter
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    config = make_config(args.override)
    batches = make_batches(config, args.p, args.k, args.distinct, args.steps)
    timed = args.steps - args.warmup - 1
    print(f"batch {args.p} x {args.k} at {config['data']['image_size']} px, {config['model']['backbone']} width "
          f"{config['model']['width']}, {args.steps} steps per run ({timed} timed), {args.repeats} runs, "
          f"torch.set_num_threads(1)")
    print(f"before: {load_line()}")
    start = time.perf_counter()
    steps = {"lightning": [], "raw": []}  # (wall, cpu) of every timed step of every run, in pairs
    for _ in range(args.repeats):
        lightning, raw = paired_run(config, batches, args.warmup)
        steps["lightning"].extend(lightning)
        steps["raw"].extend(raw)
    print(f"after:  {load_line()}  ({time.perf_counter() - start:.0f} s in all)\n")
    rows, stats = [], {}
    for side in ("raw", "lightning"):
        walls, cpus = [w for w, _ in steps[side]], [c for _, c in steps[side]]
        stats[side] = (median(walls), median(cpus), sum(walls) / len(walls), sum(cpus) / len(cpus))
        rows.append([side, f"{1000 * stats[side][0]:.1f}", spread(walls), f"{1000 * stats[side][1]:.1f}",
                     spread(cpus), f"{1000 * stats[side][2]:.1f}", f"{1000 * stats[side][3]:.1f}"])
    print_table(["loop", "median ms/step", "spread", "median cpu ms/step", "spread", "mean ms/step",
                 "mean cpu ms/step"], rows)
    (lw, lc, lmw, lmc), (rw, rc, rmw, rmc) = stats["lightning"], stats["raw"]
    pairs = list(zip(steps["lightning"], steps["raw"]))
    paired_wall = median([lt[0] / rt[0] for lt, rt in pairs])
    paired_cpu = median([lt[1] / rt[1] for lt, rt in pairs])
    print(f"\nlightning / raw (goal <= {GOAL}):  median step {ratio(lw, rw)} (cpu {ratio(lc, rc)});  "
          f"mean step {ratio(lmw, rmw)} (cpu {ratio(lmc, rmc)});  median of the {len(pairs)} paired step ratios "
          f"{paired_wall:.3f} (cpu {paired_cpu:.3f})")
    print(f"overhead per step: {1000 * (lw - rw):+.1f} ms (cpu {1000 * (lc - rc):+.1f} ms), medians")


if __name__ == "__main__":
    main()
