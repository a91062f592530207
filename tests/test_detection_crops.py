"""Stage training crops: IoU bands recomputed by a plain loop, targets that decode back to the face,
the mix, ignored faces, the pixels cut, labelled windows, and the chunked, resumable split writer."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from datamodules.codecs.crop_kinds import LANDMARK, NEGATIVE, PART, POSITIVE
from datamodules.detection_crops import crops_from_windows, cut_windows, default_counts, sample_crops
from datamodules.bad_samples import BadSampleCounter
from datamodules.decoding import decode_sample
from datamodules.shard_stream import read_shard
from datamodules.schema import FLAG_INDEX
from datamodules.shards import read_index
from datamodules import stage_crops
from datamodules.stage_crops import CHUNK_PATTERN, write_stage_crops
from datamodules.synth.scenes import generate_scenes, write_scene_split


def _iou(a, b):
    """IoU of two x0 y0 x1 y1 boxes, written out."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_crops(crops, boxes, landmarks, ignored):
    for i in range(len(crops)):
        window = crops.windows[i]
        assert np.all(window == np.round(window)) and window[2] - window[0] == window[3] - window[1]
        ious = [_iou(window, box) for box in boxes]
        kind = crops.kinds[i]
        if kind == NEGATIVE:
            assert max(ious, default=0.0) < 0.3                 # with every face, ignored ones too
            assert np.isnan(crops.offsets[i]).all() and np.isnan(crops.landmarks[i]).all()
            continue
        face = int(np.argmax(ious))
        assert crops.faces[i] == face and not ignored[face]
        if kind == POSITIVE:
            assert ious[face] > 0.65
        elif kind == PART:
            assert 0.4 <= ious[face] <= 0.65
        else:
            assert kind == LANDMARK and ious[face] > 0.65 and landmarks[face] is not None
        # the offsets decode back to the face box: box = window + offsets * window size
        side = window[2] - window[0]
        np.testing.assert_allclose(window + crops.offsets[i] * side, boxes[face], atol=1e-3)
        if kind == LANDMARK:
            np.testing.assert_allclose(window[:2] + crops.landmarks[i] * side, landmarks[face], atol=1e-3)


def test_every_crop_of_synthetic_scenes_lies_in_its_band():
    total = {k: 0 for k in (NEGATIVE, POSITIVE, PART, LANDMARK)}
    for _, image, ann in generate_scenes(6, seed=8, width=(320, 400), height=(240, 300)):
        ignored = np.array([f[FLAG_INDEX["invalid"]] == 1 for f in ann["face_flags"]], dtype=bool)
        for size in (12, 48):
            crops = sample_crops(image, ann["boxes"], ann["face_landmarks"], ignored, size, np.random.default_rng(1))
            assert crops.images.shape == (len(crops), size, size, 3) and crops.images.dtype == np.uint8
            _check_crops(crops, np.array(ann["boxes"]).reshape(-1, 4), ann["face_landmarks"], ignored | (
                np.ptp(np.array(ann["boxes"]).reshape(-1, 2, 2), axis=1).max(axis=1) < 12))
            for kind in total:
                total[kind] += int(np.sum(crops.kinds == kind))
    assert all(count > 10 for count in total.values()), total


def _two_face_scene():
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    boxes = np.array([[40.0, 50.0, 100.0, 130.0], [180.0, 60.0, 260.0, 160.0]])
    points = [np.array([[55, 80], [85, 80], [70, 95], [58, 112], [82, 112]], float), None]
    return image, boxes, points


