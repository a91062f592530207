"""WIDER FACE (``wider_face_{train,val}_bbx_gt.txt`` + its ``images/`` tree) to scene shards.

The annotation file repeats, per image: its path relative to ``images/``, a face count, then one
line per face ``x y w h blur expression illumination invalid occlusion pose`` (integers). An image
without faces has the count 0 and one all-zero face line, which is read and dropped. Each image
becomes a scene sample (``datamodules.schema``):

  boxes           [x, y, x + w, y + h] (continuous coordinates: a box covering pixel columns
                  x .. x + w - 1 ends at x + w)
  face_flags      the six codes as WIDER wrote them (the invalid flag kept)
  face_landmarks  null for every face (WIDER has no landmarks)
  face_setting    from the official evaluation's ground truth when ``ground_truth`` names its folder
                  (``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``, read with scipy):
                  the easiest setting whose ``gt_list`` holds the face (1-based kept-face indices
                  into the image's ``face_bbx_list``), 3 when none does. Without it, the documented
                  rule of ``datamodules.face_settings`` (size, occlusion, blur, pose).

Sample keys are the relative paths without the extension, every character other than letters,
digits, ``_``, ``-`` and ``/`` made ``_`` (webdataset splits keys at dots). JPEG and PNG files go
into the shards unchanged after a full decode check.

A malformed or truncated annotation file stops the conversion with one line naming the file and the
line; a bad image (missing, undecodable), a face with codes out of WIDER's ranges, or an image whose
faces do not match the ground-truth file is skipped and counted in ``conversion.json``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from configs.errors import VisageError
from datamodules.converters import ConversionReport, verify_image_bytes
from datamodules.face_settings import face_settings
from datamodules.schema import EASY, HARD, IGNORED, MEDIUM, WIDER_FLAG_MAX, WIDER_FLAGS, SampleError
from datamodules.shards import INDEX_NAME, ShardWriter

FACE_FIELDS = 4 + len(WIDER_FLAGS)  # x y w h + the six codes
GROUND_TRUTH_FILES = {"faces": "wider_face_val.mat", "easy": "wider_easy_val.mat",
                      "medium": "wider_medium_val.mat", "hard": "wider_hard_val.mat"}
UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-/]")


class WiderFormatError(VisageError, ValueError):
    """A WIDER FACE annotation or ground-truth file that cannot be read; the message names the file
    and the line or key."""


@dataclass(frozen=True)
class WiderImage:
    path: str  # relative to images/, as the annotation file writes it
    line: int  # 1-based line number of the path in the annotation file
    boxes_xywh: np.ndarray  # (N, 4)
    flags: np.ndarray  # (N, 6) int


def wider_key(relative_path: str) -> str:
    """The sample key of an image: its relative path without the extension, made safe."""
    stem = relative_path.rsplit(".", 1)[0] if "." in Path(relative_path).name else relative_path
    return UNSAFE_KEY_CHARACTERS.sub("_", stem.strip("/"))


def _numbers(text: str, where: str) -> list[float]:
    try:
        return [float(value) for value in text.split()]
    except ValueError:
        raise WiderFormatError(f"{where}: expected {FACE_FIELDS} numbers (x y w h {' '.join(WIDER_FLAGS)}), "
                               f"got {text.strip()!r}") from None


def _all_zero(text: str) -> bool:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        return False
    return len(values) == FACE_FIELDS and not any(values)


def read_wider_annotations(path: str | Path) -> Iterator[WiderImage]:
    """The images of a ``wider_face_*_bbx_gt.txt`` file in file order; a malformed or truncated file
    raises WiderFormatError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise WiderFormatError(f"WIDER FACE annotation file {path} does not exist")
    lines = path.read_text().splitlines()
    number = 0  # index of the next line to read

    def where(index: int) -> str:
        return f"{path} line {index + 1}"

    while number < len(lines):
        if not lines[number].strip():
            number += 1
            continue
        image_line, image_path = number, lines[number].strip()
        if not image_path.lower().endswith((".jpg", ".jpeg", ".png")):
            raise WiderFormatError(f"{where(number)}: expected an image path, got {image_path!r}")
        if number + 1 >= len(lines):
            raise WiderFormatError(f"{where(number)}: the file ends after the image path (no face count): truncated?")
        count_text = lines[number + 1].strip()
        if not count_text.isdigit():
            raise WiderFormatError(f"{where(number + 1)}: expected the face count of {image_path}, got {count_text!r}")
        count = int(count_text)
        number += 2
        rows = []
        for k in range(count):
            if number >= len(lines):
                raise WiderFormatError(f"{path}: {image_path} (line {image_line + 1}) announces {count} faces but "
                                       f"the file ends after {k}: truncated?")
            values = _numbers(lines[number], where(number))
            if len(values) != FACE_FIELDS:
                raise WiderFormatError(f"{where(number)}: expected {FACE_FIELDS} numbers (x y w h "
                                       f"{' '.join(WIDER_FLAGS)}), got {len(values)}")
            rows.append(values)
            number += 1
        if count == 0 and number < len(lines) and _all_zero(lines[number]):  # an image without faces
            number += 1
        table = np.asarray(rows, dtype=np.float64).reshape(-1, FACE_FIELDS)
        yield WiderImage(image_path, image_line + 1, table[:, :4].copy(), table[:, 4:].astype(np.int64))


