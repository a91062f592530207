"""Reading shards: a resampled, rank-disjoint training stream and an in-memory evaluation split.

Training (``ShardStream``): each DDP rank owns a disjoint subset of the shards (shard i goes to rank
i mod world), split again among its loader workers; each worker resamples shards from its part with
a seed derived from (seed, epoch, rank, worker) and reads a few of them interleaved
(identity-grouped shards would otherwise give batches of neighbouring identities only), and the
loader (``EpochLoader``) cuts the endless stream into a fixed number of batches per epoch, so every
rank runs the same number of steps.

Bad data never crashes a run and is never silent: each kind of problem is counted in the worker
that met it, the counts travel to the main process inside the batches (``bad_samples``), and the
module logs them.
"""
from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info
from datamodules.schema import IMAGE_EXTENSIONS, SampleError, parse_annotation, validate_annotation
from datamodules.tar_reader import tar_records

log = logging.getLogger(__name__)
# Decoding small images gains nothing from OpenCV's thread pool, and loader workers run in parallel
# already. Set before any worker forks: changing it inside a forked worker can deadlock.
cv2.setNumThreads(1)

BAD_SAMPLE_KINDS = ("undecodable_image", "bad_json", "missing_field", "bad_shape", "empty_shard",
                    "truncated_shard", "corrupt_shard", "transform_failed")


class BadSampleCounter:
    """Counts skipped samples by kind in one process; ``take()`` returns and clears the counts."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if kind not in self.examples:
            self.examples[kind] = where
            log.warning("skipping bad data (%s): %s", kind, where)

    def take(self) -> tuple[int, ...]:
        """The counts in ``BAD_SAMPLE_KINDS`` order, as plain ints: inside a batch from a loader
        worker a tensor would cost a shared-memory handle of its own (a socket round trip)."""
        out = tuple(self.counts.get(k, 0) for k in BAD_SAMPLE_KINDS)
        self.counts.clear()
        return out


def counts_to_dict(counts: torch.Tensor) -> dict[str, int]:
    return {kind: int(n) for kind, n in zip(BAD_SAMPLE_KINDS, counts.tolist())}


@dataclass
class DecodedSample:
    key: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    annotation: dict


# OpenCV >= 4.11 decodes straight into RGB (the JPEG decoder writes the channels in that order),
# which saves the BGR -> RGB pass; older versions decode BGR and swap
DECODE_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> H x W x 3 uint8 RGB; None when they are empty or not an image
    (OpenCV raises on empty bytes instead of returning None)."""
    if not data:
        return None
    if DECODE_RGB is not None:
        return cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_RGB)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_sample(raw: dict, required: tuple[str, ...], check_all: bool = False) -> DecodedSample:
    """Turn a raw webdataset record into an image array and an annotation holding the ``required``
    fields, validated (with ``check_all``: every field, all validated). Training reads what the
    task uses: the writer checked everything, and decoding unused landmarks costs more than the
    image."""
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise SampleError("missing_field", f"sample {key!r} has no json annotation")
    try:
        annotation = parse_annotation(raw["json"], None if check_all else required)
        validate_annotation(annotation, required, only=None if check_all else required)
    except SampleError as err:
        raise SampleError(err.kind, f"sample {key!r}: {err}") from None
    for ext in IMAGE_EXTENSIONS:  # a loop, not a generator expression: this runs per sample
        data = raw.get(ext)
        if data is not None:
            break
    if data is None:
        raise SampleError("missing_field", f"sample {key!r} has no image (jpg or png)")
    image = decode_rgb(data)
    if image is None:
        raise SampleError("undecodable_image", f"sample {key!r}: image bytes cannot be decoded")
    return DecodedSample(key, image, annotation)


def read_shard(url: str, counter: BadSampleCounter, expected: int | None = None) -> Iterator[dict]:
    """Raw records of one tar shard; an empty, unreadable or broken shard is counted, not raised.

    A tar cut at a member boundary reads as a shorter valid archive, so the sample count the index
    recorded (``expected``) is what reveals it.
    """
    problems = []

    def report(kind: str, message: str) -> None:
        problems.append(kind)
        counter.add(kind, message)

    count = 0
    for raw in tar_records(url, report):
        count += 1
        yield raw
    if problems:
        return
    if count == 0:
        counter.add("empty_shard", url)
    elif expected is not None and count < expected:
        counter.add("truncated_shard", f"{url}: {count} of the {expected} samples in the index")


def shard_part(shards: list, index: int, parts: int) -> list:
    """Part ``index`` of ``parts`` disjoint round-robin parts of ``shards``; all of them when there
    are fewer shards than parts (the parts' seeds still differ)."""
    return list(shards[index::parts]) if len(shards) >= parts else list(shards)


