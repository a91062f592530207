"""`visage data inspect SPLIT [--task TASK] [--verify]`: what a split holds and what is wrong with it.

Without ``--task`` every sample is checked against the whole schema (every field it has). With
``--task`` a sample is bad exactly when training that task would skip it: the fields the task's
datamodule requires (``required_fields``, found through the task table) must be present and valid,
as the training reader checks them; problems in fields the task does not read are listed apart
(training uses those samples). ``--verify`` compares every sample with the checksum the shard writer
recorded in ``index.json`` and names each shard and sample whose bytes changed since.

Counts are samples, as in training's ``data/skipped_*`` (``datamodules/bad_samples.py``): a broken
shard counts the samples its index says it lost. The exit status is 1 when anything is bad.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path


def task_required_fields(name: str) -> tuple[str, ...]:
    from trainers.tasks import load, task  # noqa: PLC0415

    return tuple(load(task(name).datamodule).required_fields)


def inspect_split(split: Path, task_name: str | None = None, verify: bool = False,
                  shown_mismatches: int = 20) -> int:
    from datamodules.bad_samples import BadSampleCounter  # noqa: PLC0415
    from datamodules.checksums import checksum_mismatch, read_checksums  # noqa: PLC0415
    from datamodules.decoding import decode_sample  # noqa: PLC0415
    from datamodules.schema import SampleError, parse_annotation, validate_annotation  # noqa: PLC0415
    from datamodules.shard_stream import read_shard  # noqa: PLC0415
    from datamodules.shards import read_index  # noqa: PLC0415

    split = Path(split)
    index = read_index(split)
    required = task_required_fields(task_name) if task_name else ()
    recorded = read_checksums(split) if verify else None
    counter, unread_fields, good = BadSampleCounter(), Counter(), 0
    mismatches: list[str] = []
    verified = 0
    for url, expected in index.shards:
        sums = recorded.get(url) if recorded is not None else None
        for position, raw in enumerate(read_shard(url, counter, expected)):
            if sums is not None:
                verified += 1
                problem = checksum_mismatch(url, position, raw, sums)
                if problem:
                    mismatches.append(problem)
            try:
                decode_sample(raw, required, check_all=task_name is None)
            except SampleError as err:
                counter.add(err.kind, str(err), item=(url, raw.get("__key__")))
                continue
            good += 1
            if task_name is not None and "json" in raw:
                try:  # the fields the task does not read: reported, not skipped
                    validate_annotation(parse_annotation(raw["json"]))
                except SampleError as err:
                    unread_fields[err.kind] += 1
    bad = {kind: n for kind, n in counter.counts.items() if n}
    usable = f"usable for {task_name}" if task_name else "readable"
    print(f"{split}: {len(index.shards)} shards, {index.num_samples} samples in the index, {good} {usable}, "
          f"{index.num_identities} identities, fields: {', '.join(index.fields)}")
    if task_name:
        print(f"task {task_name} requires: {', '.join(required) or 'no annotation field'} (and an image)")
        print(f"bad (skipped when training {task_name}): {bad or 'none'}")
        if unread_fields:
            print(f"problems in fields {task_name} does not read (samples used in training): {dict(unread_fields)}")
    else:
        print(f"bad: {bad or 'none'}")
    if verify:
        _print_verification(recorded is not None, verified, mismatches, shown_mismatches)
    return 0 if not bad and not mismatches else 1


def _print_verification(have_checksums: bool, verified: int, mismatches: list[str], shown: int) -> None:
    if not have_checksums:
        print("checksums: none in this index (written before Visage recorded them): nothing verified")
        return
    print(f"checksums: {verified} samples verified, {len(mismatches)} differ from what was written")
    for line in mismatches[:shown]:
        print(f"  {line}")
    if len(mismatches) > shown:
        print(f"  ... and {len(mismatches) - shown} more")
