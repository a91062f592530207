"""CelebA 5-point landmark faces to face-crop shards (the MTCNN landmark branch's data).

Files (CelebA's own layout; each list starts with a count line and a header line):
  list_landmarks_align_celeba.txt  ``000001.jpg lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y
                                   leftmouth_x leftmouth_y rightmouth_x rightmouth_y`` in the aligned
                                   178 x 218 images (img_align_celeba/)
  list_landmarks_celeba.txt        the same columns in the in-the-wild images (img_celeba/)
  list_bbox_celeba.txt             ``000001.jpg x_1 y_1 width height`` face boxes of the in-the-wild images
  list_eval_partition.txt          ``000001.jpg 0|1|2``: train, val, test

Each face becomes a sample ``{"box": [x0, y0, x1, y1], "landmarks": [[x, y] * 5]}`` (FIVE order:
left eye, right eye, nose, left mouth corner, right mouth corner; "left" is the image left, as in
CelebA). CelebA's integer coordinates name pixels, so points move to pixel centres (+0.5) and a box
``x_1 y_1 width height`` becomes ``[x_1, y_1, x_1 + width, y_1 + height]``. With a box file, the
image is cut to the box grown by ``margin`` of its size on every side (clipped to the image) and
re-encoded as JPEG; without one (the aligned images), the whole image is kept and its box is
estimated from the 5 points with the head proportions of Visage's synthetic faces (skull top to
chin, cheek to cheek: ``box_from_landmarks``), so landmark crops match the scenes' boxes.

A malformed list stops with one line naming the file and line; a missing or undecodable image, or
an image absent from the partition or the box file, is skipped and counted in ``conversion.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from configs.errors import VisageError
from datamodules.converters import ConversionReport, verify_image_bytes
from datamodules.schema import SampleError
from datamodules.shards import INDEX_NAME, ShardWriter, encode_image

PARTITION_SPLITS = {0: "train", 1: "val", 2: "test"}
# the synthetic head box (height H) against its 5 points, measured over 200 frontal synthetic faces:
# eye distance 0.361 H, eye midpoint to mouth midpoint 0.304 H, width 0.77 H, centre 0.013 H below the eyes
EYE_DISTANCE, EYE_TO_MOUTH, BOX_WIDTH, CENTRE_BELOW_EYES = 0.361, 0.304, 0.77, 0.013


class CelebAFormatError(VisageError, ValueError):
    """A CelebA list file that cannot be read; the message names the file and the line."""


def read_celeba_list(path: str | Path, columns: int) -> dict[str, list[float]]:
    """``{image name: values}`` of a CelebA list file: a count line, a header line, then rows of a
    name and ``columns`` numbers. ``columns=1`` reads the partition file (no header line)."""
    path = Path(path)
    if not path.is_file():
        raise CelebAFormatError(f"CelebA list {path} does not exist")
    lines = path.read_text().splitlines()
    first = 0
    if columns > 1:  # count and header lines
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise CelebAFormatError(f"{path} line 1: expected the image count, got "
                                    f"{lines[0].strip() if lines else ''!r}")
        first = 2
    rows: dict[str, list[float]] = {}
    for number, line in enumerate(lines[first:], start=first + 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns + 1:
            raise CelebAFormatError(f"{path} line {number}: expected an image name and {columns} numbers, "
                                    f"got {len(parts)} fields")
        try:
            rows[parts[0]] = [float(v) for v in parts[1:]]
        except ValueError:
            raise CelebAFormatError(f"{path} line {number}: expected numbers after the image name, got "
                                    f"{' '.join(parts[1:])!r}") from None
    if columns > 1 and int(lines[0]) != len(rows):
        raise CelebAFormatError(f"{path} line 1: announces {int(lines[0])} images but lists {len(rows)}: truncated?")
    return rows


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """A head box [x0, y0, x1, y1] estimated from 5 points (FIVE order): its height is the larger of
    the eye distance and the eye-to-mouth distance over their synthetic-face proportions, centred
    just below the eyes along the face's vertical axis."""
    points = np.asarray(points, dtype=np.float64)
    eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
    down = mouth - eyes
    height = max(np.linalg.norm(points[1] - points[0]) / EYE_DISTANCE, np.linalg.norm(down) / EYE_TO_MOUTH)
    centre = eyes + down / max(np.linalg.norm(down), 1e-9) * CENTRE_BELOW_EYES * height
    half = np.array([BOX_WIDTH * height / 2, height / 2])
    return np.concatenate([centre - half, centre + half])


