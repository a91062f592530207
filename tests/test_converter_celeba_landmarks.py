"""CelebA 5-point landmark converter: tiny list files in CelebA's formats, aligned and in the wild."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from configs.errors import VisageError
from datamodules.codecs.box_offsets import box_iou
from datamodules.converters import read_conversion_report
from datamodules.converters.celeba_landmarks import (
    CelebAFormatError, box_from_landmarks, convert_celeba_landmarks, read_celeba_list,
)
from datamodules.layouts import FIVE, derive_landmarks
from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.shard_stream import read_shard
from datamodules.shards import read_index
from datamodules.synth.draw import draw_face
from datamodules.synth.identity import NEUTRAL, sample_identity

HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def _write_list(path, header, rows):
    path.write_text(f"{len(rows)}\n{header}\n" + "".join(f"{name} {' '.join(map(str, values))}\n"
                                                         for name, values in rows))


def _samples(index_path):
    index = read_index(index_path.parent)
    counter = BadSampleCounter()
    return {s.key: s for s in (decode_sample(raw, ("box", "landmarks"), check_all=True)
                               for url, n in index.shards for raw in read_shard(url, counter, n))}


def test_aligned_faces_by_partition_with_boxes_from_their_points(tmp_path):
    images = tmp_path / "img_align_celeba"
    images.mkdir()
    # eyes 36.1 px apart, mouth 30.4 px below them: both give a head 100 px tall
    points = [40, 50, 76.1, 50, 58, 66, 45, 80.4, 71.1, 80.4]
    rows = []
    for i in range(1, 5):
        cv2.imwrite(str(images / f"{i:06d}.jpg"), np.full((218, 178, 3), 30 * i, np.uint8))
        rows.append((f"{i:06d}.jpg", points))
    _write_list(tmp_path / "list_landmarks_align_celeba.txt", HEADER, rows)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n")
    written = convert_celeba_landmarks(tmp_path / "list_landmarks_align_celeba.txt", images, tmp_path / "out",
                                       partition=tmp_path / "list_eval_partition.txt")
    assert sorted(written) == ["test", "train", "val"]
    train = _samples(written["train"])
    assert sorted(train) == ["000001", "000002"] and list(_samples(written["val"])) == ["000003"]
    ann = train["000001"].annotation
    assert ann["landmarks"] == (np.array(points).reshape(5, 2) + 0.5).tolist()   # pixel centres
    # height 100, width 77, centre 1.3 px below the eye midpoint (58.05 + 0.5, 50 + 0.5)
    np.testing.assert_allclose(ann["box"], [58.55 - 38.5, 51.8 - 50, 58.55 + 38.5, 51.8 + 50], atol=1e-3)
    assert (ann["width"], ann["height"]) == (178, 218)
    assert read_conversion_report(written["test"].parent)["written"] == 4


def test_in_the_wild_faces_are_cut_around_their_box(tmp_path):
    images = tmp_path / "img_celeba"
    images.mkdir()
    image = np.zeros((250, 300, 3), np.uint8)
    image[98:103, 118:123] = 255                     # a white mark on the left eye at pixel (120, 100)
    cv2.imwrite(str(images / "000001.png"), image)    # PNG: the mark survives exactly
    cv2.imwrite(str(images / "000002.jpg"), image)
    _write_list(tmp_path / "list_landmarks_celeba.txt", HEADER,
                [("000001.png", [120, 100, 140, 100, 130, 115, 122, 130, 138, 130]),
                 ("000002.jpg", [120, 100, 140, 100, 130, 115, 122, 130, 138, 130]),
                 ("000003.jpg", [1] * 10)])          # no such image
    _write_list(tmp_path / "list_bbox_celeba.txt", "image_id x_1 y_1 width height",
                [(f"00000{i}.{'png' if i == 1 else 'jpg'}", [100, 80, 60, 70]) for i in (1, 2, 3)])
    with pytest.warns(UserWarning, match="missing_image: 1"):
        written = convert_celeba_landmarks(tmp_path / "list_landmarks_celeba.txt", images, tmp_path / "out",
                                           boxes=tmp_path / "list_bbox_celeba.txt", margin=0.5)
    sample = _samples(written["train"])["000001"]
    # the box 100..160 x 80..150 grown by half its size: the crop is x 70..190, y 45..185
    assert sample.image.shape == (140, 120, 3)
    assert sample.annotation["box"] == [30.0, 35.0, 90.0, 105.0]
    eye = np.array(sample.annotation["landmarks"][0])
    assert eye.tolist() == [120.5 - 70, 100.5 - 45]
    assert np.all(sample.image[int(eye[1]), int(eye[0])] > 200)
    assert read_conversion_report(written["train"].parent)["skipped"] == {"missing_image": 1}


def test_box_from_landmarks_matches_the_synthetic_head_box():
    ious = []
    for identity in range(20):
        canvas = np.zeros((300, 300, 3), np.uint8)
        face = draw_face(canvas, sample_identity(identity, 1), np.random.default_rng(0), (150, 150), 150, 0, 0,
                         NEUTRAL, body=False)
        estimated = box_from_landmarks(derive_landmarks(face["landmarks"], FIVE))
        ious.append(float(box_iou(np.array([face["box"]]), estimated[None])[0, 0]))
    assert np.median(ious) > 0.85 and min(ious) > 0.65


@pytest.mark.parametrize("text, message", [
    ("3\n" + HEADER + "\n000001.jpg 1 2 3 4 5 6 7 8 9 10\n", r"line 1: announces 3 images but lists 1"),
    ("1\n" + HEADER + "\n000001.jpg 1 2 3 4 5 6 7 8 9\n", r"line 3: expected an image name and 10 numbers"),
    ("1\n" + HEADER + "\n000001.jpg 1 2 3 4 5 6 7 8 9 x\n", r"line 3: expected numbers"),
    ("many\n", r"line 1: expected the image count"),
])
def test_malformed_lists_are_one_line_naming_the_line(tmp_path, text, message):
    path = tmp_path / "list_landmarks_align_celeba.txt"
    path.write_text(text)
    with pytest.raises(CelebAFormatError, match=message) as caught:
        read_celeba_list(path, 10)
    assert isinstance(caught.value, VisageError) and "\n" not in str(caught.value)
