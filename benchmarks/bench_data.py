"""Samples/s of Visage's training data path against two baselines measured in the same run.

    python benchmarks/bench_data.py [--samples 2048] [--size 64] [--workers 0 2] [--batch 64]
                                    [--repeats 5] [--min-seconds 0.5] [--profile]

Data: ``--samples`` synthetic faces (datamodules.synth.faces.generate_faces, difficulty 0.5,
12 images per identity, ``--size`` px, JPEG quality 95 as the synthetic default writes them),
encoded ONCE; the very same JPEG bytes go into identity-grouped shards (``--shard-size`` samples),
into a folder of .jpg files and into a list in memory.

Rows, for each ``--workers`` count W (0 = everything in the main process):
  bare resize      the JPEG bytes from memory -> cv2.imdecode -> BGR2RGB -> cv2.resize (INTER_AREA)
                   -> a float tensor per sample ((x - 127.5) / 128, faces.normalize_images) -> torch.stack
                   per batch, the loop one writes by hand; W > 0: a pool of W forked processes
                   (multiprocessing.Pool.imap, kept across epochs) makes the batches and sends them
                   to the main process (through shared memory, as torch's loader workers do).
  bare augment     the same with the training augmentation (faces.identity_augmentation with the
                   config's default probabilities) in place of the resize.
  bare ... ceiling (W > 0 only) the same pool sending back only a count: no transfer, the main
                   process idle; printed for information, no goal compares with it.
  visage plain     shards -> ShardStream (tar reading, shuffle buffer of raw records (config
                   default), decode_sample: JSON parse, schema check of the task's fields,
                   decode_rgb: imdecode straight to RGB where OpenCV >= 4.11 can, which the
                   hand-written baselines do not) -> IdentityTransform (no resize when the image
                   has the size already) -> PlainBatcher -> EpochLoader(num_workers=W); without and
                   with augmentation.
  visage pk        the same with PKBatcher (P = batch / 4, K = 4, the config's pool size).
  folder loader    a map-style Dataset over the folder of .jpg files (read, imdecode, BGR2RGB, the
                   same IdentityTransform with augmentation) -> torch DataLoader(batch, shuffle=True,
                   num_workers=W, drop_last=True, persistent_workers=W > 0).
The loaders' rows deliver uint8 batches (faces.image_tensor); the timed loop applies
faces.normalize_images to each batch, the work the datamodule's after-transfer hook does on the
device, so every row ends with the same float values. Layouts differ: the visage rows' batches are
channels-last (datamodules.collate.stack copies H x W x C images as they are), the bare loop's and
the folder loader's are contiguous N x C x H x W (torch.stack transposes each image); convolutions
take either (the recognizer's model.channels_last picks the backbone's).
Each row keeps one loader for all its epochs, as training does (EpochLoader keeps its workers
across epochs, the folder DataLoader has persistent workers, the bare pool persists); a warm-up
epoch starts the workers, then ``--repeats`` repetitions per row are timed, the rows interleaved
(one repetition runs every row once, back to back); a repetition of a row runs whole epochs until
they last ``--min-seconds`` together and sums them (a row without augmentation runs an epoch in
0.2 s, short enough for the machine's jitter to move a single epoch by 20 %). The rates are the
medians over the repetitions, a ratio is the median over the repetitions of the two rows' rates in
the same repetition (the machine's drift between repetitions cancels in each pair). Every epoch
delivers samples // batch batches.
  samples/s          delivered samples / wall seconds from asking for the epoch to its last batch.
  samples/cpu-s      delivered samples / CPU seconds of this process and all its children (loader
                     workers included, also the prefetching they do after the epoch's last batch,
                     which is waited for before the next row runs): steadier than wall time when
                     other jobs share the machine. The ratios are printed on both.
  after 1st          the wall rate from each epoch's first batch to its last (buffer filling excluded).
  decoded/delivered  samples decoded and transformed in all processes / samples delivered: work
                     thrown away when an epoch ends (a P x K pool's leftovers; before the reads
                     became exact per epoch also the shuffle buffer and the prefetched batches).
torch and OpenCV run one thread per process in every row (``_common.single_threaded``; torch's
loader workers take one torch thread and inherit OpenCV's setting, which datamodules.decoding also
sets to 1).
Goals: (a) visage plain >= 0.9 x bare with the same per-sample work and the same number of
processes; (b) visage >= 1.0 x the folder DataLoader.
``--profile`` adds the CPU cost per sample of each stage (tar reading, JSON, schema check, decode,
transform, collate) and a cProfile of one single-process Visage epoch.
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import math
import multiprocessing as mp
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from _common import load_line, median, print_table, single_threaded, spread
from datamodules.bad_samples import BadSampleCounter
from datamodules.batchers import PKBatcher, PlainBatcher
from datamodules.collate import image_tensor, normalize_images
from datamodules.decoding import DecodedSample, decode_rgb, decode_sample
from datamodules.epoch_loader import EpochLoader
from datamodules.face_config import AugmentConfig, FaceDataConfig, SamplerConfig
from datamodules.faces import IdentityTransform, identity_augmentation
from datamodules.shard_stream import ShardStream, read_shard
from datamodules.schema import parse_annotation, validate_annotation
from datamodules.shards import ShardWriter, encode_image, read_index
from datamodules.synth.faces import generate_faces

GOAL_VS_BARE, GOAL_VS_FOLDER = 0.9, 1.0
PK_K = 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048, help="dataset size = samples per epoch")
    parser.add_argument("--size", type=int, default=64, help="side of the stored JPEG faces")
    parser.add_argument("--image-size", type=int, default=64, help="side of the training tensors")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per row")
    parser.add_argument("--min-seconds", type=float, default=0.5,
                        help="a repetition of a row runs whole epochs until they last this long together")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=SamplerConfig().pool_size, help="PKBatcher pool")
    parser.add_argument("--shuffle-buffer", type=int, default=FaceDataConfig().shuffle_buffer)
    parser.add_argument("--profile", action="store_true",
                        help="also print the CPU cost of each stage and a cProfile of one visage epoch")
    args = parser.parse_args(argv)
    if args.batch % PK_K or args.samples < args.batch:
        parser.error(f"--batch must be a multiple of {PK_K} (P x K batches) and at most --samples")
    return args


# -- the data ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchData:
    shards: list[tuple[str, int]]
    files: list[tuple[str, int]]          # (path of a .jpg, identity)
    encoded: list[tuple[bytes, int]]      # (JPEG bytes, identity)


def make_data(root: Path, samples: int, size: int, shard_size: int) -> BenchData:
    per_identity = 12
    faces = generate_faces(math.ceil(samples / per_identity), per_identity, size=size, seed=0, difficulty=0.5)
    folder = root / "folder"
    folder.mkdir(parents=True)
    files, encoded = [], []
    with ShardWriter(root, "train", max_samples=shard_size, split_on="identity") as writer:
        for _, (key, image, annotation) in zip(range(samples), faces):
            data = encode_image(image, "jpg", 95)
            writer.write(key, data, annotation)
            (folder / f"{key}.jpg").write_bytes(data)
            files.append((str(folder / f"{key}.jpg"), annotation["identity"]))
            encoded.append((data, annotation["identity"]))
    shards = list(read_index(root / "train").shards)
    return BenchData(shards, files, encoded)


# -- counting the samples a pipeline decodes (shared across forked workers) ---------------------
class Counted:
    """Wraps a transform and counts its calls in shared memory (visible across forked workers)."""

    def __init__(self, transform, counter):
        self.transform, self.counter = transform, counter

    def reseed(self, seed: int) -> None:  # ShardStream reseeds the augmentation of its transform
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def __call__(self, sample):
        with self.counter.get_lock():
            self.counter.value += 1
        return self.transform(sample)


# -- the bare baseline -------------------------------------------------------------------------
def bare_decode(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB as one writes it by hand (OpenCV decodes BGR)."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def bare_batches(encoded, batch_indices: list[list[int]], image_op):
    for indices in batch_indices:
        images, labels = [], []
        for i in indices:
            data, label = encoded[i]
            image = bare_decode(data)
            images.append(normalize_images(image_tensor(image_op(image))))
            labels.append(label)
        yield {"image": torch.stack(images), "label": torch.tensor(labels)}


class Resize:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)


class Augment:
    def __init__(self, size: int, augment: dict):
        self.compose = identity_augmentation(size, augment)

    def __call__(self, image):
        return self.compose(image=image)["image"]


_BARE_JOBS: dict[int, tuple] = {}  # job id -> (encoded, image_op), inherited by the forked pool


def _bare_batch(task: tuple[int, list[int], bool]) -> dict | int:
    job, indices, deliver = task
    encoded, image_op = _BARE_JOBS[job]
    batch = next(bare_batches(encoded, [indices], image_op))
    return batch if deliver else len(indices)


class BareLoop:
    """The bare loop; with workers, a pool of forked processes kept across epochs (as the loaders
    keep theirs) takes the epoch's batches one at a time and sends them to the main process in
    order (``deliver``) or sends back only a count."""

    def __init__(self, encoded, batch: int, workers: int, image_op, rng: random.Random, deliver: bool = True):
        self.encoded, self.batch, self.workers, self.image_op, self.rng = encoded, batch, workers, image_op, rng
        self.deliver = deliver
        self.pool = None

    def epoch(self) -> tuple[float, float | None]:
        """(wall seconds, seconds to the first batch or None when not observable)."""
        order = list(range(len(self.encoded)))
        self.rng.shuffle(order)
        batch_indices = [order[b * self.batch:(b + 1) * self.batch] for b in range(len(order) // self.batch)]
        start = time.perf_counter()
        if self.workers == 0:
            first = None
            for _ in bare_batches(self.encoded, batch_indices, self.image_op):
                first = first if first is not None else time.perf_counter() - start
            return time.perf_counter() - start, first
        if self.pool is None:
            job = len(_BARE_JOBS)
            _BARE_JOBS[job] = (self.encoded, self.image_op)
            self.job, self.pool = job, mp.get_context("fork").Pool(self.workers)
        first = None
        for _ in self.pool.imap(_bare_batch, [(self.job, indices, self.deliver) for indices in batch_indices]):
            first = first if first is not None else time.perf_counter() - start
        return time.perf_counter() - start, first

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# -- the folder-of-JPEGs baseline --------------------------------------------------------------
class FolderDataset(Dataset):
    """What a plain PyTorch user writes: a list of (file, label), decoded and augmented on access."""

    def __init__(self, files: list[tuple[str, int]], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path, label = self.files[index]
        with open(path, "rb") as f:
            data = f.read()
        image = bare_decode(data)
        return self.transform(DecodedSample(Path(path).stem, image, {"identity": label}))


# -- timing ------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU seconds of this process, of its reaped children and of its live children (from /proc:
    persistent loader workers never exit between epochs)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    me, tick = str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except OSError:
            continue
        if fields[1] == me:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
    return total


def settle(poll: float = 0.1, limit: float = 10.0) -> None:
    """Wait until the loader workers stop working: after an epoch's last batch they go on filling
    their prefetch queue, work that belongs to this epoch and must not slow the next row down."""
    end = time.perf_counter() + limit
    before = cpu_seconds()
    while time.perf_counter() < end:
        time.sleep(poll)
        now = cpu_seconds()
        if now - before <= 0.01:  # one clock tick: idle
            return
        before = now


@dataclasses.dataclass
class Epoch:
    wall: float             # seconds from asking the loader for an epoch to its last batch
    first: float | None     # seconds to the first batch (None: not observable)
    delivered: int          # samples in the batches
    decoded: int            # samples decoded and transformed, in all processes
    cpu: float              # CPU seconds of all processes
    epochs: int = 1         # epochs summed into this one (``repetition``)


def iterate(loader) -> tuple[float, float, int]:
    """(wall seconds, seconds to the first batch, samples delivered) of one pass over ``loader``;
    each uint8 batch is normalised as the datamodule's after-transfer hook does."""
    start = time.perf_counter()
    first, delivered = None, 0
    for batch in loader:
        normalize_images(batch["image"])
        delivered += len(batch["label"])
        first = first if first is not None else time.perf_counter() - start
    return time.perf_counter() - start, first, delivered


