"""The Haar cascade baseline: its NumPy evaluation against a plain loop, OpenCV's grouping by hand,
and the one face of skimage's astronaut.

The cascade file ships with OpenCV 4, not OpenCV 5: the fixture takes it from OpenCV's data folder or
$VISAGE_HAAR_CASCADE, else unzips it from an OpenCV 4 wheel fetched with ``pip download`` (never
installed)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from modules.detection.haar import (
    CASCADE_NAME, HaarCascadeMissing, HaarFaceDetector, cascade_windows, find_cascade, group_rectangles, load_cascade,
)

OPENCV4_WHEEL = "opencv-python-headless==4.12.0.88"


@pytest.fixture(scope="session")
def cascade_file(tmp_path_factory) -> Path:
    try:
        return find_cascade()
    except HaarCascadeMissing:
        pass
    folder = tmp_path_factory.mktemp("opencv4")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", OPENCV4_WHEEL,
                             "-d", str(folder)], capture_output=True, text=True, timeout=600)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.skip(f"the Haar cascade file is not here and {OPENCV4_WHEEL} could not be downloaded: "
                    f"{result.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        (folder / CASCADE_NAME).write_bytes(wheel.read(f"cv2/data/{CASCADE_NAME}"))
    return folder / CASCADE_NAME


def test_finds_the_one_face_of_the_astronaut(cascade_file):
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()
    found = HaarFaceDetector(min_face=20, cascade_path=cascade_file).detect(image)
    assert found["boxes"].shape == (1, 4) and found["scores"].shape == (1,)
    assert found["boxes"].dtype == np.float32 and found["scores"][0] > 0
    x0, y0, x1, y1 = found["boxes"][0]
    face = (178, 70, 272, 168)  # brows to chin, cheek to cheek, read off the picture
    inter = max(0, min(x1, face[2]) - max(x0, face[0])) * max(0, min(y1, face[3]) - max(y0, face[1]))
    union = (x1 - x0) * (y1 - y0) + (face[2] - face[0]) * (face[3] - face[1]) - inter
    assert inter / union > 0.6
    # the face is about 95 pixels wide: a 150-pixel minimum finds nothing
    none = HaarFaceDetector(min_face=150, cascade_path=cascade_file).detect(image)
    assert none["boxes"].shape == (0, 4) and none["scores"].shape == (0,)


def _loop_stage_sums(cascade, grey, x, y):
    """The stages of one window, pixel sums taken directly: (stages passed, last stage sum)."""
    window = grey[y:y + cascade.height, x:x + cascade.width].astype(np.float64)
    inner = window[1:-1, 1:-1]
    nf = np.sqrt(max(inner.size * (inner ** 2).sum() - inner.sum() ** 2, 0.0)) or 1.0
    passed, stage_sum = 0, 0.0
    for threshold, (start, stop) in zip(cascade.stage_thresholds, cascade.stage_slices):
        stage_sum = 0.0
        for k in range(start, stop):
            f = cascade.stump_features[k]
            value = sum(w * window[ry:ry + rh, rx:rx + rw].sum()
                        for (rx, ry, rw, rh), w in zip(cascade.rects[f], cascade.weights[f]) if w != 0)
            stage_sum += cascade.stump_leaves[k][0 if value < cascade.stump_thresholds[k] * nf else 1]
        if stage_sum < threshold:
            return passed, stage_sum
        passed += 1
    return passed, stage_sum


@pytest.mark.parametrize("stages, step", [(3, 1), (6, 2)])
def test_vectorised_stages_match_a_loop(cascade_file, stages, step):
    full = load_cascade(cascade_file)
    cascade = dataclasses.replace(full, stage_thresholds=full.stage_thresholds[:stages],
                                  stage_slices=full.stage_slices[:stages])
    rng = np.random.default_rng(0)
    # a smooth random image with a bright oval, so that some windows pass the first stages
    grey = cv2.resize(rng.integers(0, 255, (8, 9), dtype=np.uint8), (46, 40), interpolation=cv2.INTER_CUBIC)
    cv2.ellipse(grey, (23, 20), (9, 12), 0, 0, 360, 220, -1)
    found, sums = cascade_windows(cascade, grey, step)
    expected = {}
    for y in range(0, grey.shape[0] - 24 + 1, step):
        for x in range(0, grey.shape[1] - 24 + 1, step):
            passed, last = _loop_stage_sums(cascade, grey, x, y)
            if passed == stages:
                expected[(x, y)] = last
    assert 0 < len(expected) < 300 and {tuple(p) for p in found.tolist()} == set(expected)
    for (x, y), value in zip(found.tolist(), sums):
        assert value == pytest.approx(expected[(x, y)], abs=1e-9)


def test_group_rectangles_by_hand():
    rects = np.array([[100, 100, 40, 40], [102, 98, 40, 42], [98, 101, 42, 40],   # one face, three windows
                      [300, 300, 40, 40],                                          # a lone window
                      [110, 110, 12, 12], [111, 111, 12, 12]])                     # a small pair inside the face
    weights = np.array([1.0, 3.0, 2.0, 9.0, 5.0, 4.0])
    boxes, scores = group_rectangles(rects, weights, min_neighbors=1)
    # the three similar windows average to (100, 99.67, 40.67, 40.67) -> rounded; the lone window has
    # no neighbour; the pair has 2 members but lies inside the better supported face group
    assert boxes.tolist() == [[100, 100, 41, 41]] and scores.tolist() == [3.0]
    boxes, _ = group_rectangles(rects, weights, min_neighbors=0)
    assert [100, 100, 41, 41] in boxes.tolist() and [300, 300, 40, 40] in boxes.tolist()


def test_a_missing_cascade_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("VISAGE_HAAR_CASCADE", raising=False)
    with pytest.raises(HaarCascadeMissing, match="pip download") as caught:
        find_cascade(tmp_path / "nothing.xml")
    assert "\n" not in str(caught.value) and isinstance(caught.value, FileNotFoundError)
    assert os.fspath(tmp_path) in str(caught.value)
