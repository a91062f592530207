"""insightface MXNet RecordIO face datasets (``train.rec`` + ``train.idx``), read without mxnet.

File format (dmlc-core RecordIO, as MXNet's ``MXIndexedRecordIO`` writes it):

- ``train.idx``: one line per record, ``key<TAB>byte offset`` of the record in ``train.rec``.
- a record: ``uint32 magic 0xced7230a``, ``uint32 lrec`` (upper 3 bits: continuation flag ``cflag``,
  lower 29 bits: payload length), the payload, zero padding to a multiple of 4 bytes. A payload that
  holds the magic number at a 4-byte-aligned position is stored in parts, split at each such
  position (the magic itself is dropped): ``cflag`` 1 = first part, 2 = middle, 3 = last, 0 = whole.
  The reader joins the parts with the magic number between them.
- a payload (MXNet ``IRHeader``): struct ``<IfQQ`` = ``flag`` u32, ``label`` f32, ``id`` u64,
  ``id2`` u64; when ``flag > 0``, ``flag`` float32 labels follow (and the f32 field is unused);
  then the encoded image bytes.
- insightface datasets start with a header record 0 (``flag`` 2, no image): ``label[0]`` is the
  number of images + 1 and ``label[1]`` the end of the identity records. Images are keys
  ``1 .. label[0] - 1``; keys ``label[0] .. label[1] - 1`` are per-identity records whose labels
  are the ``[first, end)`` image-key range of that identity. Files without that header are read
  as images under every key of the index.
"""
from __future__ import annotations

import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from configs.errors import VisageError
from datamodules.converters import ConversionReport, verify_image_bytes
from datamodules.schema import SampleError
from datamodules.shards import INDEX_NAME, ShardWriter

RECORD_MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
IMAGE_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3


class RecordIOError(VisageError, ValueError):
    """A record that cannot be read; the message names the file, the record key and its offset."""


@dataclass(frozen=True)
class ImageRecord:
    labels: tuple[float, ...]  # one label when flag == 0, else the ``flag`` labels
    id: int
    id2: int
    image: bytes

    @property
    def label(self) -> float:
        return self.labels[0]


# ---------------------------------------------------------------- payloads (IRHeader + image)

