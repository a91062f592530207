"""Converters from official dataset formats to Visage shards.

    recordio.py           insightface MXNet RecordIO (train.rec + train.idx), read without mxnet
    verification_bin.py   insightface verification pairs (lfw.bin, cfp_fp.bin, agedb_30.bin)
    folders.py            one folder per identity (root/<name>/*.jpg)
    wider_face.py         WIDER FACE annotation text + images (+ the evaluation's .mat files) -> scenes
    celeba_landmarks.py   CelebA 5-point landmarks (+ boxes, partition) -> face crops

Converters never stop at a bad sample: they skip it, count it by kind in a ``ConversionReport``,
warn once with the counts, and save the report as ``conversion.json`` beside the split's index.
"""
from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from datamodules.schema import SampleError

REPORT_NAME = "conversion.json"
MAX_EXAMPLES = 20


@dataclass
class ConversionReport:
    source: str
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first MAX_EXAMPLES skip messages

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, kind: str, message: str) -> None:
        self.skipped[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    @contextmanager
    def sample(self, where: str) -> Iterator[None]:
        """Around the conversion of one sample: counts it as written, or as skipped by kind (a bad
        sample, a missing or unreadable file) with ``where`` naming it; the conversion goes on."""
        try:
            yield
        except SampleError as err:
            self.skip(err.kind, f"{where}: {err}")
        except FileNotFoundError:
            self.skip("missing_image", f"{where}: the image does not exist")
        except OSError as err:
            self.skip("unreadable_file", f"{where}: {err}")
        else:
            self.written += 1

    def summary(self) -> str:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.skipped.items()))
        return f"{self.source}: wrote {self.written} samples, skipped {self.num_skipped} ({kinds or 'none'})"

    def finish(self, split_dir: str | Path) -> Path:
        """Write ``conversion.json`` into ``split_dir`` and warn when anything was skipped."""
        path = Path(split_dir) / REPORT_NAME
        path.write_text(json.dumps({"source": self.source, "written": self.written,
                                    "skipped": dict(self.skipped), "examples": self.examples}, indent=1))
        if self.num_skipped:
            first = f"; first: {self.examples[0]}" if self.examples else ""
            warnings.warn(self.summary() + first + f" (details in {path})", stacklevel=3)
        return path


def read_conversion_report(split_dir: str | Path) -> dict:
    """The ``conversion.json`` a converter left in ``split_dir``."""
    return json.loads((Path(split_dir) / REPORT_NAME).read_text())


def verify_image_bytes(data: bytes) -> None:
    """Decode ``data`` completely; raise SampleError("undecodable_image") if it is not a whole image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # raises on truncated or corrupt data, unlike a header-only open
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        raise SampleError("undecodable_image", f"image does not decode ({type(err).__name__}: {err})") from None