@dataclass
class _Face:
    name: str
    points: np.ndarray  # (5, 2) continuous
    box: np.ndarray | None  # from the box file, continuous


def _crop(data: bytes, box: np.ndarray, points: np.ndarray, margin: float, quality: int):
    """The image cut to ``box`` grown by ``margin`` (clipped), as JPEG bytes, and the box and points
    in the crop's coordinates."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    w, h = box[2] - box[0], box[3] - box[1]
    x0, y0 = max(0, int(np.floor(box[0] - margin * w))), max(0, int(np.floor(box[1] - margin * h)))
    x1, y1 = min(width, int(np.ceil(box[2] + margin * w))), min(height, int(np.ceil(box[3] + margin * h)))
    if x1 <= x0 or y1 <= y0:
        raise SampleError("bad_shape", f"box {box.tolist()} lies outside the {width}x{height} image")
    crop = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
    shift = np.array([x0, y0], dtype=np.float64)
    return encode_image(crop, "jpg", quality), box - np.tile(shift, 2), points - shift


def convert_celeba_landmarks(landmarks: str | Path, images: str | Path, out_root: str | Path,
                             partition: str | Path | None = None, boxes: str | Path | None = None,
                             margin: float = 0.5, max_samples: int = 1000, jpeg_quality: int = 95) -> dict[str, Path]:
    """Write the faces of ``landmarks`` (aligned or in-the-wild list) as face-crop shards, one split
    per partition (train / val / test; all ``train`` without a partition file). ``boxes``: the
    in-the-wild box list, which makes the samples crops around the box. Returns ``{split: index path}``."""
    images = Path(images)
    if not images.is_dir():
        raise CelebAFormatError(f"CelebA images folder {images} does not exist")
    table = read_celeba_list(landmarks, 10)
    parts = read_celeba_list(partition, 1) if partition is not None else None
    box_table = read_celeba_list(boxes, 4) if boxes is not None else None
    report = ConversionReport(source=str(landmarks))
    by_split: dict[str, list[_Face]] = {}
    for name, values in table.items():
        if parts is not None and name not in parts:
            report.skip("not_in_partition", f"{name}: not in {partition}")
            continue
        if box_table is not None and name not in box_table:
            report.skip("no_box", f"{name}: not in {boxes}")
            continue
        split = PARTITION_SPLITS.get(int(parts[name][0])) if parts is not None else "train"
        if split is None:
            report.skip("bad_partition", f"{name}: partition {parts[name][0]:g} is not 0, 1 or 2")
            continue
        box = None
        if box_table is not None:
            x, y, w, h = box_table[name]
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
        by_split.setdefault(split, []).append(_Face(name, np.asarray(values).reshape(5, 2) + 0.5, box))
    written = {}
    for split in sorted(by_split, key=list(PARTITION_SPLITS.values()).index):
        with ShardWriter(out_root, split, max_samples=max_samples) as writer:
            for face in by_split[split]:
                with report.sample(str(images / face.name)):
                    data = (images / face.name).read_bytes()
                    verify_image_bytes(data)
                    if face.box is None:
                        box, points = box_from_landmarks(face.points), face.points
                    else:
                        data, box, points = _crop(data, face.box, face.points, margin, jpeg_quality)
                    key = face.name.rsplit(".", 1)[0].replace(".", "_")
                    writer.write(key, data, {"box": np.round(box, 3).tolist(), "landmarks": np.round(points, 3).tolist()})
        written[split] = writer.directory / INDEX_NAME
    folders = [index_path.parent for index_path in written.values()]
    if folders:  # one report of the whole source beside every split's index (warned once)
        report_path = report.finish(folders[0])
        for folder in folders[1:]:
            (folder / report_path.name).write_text(report_path.read_text())
    return written