def pack_payload(labels: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """An IRHeader payload: a number gives ``flag`` 0; a sequence gives ``flag = len`` extra labels."""
    if isinstance(labels, numbers.Real):
        return IMAGE_HEADER.pack(0, float(labels), id, id2) + bytes(image)
    labels = [float(value) for value in labels]
    if not labels:
        raise ValueError("a label sequence must hold at least one label")
    extra = struct.pack(f"<{len(labels)}f", *labels)
    return IMAGE_HEADER.pack(len(labels), 0.0, id, id2) + extra + bytes(image)


def unpack_payload(payload: bytes) -> ImageRecord:
    if len(payload) < IMAGE_HEADER.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {IMAGE_HEADER.size}-byte header")
    flag, label, id_, id2 = IMAGE_HEADER.unpack_from(payload)
    start = IMAGE_HEADER.size
    if flag == 0:
        return ImageRecord((label,), id_, id2, payload[start:])
    end = start + 4 * flag
    if end > len(payload):
        raise ValueError(f"header announces {flag} labels but the payload holds {len(payload)} bytes")
    return ImageRecord(struct.unpack_from(f"<{flag}f", payload, start), id_, id2, payload[end:])


# ---------------------------------------------------------------- records on disk

def encode_record(payload: bytes) -> bytes:
    """The bytes of one record as dmlc-core writes it (split at aligned magic numbers, padded)."""
    if len(payload) > LENGTH_MASK:
        raise ValueError(f"a record payload must be below 2**29 bytes, got {len(payload)}")
    out, start = bytearray(), 0
    for position in range(0, len(payload) - 3, 4):
        if payload[position:position + 4] == MAGIC_BYTES:
            cflag = CFLAG_FIRST if start == 0 else CFLAG_MIDDLE
            out += MAGIC_BYTES + struct.pack("<I", (cflag << LENGTH_BITS) | (position - start))
            out += payload[start:position]  # aligned start and end: no padding needed
            start = position + 4
    cflag = CFLAG_LAST if start > 0 else CFLAG_WHOLE
    tail = payload[start:]
    out += MAGIC_BYTES + struct.pack("<I", (cflag << LENGTH_BITS) | len(tail)) + tail
    out += b"\0" * (-len(tail) % 4)
    return bytes(out)


def write_recordio(rec_path: str | Path, idx_path: str | Path,
                   records: Iterable[tuple[int, float | Sequence[float], bytes]]) -> int:
    """Write ``(key, label or labels, image bytes)`` records and their index; returns the count."""
    count = 0
    with open(rec_path, "wb") as rec, open(idx_path, "w") as idx:
        for key, labels, image in records:
            idx.write(f"{int(key)}\t{rec.tell()}\n")
            rec.write(encode_record(pack_payload(labels, image)))
            count += 1
    return count


def insightface_layout(samples: Sequence[tuple[int, bytes]]) -> list[tuple[int, Sequence[float] | float, bytes]]:
    """Records in insightface's layout for ``(identity, image bytes)`` samples sorted by identity:
    header record 0, images under keys 1..n, then one ``[first, end)`` key-range record per identity."""
    identities = [identity for identity, _ in samples]
    if identities != sorted(identities):
        raise ValueError("insightface layouts group images by identity: sort the samples by identity")
    records: list = [(key, float(identity), image) for key, (identity, image) in enumerate(samples, start=1)]
    ranges: dict[int, list[int]] = {}
    for key, identity in enumerate(identities, start=1):
        ranges.setdefault(identity, [key, key + 1])[1] = key + 1
    first_identity_key = len(samples) + 1
    for offset, (first, end) in enumerate(ranges.values()):
        records.append((first_identity_key + offset, (float(first), float(end)), b""))
    header = (0, (float(first_identity_key), float(first_identity_key + len(ranges))), b"")
    return [header] + records


def read_idx(idx_path: str | Path) -> dict[int, int]:
    """``{key: offset}`` from a ``.idx`` file (lines ``key<TAB>offset``)."""
    offsets = {}
    with open(idx_path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (IndexError, ValueError):
                raise RecordIOError(f"{idx_path}, line {number}: expected 'key<TAB>offset', "
                                    f"got {line.rstrip()!r}") from None
            offsets[key] = offset
    return offsets


class RecordIOReader:
    """Random access to the images of an insightface ``.rec`` through its ``.idx``.

    ``keys``: the image keys (sorted); ``header``: ``(label[0], label[1])`` of insightface's header
    record 0, or None; ``missing_keys``: image keys the header promises but the index lacks.
    Iteration yields ``(key, label, image_bytes)``; a record that cannot be read raises
    RecordIOError naming the file, the key and the offset. Safe to use after ``fork``: every
    process opens its own file handle.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.offsets = read_idx(self.idx_path)
        self._handle, self._pid = None, None
        self.header: tuple[int, int] | None = None
        self.missing_keys: list[int] = []
        self.keys = sorted(self.offsets)
        if 0 in self.offsets:
            first = self.read_record(0)
            if len(first.labels) >= 2 and not first.image:
                self.header = (int(first.labels[0]), int(first.labels[1]))
                image_keys = range(1, self.header[0])
                self.keys = [key for key in image_keys if key in self.offsets]
                self.missing_keys = [key for key in image_keys if key not in self.offsets]

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = open(self.rec_path, "rb"), os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        for key in self.keys:
            label, image = self.read(key)
            yield key, label, image

    def read_payload(self, key: int) -> bytes:
        """The payload of record ``key``, its parts joined."""
        if key not in self.offsets:
            raise KeyError(f"record key {key} is not in {self.idx_path}")
        offset = self.offsets[key]
        where = f"{self.rec_path}: record key {key} at offset {offset}"
        handle = self._file()
        handle.seek(offset)
        parts, position, expect_continuation = [], offset, False
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{where}: truncated, no record header at byte {position}")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORD_MAGIC:
                raise RecordIOError(f"{where}: bad magic 0x{magic:08x} at byte {position} "
                                    f"(expected 0x{RECORD_MAGIC:08x})")
            cflag, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
            allowed = (CFLAG_MIDDLE, CFLAG_LAST) if expect_continuation else (CFLAG_WHOLE, CFLAG_FIRST)
            if cflag not in allowed:
                raise RecordIOError(f"{where}: continuation flag {cflag} at byte {position} where one of "
                                    f"{allowed} must follow")
            padded = length + (-length % 4)
            data = handle.read(padded)
            if len(data) < padded:
                raise RecordIOError(f"{where}: truncated, part at byte {position} announces {length} bytes, "
                                    f"{len(data)} remain")
            parts.append(data[:length])
            position += 8 + padded
            if cflag in (CFLAG_WHOLE, CFLAG_LAST):
                return MAGIC_BYTES.join(parts)
            expect_continuation = True

    def read_record(self, key: int) -> ImageRecord:
        payload = self.read_payload(key)
        try:
            return unpack_payload(payload)
        except ValueError as err:
            raise RecordIOError(f"{self.rec_path}: record key {key} at offset {self.offsets[key]}: {err}") from None

    def read(self, key: int) -> tuple[int, bytes]:
        """``(identity label, encoded image bytes)`` of record ``key``."""
        record = self.read_record(key)
        label = record.label
        if label != int(label) or label < 0:
            raise RecordIOError(f"{self.rec_path}: record key {key} at offset {self.offsets[key]}: "
                                f"label {label} is not an integer identity >= 0")
        return int(label), record.image


def resolve_rec_paths(source: str | Path | tuple[str | Path, str | Path]) -> tuple[Path, Path]:
    """A folder holding ``train.rec``/``train.idx``, a ``.rec`` path (``.idx`` beside it) or a pair."""
    if isinstance(source, (tuple, list)):
        rec_path, idx_path = (Path(p) for p in source)
    elif Path(source).is_dir():
        rec_path, idx_path = Path(source) / "train.rec", Path(source) / "train.idx"
    else:
        rec_path = Path(source)
        idx_path = rec_path.with_suffix(".idx")
    for path in (rec_path, idx_path):
        if not path.is_file():
            raise FileNotFoundError(f"RecordIO file {path} does not exist")
    return rec_path, idx_path


def convert_recordio(source: str | Path | tuple[str | Path, str | Path], out_root: str | Path,
                     split: str = "train", max_samples: int = 1000, split_on: str | None = None,
                     verify_images: bool = False) -> Path:
    """Write the images of an insightface RecordIO dataset as shards with ``{"identity": label}``.

    Image bytes go through unchanged (no re-encoding); sample keys are the record keys, zero padded
    (``000000123``). Corrupt records, missing records and images that are neither JPEG nor PNG (or,
    with ``verify_images``, do not decode) are skipped and counted in ``conversion.json`` beside the
    index, with one warning. ``split_on="identity"`` keeps every identity inside one shard.
    Returns the path of the split's ``index.json``.
    """
    rec_path, idx_path = resolve_rec_paths(source)
    report = ConversionReport(source=str(rec_path))
    with RecordIOReader(rec_path, idx_path) as reader, \
            ShardWriter(out_root, split, max_samples=max_samples, split_on=split_on) as writer:
        for key in reader.missing_keys:
            report.skip("missing_record", f"{idx_path}: image key {key} (below header label {reader.header[0]}) "
                                          "is not in the index")
        for key in reader.keys:
            try:
                label, image = reader.read(key)
                if verify_images:
                    verify_image_bytes(image)
                writer.write(f"{key:09d}", image, {"identity": label})
            except RecordIOError as err:
                report.skip("corrupt_record", str(err))
                continue
            except SampleError as err:
                report.skip(err.kind, f"{rec_path}: record key {key}: {err}")
                continue
            except (OSError, SyntaxError) as err:  # PIL could not read the image header
                report.skip("undecodable_image", f"{rec_path}: record key {key}: {err}")
                continue
            report.written += 1
    report.finish(writer.directory)
    return writer.directory / INDEX_NAME