def rank_shards(shards: list, rank: int, world: int) -> list:
    """The shards rank ``rank`` reads (its loader workers split them again, ``shard_part``)."""
    if len(shards) < world:
        log.warning("%d shards for %d ranks: ranks share shards (write more shards for disjoint ranks)",
                    len(shards), world)
    return shard_part(shards, rank, world)


class ShardStream(IterableDataset):
    """Training stream of one rank: resampled shards -> decode -> transform -> batches.

    ``transform(DecodedSample) -> dict`` makes the task's tensors (a ``reseed(int)`` method, if it
    has one, makes its augmentation reproducible); ``batcher`` groups them (plain or P x K, see
    ``PlainBatcher``). ``rank``/``world`` are fixed by the datamodule after the process group
    exists; ``epoch`` and ``batches_per_epoch`` are set by the loader before each epoch.

    The shuffle buffer holds raw records (bytes), decoded only when they leave it. With
    ``batches_per_epoch`` unset the stream is endless. Set, each loader worker makes its share of
    the epoch's batches (the loader takes batches from its workers in turn) and stops, decoding
    only the samples those batches need: what is left in the buffer when an epoch ends cost a tar
    read, not a decode and an augmentation (a P x K pool is drawn down at the end, see PKBatcher).
    """

    def __init__(self, shards: list[tuple[str, int]], transform: Callable, batcher: Callable,
                 required: tuple[str, ...], seed: int = 0, shuffle_buffer: int = 0, interleave: int = 4):
        super().__init__()
        self.shards, self.transform, self.batcher = list(shards), transform, batcher
        self.required, self.seed, self.shuffle_buffer = required, seed, shuffle_buffer
        self.interleave = interleave
        self.rank, self.world, self.epoch = 0, 1, 0
        self.batches_per_epoch: int | None = None

    def _rng(self) -> random.Random:
        info = get_worker_info()
        worker = info.id if info else 0
        return random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}")

    def _worker_batches(self) -> int | None:
        """This worker's share of the epoch: batch i of the epoch comes from worker i mod workers."""
        if self.batches_per_epoch is None:
            return None
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self.batches_per_epoch // workers + int(worker < self.batches_per_epoch % workers)

    def _raw_records(self, rng: random.Random, counter: BadSampleCounter) -> Iterator[dict]:
        """Records from ``interleave`` randomly drawn shards of this worker's part at a time, mixed
        record by record."""
        info = get_worker_info()
        shards = rank_shards(self.shards, self.rank, self.world)
        if info is not None:
            shards = shard_part(shards, info.id, info.num_workers)
        open_shards: list[Iterator[dict]] = []
        while True:
            while len(open_shards) < self.interleave:
                url, expected = rng.choice(shards)
                open_shards.append(read_shard(url, counter, expected))
            i = rng.randrange(len(open_shards))
            raw = next(open_shards[i], None)
            if raw is None:
                del open_shards[i]
                continue
            yield raw

    def _samples(self, records: Iterator[dict], counter: BadSampleCounter) -> Iterator[dict]:
        """Decoded and transformed samples; bad ones are counted and skipped."""
        for raw in records:
            try:
                sample = self.transform(decode_sample(raw, self.required))
            except SampleError as err:
                counter.add(err.kind, str(err))
                continue
            except Exception as err:  # an augmentation that fails on odd input: skip, count
                counter.add("transform_failed", f"sample {raw.get('__key__')!r}: {err!r}")
                continue
            yield sample

    def _shuffled(self, records: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from records
            return
        buffer: list[dict] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], record = record, buffer[i]
            yield record

    def __iter__(self) -> Iterator[dict]:
        rng = self._rng()
        if hasattr(self.transform, "reseed"):  # augmentation randomness follows the same seed
            self.transform.reseed(rng.getrandbits(32))
        self.epoch += 1  # a persistent worker's copy counts epochs by itself
        counter = BadSampleCounter()
        samples = self._samples(self._shuffled(self._raw_records(rng, counter), rng), counter)
        for batch in self.batcher(samples, rng, self._worker_batches()):
            batch["bad_samples"] = counter.take()
            yield batch


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor of equal-shaped tensors, stacked in their memory layout.

    Images arrive as C x H x W views of H x W x C arrays (``faces.image_tensor``): they are stacked
    as N x H x W x C, one plain copy per image, and handed over as an N x C x H x W view of it, the
    channels-last layout convolutions take directly. ``torch.stack`` would transpose every image
    into N x C x H x W memory instead. Inside a loader worker ``default_collate`` writes the batch
    straight into shared memory, which the batch must reach anyway to leave the worker."""
    first = tensors[0]
    if first.dim() == 3 and first.stride(0) == 1 and first.size(0) > 1 and first.permute(1, 2, 0).is_contiguous():
        return default_collate([t.permute(1, 2, 0) for t in tensors]).permute(0, 3, 1, 2)
    return default_collate(tensors)


def collate(samples: list[dict]) -> dict:
    """Stack tensors (``stack``), make integers (labels) one tensor, keep everything else as lists."""
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[name] = stack(values)
        elif isinstance(values[0], int):
            out[name] = torch.tensor(values)
        else:
            out[name] = values
    return out


def batch_as_is(batch: dict) -> dict:
    """The loader's collate_fn for ready batches (its default walks every list of keys again)."""
    return batch


