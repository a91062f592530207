"""Reading back what an offline wandb run wrote, without a server: its ``run-<id>.wandb`` file.

wandb 0.31's offline runs keep everything (run settings, config, history, summary) in that one
file; ``files/`` holds the media and the console output only. The file is a LevelDB-style log: a
7-byte header (``:W&B``, magic 0xBEE1 little-endian, version 0), then 32 KiB blocks of records, each
``crc32 (4 bytes) | length (2, little-endian) | type (1)`` and the data, type 1 a whole record and
2 / 3 / 4 the first / middle / last piece of one split across blocks; fewer than 7 bytes left in a
block are padding. Each whole record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2  # noqa: PLC0415

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    payloads, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0 and length == 0:  # padding up to the block's end
            position += left
            continue
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
            pending = b""
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    """What one offline run recorded."""
    folder: Path
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)         # wandb.init's config, then every update
    config_updates: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one dict per wandb.log call
    summary: dict = field(default_factory=dict)        # the last value of every key


def read_offline_run(folder: Path) -> OfflineRun:
    (path,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(Path(folder))
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.job_type, run.name = r.run_id, r.run_group, r.job_type, r.display_name
            run.notes, run.tags = r.notes, list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            update = _items(record.config.update)
            run.config_updates.append(update)
            run.config.update(update)
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline wandb run under ``<run_dir>/wandb``, oldest first."""
    return [read_offline_run(f) for f in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))]
