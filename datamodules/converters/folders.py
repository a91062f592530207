"""Folder-per-identity image trees (``root/<identity name>/*.jpg``) to shards.

Identity labels follow the sorted folder names (0 for the first name, as torchvision's ImageFolder
numbers them; a folder without a readable image keeps its label). ``classes.json`` beside the
split's index maps each folder name to its label. JPEG and PNG files go through unchanged after a
full decode check; files that do not decode are skipped and counted; other files are ignored and
counted as ``not_an_image``.
"""
from __future__ import annotations

import json
from pathlib import Path

from datamodules.converters import ConversionReport, verify_image_bytes
from datamodules.schema import SampleError
from datamodules.shards import INDEX_NAME, ShardWriter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_NAME = "classes.json"


def identity_folders(root: str | Path) -> list[Path]:
    """The identity folders under ``root``, sorted by name (hidden folders left out)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not folders:
        raise ValueError(f"{root} holds no identity folders (expected root/<identity>/*.jpg)")
    return folders


def convert_folders(root: str | Path, out_root: str | Path, split: str = "train",
                    max_samples: int = 1000, split_on: str | None = None) -> Path:
    """Write every image of ``root/<identity>/`` as a sample ``{"identity": label}``.

    Sample keys are ``<label>_<n>`` (zero padded, so no dots or spaces from file names reach
    webdataset). ``split_on="identity"`` keeps every identity inside one shard. Returns the
    split's ``index.json`` path; ``classes.json`` and ``conversion.json`` lie beside it.
    """
    folders = identity_folders(root)
    report = ConversionReport(source=str(root))
    with ShardWriter(out_root, split, max_samples=max_samples, split_on=split_on) as writer:
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            number = 0
            for path in files:
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    report.skip("not_an_image", f"{path}: not a .jpg/.jpeg/.png file")
                    continue
                try:
                    data = path.read_bytes()
                    verify_image_bytes(data)
                    writer.write(f"{label:07d}_{number:06d}", data, {"identity": label})
                except SampleError as err:
                    report.skip(err.kind, f"{path}: {err}")
                    continue
                except (OSError, SyntaxError) as err:
                    report.skip("unreadable_file", f"{path}: {err}")
                    continue
                number += 1
                report.written += 1
    classes = {folder.name: label for label, folder in enumerate(folders)}
    (writer.directory / CLASSES_NAME).write_text(json.dumps(classes, indent=1, ensure_ascii=False))
    report.finish(writer.directory)
    return writer.directory / INDEX_NAME


def read_classes(split_dir: str | Path) -> dict[str, int]:
    """``{folder name: identity label}`` written by ``convert_folders``."""
    return json.loads((Path(split_dir) / CLASSES_NAME).read_text())
