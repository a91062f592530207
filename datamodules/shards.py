"""Writing webdataset shards and their per-split index.

A dataset folder holds one sub-folder per split (``train``, ``val`` ...), each with tar shards
``shard-000000.tar`` ... and ``index.json``::

    {"schema_version": 1, "split": "train", "num_samples": 1200, "num_identities": 100,
     "fields": ["box", "identity", ...], "checksums": "crc32",
     "shards": [{"name": "shard-000000.tar", "samples": 256, "crc32": "<8 hex digits per sample>"}, ...]}

``checksums`` and the shards' ``crc32`` are optional (``datamodules/checksums.py``): older index
files without them stay valid.

Every sample is validated against ``datamodules.schema`` before it is written, so a bad converter
fails at the sample that is wrong instead of producing shards that break a training run later.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import webdataset as wds

from configs.errors import VisageError
from datamodules import checksums
from datamodules.schema import SCHEMA_VERSION, SampleError, check_key, validate_annotation

INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-{:06d}.tar"


def encode_image(image: np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """Encode an RGB (or grey) uint8 array as JPEG or PNG bytes."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else []
    ok, buf = cv2.imencode("." + ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {ext}")
    return buf.tobytes()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes, read from the header only."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


@dataclass
class ShardWriter:
    """Writes one split: ``with ShardWriter(root, "train") as w: w.write(key, image, annotation)``.

    ``split_on``: when set (e.g. ``"identity"``), a full shard is closed only where that annotation
    field changes, so an identity never straddles two shards (rank-disjoint identities in training).
    """

    root: str | Path
    split: str
    max_samples: int = 1000
    split_on: str | None = None
    image_ext: str = "jpg"
    jpeg_quality: int = 95
    _shards: list[dict] = field(default_factory=list, init=False)
    _writer: wds.TarWriter | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)
    _last_group: object = field(default=None, init=False)
    _identities: set = field(default_factory=set, init=False)
    _fields: set = field(default_factory=set, init=False)
    _keys: set = field(default_factory=set, init=False)
    _checksums: list[list[int]] = field(default_factory=list, init=False)  # per shard, per sample

    def __post_init__(self):
        self.directory = Path(self.root) / self.split
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("shard-*.tar"):
            stale.unlink()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write_index=exc_type is None)

    def _open_next(self) -> None:
        self._close_shard()
        name = SHARD_PATTERN.format(len(self._shards))
        self._shards.append({"name": name, "samples": 0})
        self._checksums.append([])
        # a fixed integer mtime: no PAX header per member (faster reads), byte-reproducible shards
        self._writer = wds.TarWriter(str(self.directory / name), mtime=0)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, key: str, image: np.ndarray | bytes, annotation: dict) -> None:
        check_key(key)
        if key in self._keys:
            raise SampleError("bad_key", f"duplicate sample key {key!r} in split {self.split!r}")
        if isinstance(image, (bytes, bytearray)):
            data, ext = bytes(image), _sniff_extension(image)
            width, height = image_size(data)
        else:
            data, ext = encode_image(image, self.image_ext, self.jpeg_quality), self.image_ext
            height, width = image.shape[:2]
        annotation = {"schema": SCHEMA_VERSION, "width": width, "height": height, **annotation}
        try:
            validate_annotation(annotation)
        except SampleError as err:
            raise SampleError(err.kind, f"sample {key!r}: {err}") from None
        group = annotation.get(self.split_on) if self.split_on else None
        shard_full = self._shards and self._shards[-1]["samples"] >= self.max_samples
        if self._writer is None or (shard_full and (self.split_on is None or group != self._last_group)):
            self._open_next()
        members = {ext: data, "json": json.dumps(annotation).encode()}
        self._writer.write({"__key__": key, **members})
        self._checksums[-1].append(checksums.sample_checksum(key, members))
        self._shards[-1]["samples"] += 1
        self._count += 1
        self._keys.add(key)
        self._last_group = group
        self._fields.update(k for k in annotation if k not in ("schema", "width", "height"))
        if "identity" in annotation:
            self._identities.add(annotation["identity"])

    def close(self, write_index: bool = True) -> Path:
        self._close_shard()
        index_path = self.directory / INDEX_NAME
        if write_index:
            index = {
                "schema_version": SCHEMA_VERSION,
                "split": self.split,
                "num_samples": self._count,
                "num_identities": len(self._identities),
                "fields": sorted(self._fields),
                "checksums": checksums.ALGORITHM,
                "shards": [{**shard, checksums.ALGORITHM: checksums.pack(crcs)}
                           for shard, crcs in zip(self._shards, self._checksums)],
            }
            index_path.write_text(json.dumps(index, indent=1))
        return index_path


def _sniff_extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise SampleError("undecodable_image", "encoded image is neither JPEG nor PNG")


def write_split(root: str | Path, split: str, samples: Iterable[tuple[str, np.ndarray | bytes, dict]],
                max_samples: int = 1000, split_on: str | None = None) -> Path:
    """Write an iterable of (key, image, annotation) as one split; returns the index path."""
    with ShardWriter(root, split, max_samples=max_samples, split_on=split_on) as writer:
        for key, image, annotation in samples:
            writer.write(key, image, annotation)
    return writer.directory / INDEX_NAME


@dataclass(frozen=True)
class SplitIndex:
    directory: Path
    num_samples: int
    num_identities: int
    fields: tuple[str, ...]
    shards: tuple[tuple[str, int], ...]  # (absolute path, sample count)

    @property
    def urls(self) -> list[str]:
        return [path for path, _ in self.shards]


class ShardIndexError(VisageError, FileNotFoundError):
    """A split folder without a readable index, or an index naming a shard that is not there."""


def read_index(directory: str | Path, check_shards: bool = True) -> SplitIndex:
    directory = Path(directory)
    path = directory / INDEX_NAME
    if not path.is_file():
        raise ShardIndexError(f"no {INDEX_NAME} in {directory}: write the split with `visage data ...` "
                          "or datamodules.shards.ShardWriter")
    try:
        index = json.loads(path.read_text())
        shards = tuple((str(directory / s["name"]), int(s["samples"])) for s in index["shards"])
        num_samples = int(index["num_samples"])
    except (ValueError, KeyError, TypeError) as err:
        raise ShardIndexError(f"{path} is not a valid shard index ({err})") from None
    if index.get("schema_version", 0) > SCHEMA_VERSION:
        raise ShardIndexError(f"{path} has schema version {index['schema_version']}, newer than this "
                          f"Visage ({SCHEMA_VERSION}): upgrade Visage")
    if check_shards:
        missing = [p for p, _ in shards if not Path(p).is_file()]
        if missing:
            raise ShardIndexError(f"{path} lists {len(missing)} shard(s) that do not exist, first: {missing[0]}")
    return SplitIndex(directory, num_samples, int(index.get("num_identities", 0)),
                      tuple(index.get("fields", ())), shards)
