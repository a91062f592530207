"""Content checksums of samples, recorded in ``index.json`` by the shard writer.

A byte flipped inside a JPEG usually still decodes (into a slightly wrong picture), so no reader can
notice it; only a checksum taken when the sample was written can. Each sample gets a CRC-32 (made
for exactly this: it catches every burst error of up to 32 bits, and costs about a microsecond per
10 KB here) over its key and every member, field names included, in sorted field order. A shard's
entry in the index holds its samples' CRCs in file order as one hex string, 8 characters per sample:

    {"name": "shard-000000.tar", "samples": 3, "crc32": "1c291ca39e83a1f004c11db7"}

and the index says ``"checksums": "crc32"``. Index files without them (written before) stay valid:
there is simply nothing to verify. ``visage data inspect --verify`` compares.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Mapping

ALGORITHM = "crc32"
HEX_DIGITS = 8


def sample_checksum(key: str, fields: Mapping[str, bytes]) -> int:
    """CRC-32 of a sample: its key, then each field's name and bytes, fields in sorted order (the
    ``__key__`` / ``__url__`` entries of a read record are not fields)."""
    crc = zlib.crc32(key.encode())
    for name in sorted(fields):
        if name.startswith("__"):
            continue
        crc = zlib.crc32(b"\0" + name.encode() + b"\0", crc)
        crc = zlib.crc32(fields[name], crc)
    return crc


def pack(checksums: list[int]) -> str:
    return "".join(f"{crc:08x}" for crc in checksums)


def unpack(text: str) -> list[int]:
    if len(text) % HEX_DIGITS:
        raise ValueError(f"a checksum string of {len(text)} characters is not a whole number of CRCs")
    return [int(text[i:i + HEX_DIGITS], 16) for i in range(0, len(text), HEX_DIGITS)]


def read_checksums(directory: str | Path) -> dict[str, list[int]] | None:
    """Shard path -> its samples' CRCs in file order, from the split's index; None when the index
    records none (an index written before checksums were)."""
    directory = Path(directory)
    index = json.loads((directory / "index.json").read_text())
    if index.get("checksums") != ALGORITHM:
        return None
    return {str(directory / shard["name"]): unpack(shard.get(ALGORITHM, "")) for shard in index["shards"]}


def checksum_mismatch(url: str, position: int, record: dict, expected: list[int]) -> str | None:
    """None when record number ``position`` of shard ``url`` matches the index; else a one-line report."""
    key = record.get("__key__", "?")
    if position >= len(expected):
        return f"{url}: sample {key!r} (number {position} in the shard) is not in the index's checksums"
    actual = sample_checksum(key, {k: v for k, v in record.items() if isinstance(v, bytes)})
    if actual == expected[position]:
        return None
    return (f"{url}: sample {key!r} (number {position} in the shard): its content differs from the checksum "
            f"written with it ({ALGORITHM} {expected[position]:08x}, read {actual:08x}): rewrite or drop the sample")