# --- the official evaluation's ground truth -------------------------------------------------------------------

def _load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise WiderFormatError(f"reading {path} needs scipy: pip install scipy") from None
    if not path.is_file():
        raise WiderFormatError(f"WIDER FACE ground-truth file {path} does not exist")
    try:
        data = loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError ... for non-.mat data
        raise WiderFormatError(f"{path} is not a readable .mat file ({type(err).__name__}: {err})") from None
    missing = [key for key in keys if key not in data]
    if missing:
        raise WiderFormatError(f"{path} lacks {', '.join(missing)} (a WIDER FACE ground-truth file holds "
                               f"{', '.join(keys)})")
    return data


def _cells(value) -> list:
    """The elements of a MATLAB cell array as loadmat returns it (an object array of any shape)."""
    return list(np.asarray(value, dtype=object).ravel(order="F"))


def _text(value) -> str:
    """A MATLAB char array (or a cell holding one) as a str."""
    while isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return "".join(value.ravel().tolist())
        if value.size != 1:
            raise ValueError(f"expected one string, got an array of shape {value.shape}")
        value = value.ravel()[0]
    return str(value)


def read_wider_ground_truth(folder: str | Path) -> dict[str, list[int]]:
    """``{"event/file": [face_setting per face]}`` from the official evaluation's ground truth in
    ``folder`` (``wider_face_val.mat``, ``wider_{easy,medium,hard}_val.mat``). A face's setting is the
    easiest one whose ``gt_list`` holds it (settings nest), IGNORED when none does."""
    folder = Path(folder)
    faces_path = folder / GROUND_TRUTH_FILES["faces"]
    faces = _load_mat(faces_path, ("event_list", "file_list", "face_bbx_list"))
    names: list[str] = []
    counts: list[int] = []
    try:
        events = _cells(faces["event_list"])
        files, boxes = _cells(faces["file_list"]), _cells(faces["face_bbx_list"])
        if not len(events) == len(files) == len(boxes):
            raise ValueError(f"event_list, file_list and face_bbx_list hold {len(events)}, {len(files)} and "
                             f"{len(boxes)} events")
        for e, event in enumerate(events):
            event_files, event_boxes = _cells(files[e]), _cells(boxes[e])
            if len(event_files) != len(event_boxes):
                raise ValueError(f"event {e + 1} has {len(event_files)} files but {len(event_boxes)} box lists")
            for name, image_boxes in zip(event_files, event_boxes):
                names.append(f"{_text(event)}/{_text(name)}")
                counts.append(int(np.asarray(image_boxes).reshape(-1, 4).shape[0]) if np.size(image_boxes) else 0)
    except (ValueError, TypeError, IndexError) as err:
        raise WiderFormatError(f"{faces_path}: unexpected structure ({err})") from None

    settings = [[IGNORED] * count for count in counts]
    # hard first, easy last: each face ends with the easiest setting that lists it
    for code, setting in ((HARD, "hard"), (MEDIUM, "medium"), (EASY, "easy")):
        path = folder / GROUND_TRUTH_FILES[setting]
        lists = _load_mat(path, ("gt_list",))
        try:
            per_event = _cells(lists["gt_list"])
            flat = [cell for event in per_event for cell in _cells(event)]
        except (ValueError, TypeError) as err:
            raise WiderFormatError(f"{path}: unexpected gt_list structure ({err})") from None
        if len(flat) != len(names):
            raise WiderFormatError(f"{path}: gt_list holds {len(flat)} images, {faces_path.name} {len(names)}")
        for i, kept in enumerate(flat):
            for index in np.asarray(kept, dtype=np.float64).ravel().astype(int):
                if not 1 <= index <= counts[i]:
                    raise WiderFormatError(f"{path}: gt_list of {names[i]} holds face {index}, the image has "
                                           f"{counts[i]} (indices are 1-based)")
                settings[i][index - 1] = code
    return dict(zip(names, settings))