class PlainBatcher:
    """Consecutive samples of the (shuffled) stream, ``batch_size`` at a time.

    The batcher protocol (``PKBatcher`` follows it too): ``batcher(samples, rng, batches)`` yields
    ``batches`` batches (None: as many as the samples make), reading as few samples past the last
    batch as it can: a plain batcher reads none.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, samples: Iterator[dict], rng: random.Random, batches: int | None = None) -> Iterator[dict]:
        if batches is not None:
            samples = itertools.islice(samples, batches * self.batch_size)
        batch = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []


class EpochLoader:
    """Cuts a rank's ``ShardStream`` into epochs of exactly ``batches_per_epoch`` batches.

    Loader workers persist across epochs (no re-spawning); each worker's stream advances its own
    epoch counter, so epoch e's stream depends only on (seed, e, rank, worker), and each worker
    makes only its share of the epoch's batches (``ShardStream``). Stateful for Lightning
    (``state_dict``/``load_state_dict`` go into checkpoints): a run resumed mid-epoch replays that
    epoch's stream and skips the batches already trained on. ``bad_samples`` accumulates the counts
    of skipped data over the epoch.
    """

    def __init__(self, dataset: ShardStream, batches_per_epoch: int, num_workers: int,
                 progress: Callable[[], tuple[int, int]] | None = None):
        self.dataset, self.batches_per_epoch, self.num_workers = dataset, batches_per_epoch, num_workers
        self.progress = progress  # () -> (epoch, batches completed in it), from the trainer
        self.epoch, self.skip = 0, 0
        self.bad_samples = torch.zeros(len(BAD_SAMPLE_KINDS), dtype=torch.long)
        self._loader: DataLoader | None = None
        self._loader_next_epoch = -1

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _loader_for(self, epoch: int) -> DataLoader:
        if self._loader is None or self._loader_next_epoch != epoch:
            self._loader = None  # shuts persistent workers down before new ones start
            self.dataset.epoch, self.dataset.batches_per_epoch = epoch, self.batches_per_epoch
            workers = self.num_workers
            self._loader = DataLoader(self.dataset, batch_size=None, num_workers=workers, collate_fn=batch_as_is,
                                      persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
        self._loader_next_epoch = epoch + 1
        return self._loader

    def __iter__(self) -> Iterator[dict]:
        if self.progress is not None:
            self.epoch = self.progress()[0]
        skip, self.skip = self.skip, 0
        self.bad_samples.zero_()
        it = iter(self._loader_for(self.epoch))
        for index in range(self.batches_per_epoch):
            batch = next(it)
            self.bad_samples += torch.tensor(batch["bad_samples"])
            if index >= skip:
                yield batch
        self.epoch += 1

    def state_dict(self) -> dict:
        epoch, done = self.progress() if self.progress is not None else (self.epoch, 0)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.skip = int(state["epoch"]), int(state["batches_done"])


class MemorySplit(Dataset):
    """An evaluation split held in memory as encoded records, decoded on access.

    Bad records are dropped when the split is loaded (counted in ``bad_samples``), so every rank sees
    the same list and a DistributedSampler can give every rank the same number of batches.
    """

    def __init__(self, shards: Iterable[tuple[str, int]], transform: Callable, required: tuple[str, ...]):
        self.transform, self.required = transform, required
        counter = BadSampleCounter()
        self.records: list[dict] = []
        for url, expected in shards:
            for raw in read_shard(url, counter, expected):
                try:
                    decode_sample(raw, required)
                except SampleError as err:
                    counter.add(err.kind, str(err))
                    continue
                self.records.append(raw)
        self.bad_samples = torch.tensor(counter.take())

    def __len__(self) -> int:
        return len(self.records)

    def decoded(self, index: int) -> DecodedSample:
        return decode_sample(self.records[index], self.required)

    def __getitem__(self, index: int) -> dict:
        sample = self.transform(self.decoded(index))
        sample["index"] = torch.tensor(index)
        return sample
