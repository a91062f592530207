"""The training stream of one rank: resampled, rank-disjoint shards -> decode -> transform -> batches.

Each DDP rank owns a disjoint subset of the shards (shard i goes to rank i mod world), split again
among its loader workers; each worker resamples shards from its part with a seed derived from
(seed, epoch, rank, worker) and reads a few of them interleaved (identity-grouped shards would
otherwise give batches of neighbouring identities only). ``datamodules.epoch_loader.EpochLoader``
cuts the endless stream into a fixed number of batches per epoch, so every rank runs the same
number of steps.
"""
from __future__ import annotations

import logging
import random
from typing import Callable, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.schema import SampleError
from datamodules.starvation import FruitlessReads, no_shards
from datamodules.tar_reader import tar_records

log = logging.getLogger(__name__)


def read_shard(url: str, counter: BadSampleCounter, expected: int | None = None) -> Iterator[dict]:
    """Raw records of one tar shard; an empty, unreadable or broken shard is counted, not raised.

    A shard that breaks off counts the samples it lost: ``expected`` (the index's count) minus the
    records read, or 1 when there is no index count. A tar cut at a member boundary reads as a
    shorter valid archive, so that count is also what reveals it.
    """
    stop: list[tuple[str, str]] = []

    def report(kind: str, message: str, key: str | None = None) -> None:
        if key is None:  # reading stopped here
            stop.append((kind, message))
        else:  # one sample's problem; the sample itself is read
            counter.add(kind, message, item=(url, key))

    count = 0
    for raw in tar_records(url, report):
        count += 1
        yield raw
    lost = 1 if expected is None else max(expected - count, 0)
    if stop:
        kind, message = stop[0]
    elif count == 0:
        kind, message = "empty_shard", f"{url}: holds no samples"
    elif expected is not None and count < expected:
        kind, message = "truncated_shard", f"{url}: ends after {count} samples"
    else:
        return
    if expected is not None:
        message += f" ({lost} of the {expected} samples in the index lost)"
    counter.add(kind, message, count=lost, item=(url,))


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

    def _part(self) -> list:
        """The shards this loader worker reads: its rank's, split again among the rank's workers."""
        info = get_worker_info()
        shards = rank_shards(self.shards, self.rank, self.world)
        return shard_part(shards, info.id, info.num_workers) if info is not None else shards

    def _raw_records(self, shards: list, rng: random.Random, counter: BadSampleCounter,
                     reads: FruitlessReads) -> Iterator[dict]:
        """Records from ``interleave`` randomly drawn shards of this worker's part at a time, mixed
        record by record."""
        if not shards:
            raise no_shards(self.rank)
        open_shards: list[Iterator[dict]] = []
        while True:
            while len(open_shards) < self.interleave:
                url, expected = rng.choice(shards)
                open_shards.append(_counted(url, read_shard(url, counter, expected), reads))
            i = rng.randrange(len(open_shards))
            raw = next(open_shards[i], None)
            if raw is None:
                del open_shards[i]
                continue
            yield raw

    def _samples(self, records: Iterator[dict], counter: BadSampleCounter, reads: FruitlessReads) -> Iterator[dict]:
        """Decoded and transformed samples; bad ones are counted and skipped."""
        for raw in records:
            try:
                sample = self.transform(decode_sample(raw, self.required))
            except SampleError as err:
                counter.add(err.kind, str(err), item=(raw.get("__url__"), raw.get("__key__")))
                reads.bad_record(raw.get("__url__"), raw.get("__key__"))
                continue
            except Exception as err:  # an augmentation that fails on odd input: skip, count
                counter.add("transform_failed", f"sample {raw.get('__key__')!r}: {err!r}",
                            item=(raw.get("__url__"), raw.get("__key__")))
                reads.bad_record(raw.get("__url__"), raw.get("__key__"))
                continue
            reads.good_sample()
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
        shards, info = self._part(), get_worker_info()
        reads = FruitlessReads([url for url, _ in shards], self.rank, info.id if info else 0,
                               info.num_workers if info else 1)
        samples = self._samples(self._shuffled(self._raw_records(shards, rng, counter, reads), rng), counter, reads)
        for batch in self.batcher(samples, rng, self._worker_batches()):
            batch["bad_samples"] = counter.take()
            yield batch


def _counted(url: str, records: Iterator[dict], reads: FruitlessReads) -> Iterator[dict]:
    """One read of a shard, reported to ``reads`` with its record count once it reaches the end."""
    count = 0
    for raw in records:
        count += 1
        yield raw
    reads.read_to_end(url, count)