def test_the_default_mix_and_a_configured_one():
    image, boxes, points = _two_face_scene()
    crops = sample_crops(image, boxes, points, [False, False], 24, np.random.default_rng(3))
    counts = {kind: int(np.sum(crops.kinds == kind)) for kind in (NEGATIVE, POSITIVE, PART, LANDMARK)}
    # 2 positives per usable face (2 faces): pos 4, then neg:pos:part:landmark = 3:1:1:2
    assert counts == {NEGATIVE: 12, POSITIVE: 4, PART: 4, LANDMARK: 8}
    assert set(crops.faces[crops.kinds == LANDMARK]) == {0}     # only the face with points
    assert set(crops.faces[crops.kinds == POSITIVE]) == {0, 1}   # positives spread over the faces
    _check_crops(crops, boxes, points, [False, False])
    other = sample_crops(image, boxes, points, [False, False], 24, np.random.default_rng(3), per_face=1,
                         mix={"negative": 5, "landmark": 0})
    assert np.bincount(other.kinds, minlength=4).tolist() == [10, 2, 2, 0]
    assert default_counts(0, 0) == {"negative": 6, "positive": 0, "part": 0, "landmark": 0}


def test_invalid_faces_never_become_positives_nor_negatives():
    image, boxes, points = _two_face_scene()
    crops = sample_crops(image, boxes, points, [True, False], 12, np.random.default_rng(4))
    assert set(crops.faces[crops.kinds != NEGATIVE]) == {1}
    assert not np.any(crops.kinds == LANDMARK)                     # the face with points is invalid
    for window in crops.windows[crops.kinds == NEGATIVE]:
        assert _iou(window, boxes[0]) < 0.3
    only_invalid = sample_crops(image, boxes[:1], points[:1], [True], 12, np.random.default_rng(4))
    assert set(only_invalid.kinds.tolist()) == {NEGATIVE} and len(only_invalid) == 6
    # an invalid face overlapping a valid one: windows drawn around the valid face often fit the
    # invalid one better, and are dropped then
    pair = np.array([[100.0, 50.0, 180.0, 150.0], [125.0, 60.0, 205.0, 160.0]])
    for seed in range(5):
        crops = sample_crops(image, pair, None, [False, True], 12, np.random.default_rng(seed), per_face=8)
        _check_crops(crops, pair, [None, None], [False, True])
        assert np.sum(crops.kinds == POSITIVE) == 8
    tiny = sample_crops(image, [[10.0, 10.0, 18.0, 19.0]], None, [False], 12, np.random.default_rng(4))
    assert set(tiny.kinds.tolist()) == {NEGATIVE}                   # 9 px: below min_face


def test_cut_windows_resize_the_window_and_pad_with_black():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :, 0] = np.arange(80)[None, :] * 3
    image[:, :, 1] = np.arange(60)[:, None] * 4
    crops = cut_windows(image, np.array([[10, 20, 34, 44], [-12, 0, 12, 24], [4, 4, 10, 10]]), 12)
    np.testing.assert_array_equal(crops[0], cv2.resize(image[20:44, 10:34], (12, 12), interpolation=cv2.INTER_AREA))
    assert np.all(crops[1][:, :6] == 0) and np.any(crops[1][:, 6:] > 0)  # left half outside the image
    np.testing.assert_array_equal(crops[2], cv2.resize(image[4:10, 4:10], (12, 12), interpolation=cv2.INTER_LINEAR))


