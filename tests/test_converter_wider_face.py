"""WIDER FACE converter: tiny files in the official formats (annotation text, image tree, evaluation
.mat files written with scipy as MATLAB cell arrays) round-trip through the shards."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from configs.errors import VisageError
from datamodules.converters import read_conversion_report
from datamodules.converters.wider_face import (
    WiderFormatError, convert_wider_face, read_wider_annotations, read_wider_ground_truth, wider_key,
)
from datamodules.face_settings import face_setting
from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.shard_stream import read_shard
from datamodules.shards import read_index

# (event, file, [(x, y, w, h, blur, expression, illumination, invalid, occlusion, pose), ...])
IMAGES = [
    ("0--Parade", "0_Parade_marchingband_1_5", [(10, 12, 30, 40, 0, 0, 0, 0, 0, 0),
                                                (50, 8, 14, 18, 1, 0, 0, 0, 1, 0),
                                                (70, 40, 4, 5, 2, 0, 0, 1, 0, 0)]),
    ("0--Parade", "0_Parade_Parade_0_452", []),
    ("1--Handshaking", "1_Handshaking_1.2", [(5, 6, 60, 70, 0, 1, 0, 0, 0, 1)]),
]
# 1-based kept faces per setting, per image (the third face of the first image is in none: invalid)
KEPT = {"easy": [[1], [], [1]], "medium": [[1, 2], [], [1]], "hard": [[1, 2], [], [1]]}
EXPECTED_SETTINGS = [[0, 1, 3], [], [0]]


def _cell(items):
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


def write_wider(root, images=IMAGES, kept=KEPT, broken_image=None):
    """An images/ tree, the annotation text and the four evaluation .mat files, as WIDER ships them."""
    lines = []
    for event, name, faces in images:
        path = root / "images" / event / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.full((100, 120, 3), 40 + 30 * len(faces), np.uint8)
        if name != broken_image:
            cv2.imwrite(str(path), image)
        lines += [f"{event}/{name}.jpg", str(len(faces))]
        lines += [" ".join(map(str, face)) + " " for face in faces] or ["0 0 0 0 0 0 0 0 0 0 "]
    (root / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    events = sorted({event for event, _, _ in images}, key=[e for e, _, _ in images].index)
    per_event = [[(i, name, faces) for i, (e, name, faces) in enumerate(images) if e == event] for event in events]
    gt = root / "ground_truth"
    gt.mkdir(exist_ok=True)
    savemat(gt / "wider_face_val.mat", {
        "event_list": _cell(events),
        "file_list": _cell([_cell([name for _, name, _ in group]) for group in per_event]),
        "face_bbx_list": _cell([_cell([np.array([f[:4] for f in faces], dtype=np.float64).reshape(-1, 4)
                                       for _, _, faces in group]) for group in per_event]),
    })
    for setting, lists in kept.items():
        savemat(gt / f"wider_{setting}_val.mat", {
            "event_list": _cell(events),
            "file_list": _cell([_cell([name for _, name, _ in group]) for group in per_event]),
            "gt_list": _cell([_cell([np.array(lists[i], dtype=np.float64).reshape(-1, 1) if i < len(lists) and lists[i]
                                     else np.zeros((0, 0)) for i, _, _ in group]) for group in per_event]),
        })
    return root / "wider_face_val_bbx_gt.txt", root / "images", gt


def _read_split(directory):
    index = read_index(directory)
    counter = BadSampleCounter()
    samples = [decode_sample(raw, ("boxes",), check_all=True) for url, n in index.shards
               for raw in read_shard(url, counter, n)]
    assert not counter.counts
    return samples


def test_round_trip_with_the_official_settings(tmp_path):
    txt, images, gt = write_wider(tmp_path)
    index_path = convert_wider_face(txt, images, tmp_path / "out", "val", ground_truth=gt, max_samples=2)
    samples = _read_split(index_path.parent)
    assert [s.key for s in samples] == ["0--Parade/0_Parade_marchingband_1_5", "0--Parade/0_Parade_Parade_0_452",
                                        "1--Handshaking/1_Handshaking_1_2"]
    for sample, (event, name, faces), settings in zip(samples, IMAGES, EXPECTED_SETTINGS):
        ann = sample.annotation
        assert ann["boxes"] == [[x, y, x + w, y + h] for x, y, w, h, *_ in faces]
        assert ann["face_flags"] == [list(face[4:]) for face in faces]
        assert ann["face_setting"] == settings
        assert ann["face_landmarks"] == [None] * len(faces)
        assert (ann["width"], ann["height"]) == (120, 100)
        original = cv2.cvtColor(cv2.imread(str(images / event / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(sample.image, original)  # the JPEG bytes went through unchanged
    report = read_conversion_report(index_path.parent)
    assert report["written"] == 3 and report["skipped"] == {}


def test_without_ground_truth_the_documented_rule_sets_the_settings(tmp_path):
    txt, images, _ = write_wider(tmp_path)
    samples = _read_split(convert_wider_face(txt, images, tmp_path / "out", "train").parent)
    for sample, (_, _, faces) in zip(samples, IMAGES):
        assert sample.annotation["face_setting"] == [face_setting(h, list(rest)) for _, _, _, h, *rest in faces]
    assert samples[0].annotation["face_setting"] == [1, 2, 3]  # 40 px tall: medium; 18 px: hard; invalid


def test_reading_the_ground_truth_by_itself(tmp_path):
    _, _, gt = write_wider(tmp_path)
    settings = read_wider_ground_truth(gt)
    assert settings == {"0--Parade/0_Parade_marchingband_1_5": [0, 1, 3], "0--Parade/0_Parade_Parade_0_452": [],
                        "1--Handshaking/1_Handshaking_1.2": [0]}


def test_ground_truth_index_out_of_range_names_the_file(tmp_path):
    _, _, gt = write_wider(tmp_path, kept={**KEPT, "hard": [[1, 2, 4], [], [1]]})
    with pytest.raises(WiderFormatError, match="wider_hard_val.mat.*face 4.*1-based"):
        read_wider_ground_truth(gt)


def test_keys_are_safe():
    assert wider_key("1--Handshaking/1_Handshaking_1.2.jpg") == "1--Handshaking/1_Handshaking_1_2"
    assert wider_key("a b/c+d.png") == "a_b/c_d"


def test_bad_samples_are_skipped_and_counted(tmp_path):
    images = IMAGES + [("2--Demonstration", "2_bad_flag", [(1, 1, 20, 20, 3, 0, 0, 0, 0, 0)]),
                       ("2--Demonstration", "2_missing", [(1, 1, 20, 20, 0, 0, 0, 0, 0, 0)])]
    txt, root, _ = write_wider(tmp_path, images=images, broken_image="2_missing")
    with pytest.warns(UserWarning, match="skipped 2"):
        index_path = convert_wider_face(txt, root, tmp_path / "out", "train")
    report = json.loads((index_path.parent / "conversion.json").read_text())
    assert report["written"] == 3 and report["skipped"] == {"bad_shape": 1, "missing_image": 1}
    assert any("line 14" in example and "blur = 3" in example for example in report["examples"])


def test_ground_truth_that_does_not_match_the_annotations_is_skipped(tmp_path):
    _, _, gt = write_wider(tmp_path)
    # the annotation text now holds a fourth face for the first image, which the ground truth lacks
    more = [(IMAGES[0][0], IMAGES[0][1], IMAGES[0][2] + [(1, 1, 9, 9, 0, 0, 0, 0, 0, 0)])] + IMAGES[1:]
    txt, images, _ = write_wider(tmp_path / "other", images=more)
    with pytest.warns(UserWarning, match="face_count_mismatch"):
        index_path = convert_wider_face(txt, images, tmp_path / "out", "val", ground_truth=gt)
    assert read_conversion_report(index_path.parent)["skipped"] == {"face_count_mismatch": 1}


@pytest.mark.parametrize("text, message", [
    ("0--Parade/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", r"line 1\b.*announces 2 faces.*ends after 1: truncated"),
    ("0--Parade/a.jpg\ntwo\n", r"line 2: expected the face count"),
    ("0--Parade/a.jpg\n1\n1 2 3 4 0 0 0 0 0\n", r"line 3: expected 10 numbers"),
    ("0--Parade/a.jpg\n1\n1 2 3 4 0 0 x 0 0 0\n", r"line 3: expected 10 numbers"),
    ("0--Parade/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n0--Parade/b.jpg\n", r"line 4: the file ends after the image path"),
    ("0--Parade/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n17\n", r"line 4: expected an image path"),
])
def test_malformed_annotation_text_is_one_line_naming_the_line(tmp_path, text, message):
    path = tmp_path / "wider_face_train_bbx_gt.txt"
    path.write_text(text)
    with pytest.raises(WiderFormatError, match=message) as caught:
        list(read_wider_annotations(path))
    assert isinstance(caught.value, VisageError) and isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_zero_face_images_and_their_zero_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("e/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \ne/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\ne/c.jpg\n0\n")
    read = list(read_wider_annotations(path))
    assert [(r.path, r.line, len(r.boxes_xywh)) for r in read] == [("e/a.jpg", 1, 0), ("e/b.jpg", 4, 1),
                                                                  ("e/c.jpg", 7, 0)]
    assert read[1].boxes_xywh.tolist() == [[1, 2, 3, 4]] and read[1].flags.shape == (1, 6)