# --- conversion -----------------------------------------------------------------------------------------------

def _check_codes(image: WiderImage) -> None:
    for row, flags in enumerate(image.flags):
        for name, value, largest in zip(WIDER_FLAGS, flags, WIDER_FLAG_MAX):
            if not 0 <= value <= largest:
                raise SampleError("bad_shape", f"face {row + 1} (line {image.line + 2 + row}): {name} = {value}, "
                                               f"WIDER's range is 0 to {largest}")


def convert_wider_face(annotations: str | Path, images: str | Path, out_root: str | Path, split: str,
                       ground_truth: str | Path | None = None, max_samples: int = 1000) -> Path:
    """Write the images listed in ``annotations`` (under the ``images`` folder) as scene shards
    ``out_root/split``; ``ground_truth``: the folder of the official evaluation's .mat files, for the
    val split's settings. Returns the split's index path (``conversion.json`` beside it)."""
    images = Path(images)
    if not images.is_dir():
        raise WiderFormatError(f"WIDER FACE images folder {images} does not exist")
    official = read_wider_ground_truth(ground_truth) if ground_truth is not None else None
    report = ConversionReport(source=str(annotations))
    keys: set[str] = set()
    with ShardWriter(out_root, split, max_samples=max_samples) as writer:
        for image in read_wider_annotations(annotations):
            with report.sample(f"{images / image.path} (line {image.line})"):
                _check_codes(image)
                x, y, w, h = image.boxes_xywh.T
                boxes = np.stack([x, y, x + w, y + h], axis=1)
                if official is None:
                    settings = face_settings(boxes, image.flags)
                else:
                    name = image.path.rsplit(".", 1)[0]
                    if name not in official:
                        raise SampleError("not_in_ground_truth", f"not in {GROUND_TRUTH_FILES['faces']}")
                    settings = official[name] if len(boxes) else []
                    if len(settings) != len(boxes):
                        raise SampleError("face_count_mismatch", f"{len(boxes)} faces, the ground truth lists "
                                                                 f"{len(settings)}")
                data = (images / image.path).read_bytes()
                verify_image_bytes(data)
                key = wider_key(image.path)
                suffix = 1
                while key in keys:  # two paths that differ only in unsafe characters
                    suffix += 1
                    key = f"{wider_key(image.path)}_{suffix}"
                annotation = {"boxes": boxes.tolist(), "face_flags": image.flags.tolist(),
                              "face_landmarks": [None] * len(boxes), "face_setting": [int(s) for s in settings]}
                writer.write(key, data, annotation)
                keys.add(key)
    report.finish(writer.directory)
    return writer.directory / INDEX_NAME