def test_crops_from_windows_by_hand():
    image = np.full((300, 300, 3), 128, np.uint8)
    boxes = np.array([[100.0, 100.0, 200.0, 200.0], [10.0, 10.0, 40.0, 40.0]])
    points = [np.array([[130, 140], [170, 140], [150, 160], [135, 180], [165, 180]], float), None]
    windows = np.array([
        [100.2, 99.8, 200.0, 200.0],   # rounds onto the face: IoU 1, positive
        [130.0, 100.0, 230.0, 200.0],  # 70 x 100 overlap: 7000 / 13000 = 0.538, part
        [150.0, 100.0, 250.0, 200.0],  # 50 x 100: 5000 / 15000 = 0.333, between the bands: dropped
        [220.0, 220.0, 280.0, 280.0],  # no overlap: negative
        [12.0, 12.0, 42.0, 42.0],      # 28 x 28 = 784 / (900 + 900 - 784) = 0.772 with the ignored face: dropped
        [60.0, 60.0, 80.0, 80.0],      # touches nothing: negative
    ])
    crops = crops_from_windows(image, windows, boxes, points, 24, invalid_mask=[False, True])
    assert crops.sources.tolist() == [0, 1, 3, 5]
    assert crops.kinds.tolist() == [POSITIVE, PART, NEGATIVE, NEGATIVE]
    np.testing.assert_allclose(crops.ious[:2], [1.0, 7000 / 13000])
    np.testing.assert_allclose(crops.offsets[1], [-0.3, 0.0, -0.3, 0.0], atol=1e-6)  # (100 - 130) / 100
    np.testing.assert_allclose(crops.landmarks[0][0], [0.3, 0.4], atol=1e-6)      # positives carry points
    assert crops.annotation(2) == {"crop_kind": NEGATIVE, "crop_offsets": None, "crop_landmarks": None}


# --- the split writer --------------------------------------------------------------------------------------

SCENES = {"width": (160, 200), "height": (120, 150), "face_height": (12.0, 70.0)}


@pytest.fixture(scope="module")
def scene_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_split(root, "train", 5, seed=1, workers=1, shard_size=2, progress=False, **SCENES)
    return root / "train"


def _read(index_path):
    index = read_index(index_path.parent)
    counter = BadSampleCounter()
    return [(s.key, s.annotation, s.image) for url, n in index.shards for s in
            (decode_sample(raw, ("crop_kind", "crop_offsets", "crop_landmarks"), check_all=True)
             for raw in read_shard(url, counter, n))]


def test_stage_crops_are_the_same_however_chunked_and_resume(scene_split, tmp_path, monkeypatch):
    straight = _read(write_stage_crops(scene_split, tmp_path / "a", "train", 12, seed=5, chunk_scenes=5,
                                       progress=False))
    written = []
    real = stage_crops.write_crop_chunk
    monkeypatch.setattr(stage_crops, "write_crop_chunk", lambda *a, **k: written.append(a[2:4]) or real(*a, **k))
    # a run that wrote chunk 0 of three and stopped, then a run that finishes the rest
    assert write_stage_crops(scene_split, tmp_path / "b", "train", 12, seed=5, chunk_scenes=2, chunks=[0],
                             merge=False, progress=False) is None
    assert (tmp_path / "b" / ".train.chunks" / CHUNK_PATTERN.format(0) / "index.json").is_file()
    assert not (tmp_path / "b" / "train").exists()
    resumed = write_stage_crops(scene_split, tmp_path / "b", "train", 12, seed=5, chunk_scenes=2, progress=False)
    assert written == [(0, 2), (2, 4), (4, 5)]                     # chunk 0 once, not again
    assert not (tmp_path / "b" / ".train.chunks").exists()
    chunked = _read(resumed)
    assert [k for k, _, _ in straight] == [k for k, _, _ in chunked] and len(straight) > 30
    for (_, a1, im1), (_, a2, im2) in zip(straight, chunked):
        assert a1 == a2 and np.array_equal(im1, im2)
    stats = json.loads((resumed.parent / "crops.json").read_text())
    kinds = np.bincount([a["crop_kind"] for _, a, _ in chunked], minlength=4)
    assert [stats["crops"][k] for k in ("negative", "positive", "part", "landmark")] == kinds.tolist()
    assert stats["scenes"] == 5 and {a["scene"] for _, a, _ in chunked} <= {f"scene{i:08d}" for i in range(5)}


def test_resume_refuses_chunks_made_with_other_settings(scene_split, tmp_path):
    write_stage_crops(scene_split, tmp_path, "train", 12, seed=5, chunk_scenes=2, chunks=[0], merge=False,
                      progress=False)
    with pytest.raises(ValueError, match="other settings"):
        write_stage_crops(scene_split, tmp_path, "train", 24, seed=5, chunk_scenes=2, progress=False)
