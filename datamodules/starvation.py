"""A training stream that can never make a sample stops with an error instead of reading forever.

The stream resamples its shards endlessly and skips bad data, so a loader worker whose shards are
all empty, unreadable or full of bad samples would spin at full CPU while the other ranks wait in
their next collective. ``FruitlessReads`` watches one worker's reads: once every shard of its part
has been read to its end since the last good sample, and every record those shards hold has turned
out bad, nothing can ever come out, and it raises ``NoTrainingSamples`` naming the rank, the worker
and the shards. The raise stops that rank (its loader re-raises in the main process); the other
ranks stop when its processes are gone (see ``trainers.rank_launcher`` and srun's
``--kill-on-bad-exit``).
"""
from __future__ import annotations

from configs.errors import VisageError

SHOWN_SHARDS = 4  # shard paths a message names before "and N more"


class NoTrainingSamples(VisageError, RuntimeError):
    """A rank (a loader worker of it) whose shards can never yield a training sample."""

    exit_code = 2  # bad input data

    @classmethod
    def from_loader(cls, err: "NoTrainingSamples") -> "NoTrainingSamples":
        """The worker's own one-line message out of the text a DataLoader re-raises it with (the
        worker's traceback, its last line ``...NoTrainingSamples: <message>``)."""
        text = str(err)
        if "Traceback" not in text:
            return err
        last = text.strip().splitlines()[-1]
        return cls(last.partition(f"{cls.__name__}: ")[2] or last)


def describe_shards(urls: list[str]) -> str:
    shown = ", ".join(urls[:SHOWN_SHARDS])
    return shown + (f" and {len(urls) - SHOWN_SHARDS} more" if len(urls) > SHOWN_SHARDS else "")


def no_shards(rank: int) -> NoTrainingSamples:
    return NoTrainingSamples(f"rank {rank} has no training shards to read (the split's index.json lists none): "
                             "write the split again or point data.root at one that holds shards")


class FruitlessReads:
    """One loader worker's reads since the stream last produced a good sample."""

    def __init__(self, urls: list[str], rank: int, worker: int, workers: int):
        self.urls, self.rank, self.worker, self.workers = list(urls), rank, worker, workers
        self.records_in: dict[str, int] = {}  # shard -> records it held when read to its end
        self.bad: set[tuple[str, str]] = set()  # (shard, key) of records that failed

    def read_to_end(self, url: str, records: int) -> None:
        self.records_in[url] = records
        self._check()

    def bad_record(self, url: str, key: str) -> None:
        self.bad.add((url, key))
        self._check()

    def good_sample(self) -> None:
        if self.records_in or self.bad:
            self.records_in.clear()
            self.bad.clear()

    def _check(self) -> None:
        if len(self.records_in) < len(set(self.urls)) or len(self.bad) < sum(self.records_in.values()):
            return
        where = f"rank {self.rank}" + (f", loader worker {self.worker} of {self.workers}," if self.workers > 1 else "")
        held = sum(self.records_in.values())
        what = "every one is empty or unreadable" if held == 0 else f"all {held} samples in them are bad"
        raise NoTrainingSamples(
            f"{where} can read no training sample from its shards {describe_shards(sorted(set(self.urls)))} "
            f"({what}): check them with `visage data inspect SPLIT`, rewrite them, or use more shards "
            "than ranks x data.num_workers so every reader gets good ones")
