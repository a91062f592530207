"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

A ``.bin`` file is a pickle of ``(images, is_same)``: ``images`` holds 2N encoded images laid out
pairwise (pair i is ``images[2i]``, ``images[2i + 1]``), ``is_same`` holds N booleans. The files
were written by Python 2, so they are read with ``encoding="bytes"``. Unpickling runs code named in
the file, so the reader only lets through the few classes such a file needs (numpy arrays and
scalars, byte strings): a file asking for anything else is refused.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from configs.errors import VisageError
from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.pairs import balanced_pairs
from datamodules.schema import SampleError
from datamodules.shard_stream import read_shard
from datamodules.shards import read_index

# (module, name) pairs a verification .bin may reference: numpy arrays/scalars and bytes helpers.
ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray"),
}


class VerificationBinError(VisageError, ValueError):
    """A .bin file that is not a verification set; the message names the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a verification set)")
        return super().find_class(module, name)


def _as_bytes(image, index: int, path: Path) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1:
        return image.tobytes()
    raise VerificationBinError(f"{path}: image {index} is a {type(image).__name__}, not encoded image bytes")


def read_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """``(images, is_same)``: 2N encoded images (pair i = images 2i and 2i+1) and N booleans."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            content = _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, UnicodeDecodeError, struct.error) as err:
        raise VerificationBinError(f"{path} is not a readable verification pickle "
                                   f"({type(err).__name__}: {err})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise VerificationBinError(f"{path}: expected a pickled (images, is_same) pair, "
                                   f"got {type(content).__name__}")
    images, is_same = content
    if not isinstance(images, (list, tuple)):
        raise VerificationBinError(f"{path}: images must be a list, got {type(images).__name__}")
    try:
        is_same = np.asarray(is_same)
    except (TypeError, ValueError) as err:
        raise VerificationBinError(f"{path}: is_same is not a list of booleans ({err})") from None
    if is_same.ndim != 1 or not (is_same.dtype == bool or np.isin(is_same, (0, 1)).all()):
        raise VerificationBinError(f"{path}: is_same must be a flat list of booleans")
    if len(images) != 2 * len(is_same):
        raise VerificationBinError(f"{path}: {len(images)} images for {len(is_same)} pairs "
                                   f"(expected {2 * len(is_same)}: two images per pair)")
    return [_as_bytes(image, i, path) for i, image in enumerate(images)], is_same.astype(bool)


def write_verification_bin(path: str | Path, images: Sequence[bytes], is_same: Sequence[bool]) -> Path:
    """Write ``(images, is_same)`` in the insightface layout (2 images per pair, pairwise)."""
    path = Path(path)
    images = [bytes(image) for image in images]
    is_same = [bool(value) for value in is_same]
    if len(images) != 2 * len(is_same):
        raise ValueError(f"{path}: {len(images)} images for {len(is_same)} pairs (need two per pair)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump((images, is_same), handle, protocol=4)
    return path


# ---------------------------------------------------------------- pairs from a shard split

def _read_split_samples(split_dir: str | Path) -> tuple[list[bytes], list[int]]:
    """Image bytes and identity of every readable sample of a shard split, in shard order; bad
    samples are skipped and counted (``BadSampleCounter`` warns once per kind, naming the sample)."""
    counter = BadSampleCounter()
    images, identities = [], []
    for url, expected in read_index(split_dir).shards:
        for raw in read_shard(url, counter, expected):
            try:
                sample = decode_sample(raw, ("identity",))
            except SampleError as err:
                counter.add(err.kind, f"{url}: {err}", item=(url, raw.get("__key__")))
                continue
            images.append(raw.get("jpg") or raw["png"])
            identities.append(int(sample.annotation["identity"]))
    return images, identities


def pair_indices(identities: Sequence[int], num_pairs: int, seed: int = 0) -> list[tuple[int, int, bool]]:
    """``num_pairs / 2`` same-identity and as many different-identity pairs of sample indices (a
    .bin holds as many of each), alternating, drawn by the one pair drawer (``datamodules.pairs``)."""
    if num_pairs <= 0 or num_pairs % 2:
        raise ValueError(f"num_pairs must be a positive even number (half same, half different), got {num_pairs}")
    idx_a, idx_b, is_same = balanced_pairs(identities, num_pairs, seed)
    return [(int(a), int(b), bool(same)) for a, b, same in zip(idx_a, idx_b, is_same)]


def verification_pairs_from_split(split_dir: str | Path, num_pairs: int, seed: int = 0,
                                  out_path: str | Path | None = None) -> tuple[list[bytes], np.ndarray]:
    """Balanced verification pairs from the identity labels of a shard split.

    Returns ``(images, is_same)`` in the ``.bin`` layout and writes them to ``out_path`` when given.
    """
    images, identities = _read_split_samples(split_dir)
    pairs = pair_indices(identities, num_pairs, seed)
    pair_images = [images[index] for a, b, _ in pairs for index in (a, b)]
    is_same = np.array([same for _, _, same in pairs], dtype=bool)
    if out_path is not None:
        write_verification_bin(out_path, pair_images, is_same)
    return pair_images, is_same