class Row:
    def __init__(self, name: str, workers: int, run_epoch, baseline: str | None = None, goal: float | None = None,
                 close=lambda: None):
        self.name, self.workers, self.run_epoch, self.close = name, workers, run_epoch, close
        self.baseline, self.goal = baseline, goal
        self.repetitions: list[Epoch] = []

    def rate(self) -> float:
        return median([e.delivered / e.wall for e in self.repetitions])

    def cpu_rate(self) -> float:
        return median([e.delivered / e.cpu for e in self.repetitions])

    def paired_ratio(self, base: "Row", cpu: bool = False) -> float:
        """Median over the repetitions of this row's rate / the baseline's rate in the same
        repetition: the rows of a repetition run back to back, so drift of the machine's speed
        between repetitions cancels in each pair."""
        def rate(e: Epoch) -> float:
            return e.delivered / (e.cpu if cpu else e.wall)
        return median([rate(mine) / rate(theirs) for mine, theirs in zip(self.repetitions, base.repetitions)])


def build_rows(data: BenchData, args, workers: int) -> list[Row]:
    """The rows for one worker count; each row keeps one loader (and its workers) for all its epochs."""
    augment = dataclasses.asdict(AugmentConfig())
    batches = args.samples // args.batch
    samples = batches * args.batch
    counter = mp.Value("q", 0)
    rng = random.Random(0)

    def bare(image_op, deliver: bool = True) -> tuple:
        loop = BareLoop(data.encoded, args.batch, workers, image_op, rng, deliver)

        def run() -> Epoch:
            cpu = cpu_seconds()
            wall, first = loop.epoch()
            return Epoch(wall, first, samples, samples, cpu_seconds() - cpu)
        return run, loop.close

    def counted(loader):
        def run() -> Epoch:
            counter.value = 0
            cpu = cpu_seconds()
            wall, first, delivered = iterate(loader)
            if workers:
                settle()
            cpu = cpu_seconds() - cpu
            assert delivered == samples, (delivered, samples)
            return Epoch(wall, first, delivered, counter.value, cpu)
        return run

    def visage(transform, batcher):
        stream = ShardStream(data.shards, Counted(transform, counter), batcher, ("identity",), seed=0,
                             shuffle_buffer=args.shuffle_buffer)
        return counted(EpochLoader(stream, batches, workers))

    folder = DataLoader(FolderDataset(data.files, Counted(IdentityTransform(args.image_size, augment), counter)),
                        batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    bare_resize, close_resize = bare(Resize(args.image_size))
    bare_augment, close_augment = bare(Augment(args.image_size, augment))
    pk = PKBatcher(args.batch // PK_K, PK_K, pool_size=args.pool_size)
    plain = PlainBatcher(args.batch)
    ceilings = []
    if workers:
        for name, image_op in (("bare resize ceiling", Resize(args.image_size)),
                               ("bare augment ceiling", Augment(args.image_size, augment))):
            run, close = bare(image_op, deliver=False)
            ceilings.append(Row(name, workers, run, close=close))
    return [
        Row("bare resize", workers, bare_resize, close=close_resize),
        Row("bare augment", workers, bare_augment, close=close_augment),
        *ceilings,
        Row("visage plain, no augment", workers, visage(IdentityTransform(args.image_size), plain),
            "bare resize", GOAL_VS_BARE),
        Row("visage plain + augment", workers, visage(IdentityTransform(args.image_size, augment), plain),
            "bare augment", GOAL_VS_BARE),
        Row("visage pk + augment", workers, visage(IdentityTransform(args.image_size, augment), pk),
            "bare augment", GOAL_VS_BARE),
        Row("folder loader + augment", workers, counted(folder)),
    ]


def repetition(row: Row, min_seconds: float) -> Epoch:
    """Whole epochs of ``row`` until they last ``min_seconds`` together, summed into one (``first``:
    the sum of the epochs' times to their first batch; ``epochs``: how many)."""
    parts = [row.run_epoch()]
    while sum(part.wall for part in parts) < min_seconds:
        parts.append(row.run_epoch())
    firsts = [part.first for part in parts]
    return Epoch(sum(part.wall for part in parts), None if None in firsts else sum(firsts),
                 sum(part.delivered for part in parts), sum(part.decoded for part in parts),
                 sum(part.cpu for part in parts), len(parts))


def measure(rows: list[Row], repeats: int, min_seconds: float) -> None:
    for row in rows:  # warm-up: worker start-up, imports, page cache, albumentations and allocator state
        row.run_epoch()
    for _ in range(repeats):
        for row in rows:
            row.repetitions.append(repetition(row, min_seconds))
    for row in rows:
        row.close()
        row.run_epoch = None  # drops the loader: its persistent workers shut down


def report(rows: list[Row], batch: int) -> None:
    by_name = {(r.name, r.workers): r for r in rows}
    table = []
    for row in rows:
        rate, cpu_rate = row.rate(), row.cpu_rate()
        ratios = []
        baselines = [(row.baseline, row.goal)] if row.baseline else []
        if row.name.startswith("visage") and row.name.endswith("+ augment"):
            baselines.append(("folder loader + augment", GOAL_VS_FOLDER))
        for name, goal in baselines:
            base = by_name[(name, row.workers)]
            ratios.append(f"{row.paired_ratio(base):.2f} (cpu {row.paired_ratio(base, cpu=True):.2f}) x "
                          f"{name.split(' +')[0]}"
                          f" [goal >= {goal}]")
        after = [(e.delivered - e.epochs * batch) / (e.wall - e.first) for e in row.repetitions if e.first is not None]
        table.append([row.name, str(row.workers), f"{rate:,.0f}", spread([e.delivered / e.wall for e in row.repetitions]),
                      f"{cpu_rate:,.0f}", f"{median(after):,.0f}" if after else "-",
                      f"{median([e.decoded / e.delivered for e in row.repetitions]):.2f}", "; ".join(ratios)])
    print_table(["pipeline", "workers", "samples/s", "spread", "samples/cpu-s", "after 1st", "decoded/delivered",
                 "ratios: wall (cpu) x baseline"], table)


def each(fn, items) -> None:
    for item in items:
        fn(item)


def stage_costs(data: BenchData, args) -> None:
    """CPU microseconds per sample of each stage of the Visage path, run one after another in this
    process (best of 3 passes over the data), next to the bare loop's stages."""
    augment = dataclasses.asdict(AugmentConfig())
    counter = BadSampleCounter()
    raws = [raw for url, expected in data.shards for raw in read_shard(url, counter, expected)]
    # the task's fields only: every field of 2,048 annotations would keep half a million objects
    # alive, and Python's garbage collector would walk them inside every stage timed below
    annotations = [parse_annotation(raw["json"], ("identity",)) for raw in raws]
    images = [decode_rgb(raw["jpg"]) for raw in raws]
    decoded = [DecodedSample(raw["__key__"], image, ann) for raw, image, ann in zip(raws, images, annotations)]
    plain, augmented = IdentityTransform(args.image_size), IdentityTransform(args.image_size, augment)
    transformed = [plain(sample) for sample in decoded]
    resize = Resize(args.image_size)
    jsons, jpgs = [raw["json"] for raw in raws], [raw["jpg"] for raw in raws]
    # every stage drops each result at once, as a stream does: keeping 2,048 of them would time the
    # allocator and the garbage collector as much as the stage
    stages = [
        ("visage  tar reading (read_shard: datamodules.tar_reader)",
         lambda: each(len, (raw for url, expected in data.shards for raw in read_shard(url, BadSampleCounter(), expected)))),
        ("visage  parse_annotation(json, ('identity',)): msgspec, the task's fields only",
         lambda: each(lambda j: parse_annotation(j, ("identity",)), jsons)),
        ("(parse_annotation of every field, for comparison)", lambda: each(parse_annotation, jsons)),
        ("(json.loads of every field, for comparison)", lambda: each(json.loads, jsons)),
        ("visage  validate_annotation(annotation, ('identity',), only=('identity',))",
         lambda: each(lambda ann: validate_annotation(ann, ("identity",), only=("identity",)), annotations)),
        ("visage  decode_rgb (imdecode straight to RGB where OpenCV can)", lambda: each(decode_rgb, jpgs)),
        ("bare    imdecode + BGR2RGB", lambda: each(bare_decode, jpgs)),
        ("visage  decode_sample (the four stages above but the tar)",
         lambda: each(lambda raw: decode_sample(raw, ("identity",)), raws)),
        ("visage  IdentityTransform, no augment", lambda: each(plain, decoded)),
        ("bare    cv2.resize + float tensor", lambda: each(lambda im: normalize_images(image_tensor(resize(im))), images)),
        ("visage  IdentityTransform + augment", lambda: each(augmented, decoded)),
        ("visage  PlainBatcher (collate: uint8 stack)", lambda: each(len, PlainBatcher(args.batch)(iter(transformed), None))),
        ("visage  PlainBatcher + normalize_images per batch (minus the line above: the normalisation)",
         lambda: each(lambda b: normalize_images(b["image"]), PlainBatcher(args.batch)(iter(transformed), None))),
    ]
    print(f"\n--- CPU microseconds per sample of each stage ({len(raws)} samples, best of 3) ---")
    for name, run in stages:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        print(f"{1e6 * best / len(raws):9.1f}  {name}")
    mean_json = np.mean([len(raw["json"]) for raw in raws])
    print(f"(annotation JSON: {mean_json:.0f} bytes per sample on average; fields {sorted(parse_annotation(raws[0]['json']))})")


def profile(data: BenchData, args) -> None:
    """cProfile of one single-process epoch of visage plain + augment (profiling inflates Python calls)."""
    augment = dataclasses.asdict(AugmentConfig())
    stream = ShardStream(data.shards, IdentityTransform(args.image_size, augment), PlainBatcher(args.batch),
                         ("identity",), seed=0, shuffle_buffer=args.shuffle_buffer)
    iterate(EpochLoader(stream, args.samples // args.batch, 0))
    prof = cProfile.Profile()
    prof.enable()
    iterate(EpochLoader(stream, args.samples // args.batch, 0))
    prof.disable()
    print("\n--- cProfile: visage plain + augment, workers 0 (top 20 by own time) ---")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(20)


def main(argv=None) -> None:
    args = parse_args(argv)
    single_threaded()
    with tempfile.TemporaryDirectory(prefix="visage-bench-data-") as tmp:
        start = time.perf_counter()
        data = make_data(Path(tmp), args.samples, args.size, args.shard_size)
        print(f"{args.samples} JPEG faces of {args.size} px from generate_faces in {len(data.shards)} shards "
              f"({time.perf_counter() - start:.1f} s to generate); mean JPEG "
              f"{np.mean([len(d) for d, _ in data.encoded]) / 1024:.1f} KiB")
        print(f"batch {args.batch}, tensors {args.image_size} px, {args.samples // args.batch} batches per epoch, "
              f"shuffle buffer {args.shuffle_buffer}, pk P={args.batch // PK_K} K={PK_K} pool {args.pool_size}, "
              f"{args.repeats} timed repetitions per row of at least {args.min_seconds} s each, "
              f"1 torch/OpenCV thread per process")
        print(f"before: {load_line()}")
        rows = []
        for workers in args.workers:
            group = build_rows(data, args, workers)
            measure(group, args.repeats, args.min_seconds)
            rows.extend(group)
        print(f"after:  {load_line()}  ({time.perf_counter() - start:.0f} s in all)\n")
        report(rows, args.batch)
        if args.profile:
            stage_costs(data, args)
            profile(data, args)


if __name__ == "__main__":
    main()
