"""The Haar cascade baseline: the one face of skimage's astronaut, in the cascade's output format."""
from __future__ import annotations

import numpy as np
import pytest

from modules.detection.haar import HaarCascadeMissing, HaarFaceDetector


def test_finds_the_one_face_of_the_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()
    found = HaarFaceDetector(min_face=20).detect(image)
    assert found["boxes"].shape == (1, 4) and found["scores"].shape == (1,)
    assert found["boxes"].dtype == np.float32 and found["scores"][0] > 0
    x0, y0, x1, y1 = found["boxes"][0]
    face = (178, 70, 272, 168)  # brows to chin, cheek to cheek, read off the picture
    inter = max(0, min(x1, face[2]) - max(x0, face[0])) * max(0, min(y1, face[3]) - max(y0, face[1]))
    union = (x1 - x0) * (y1 - y0) + (face[2] - face[0]) * (face[3] - face[1]) - inter
    assert inter / union > 0.6
    # the face is about 95 pixels wide: a 150-pixel minimum finds nothing
    none = HaarFaceDetector(min_face=150).detect(image)
    assert none["boxes"].shape == (0, 4) and none["scores"].shape == (0,)


def test_a_missing_cascade_is_one_clear_line(tmp_path):
    with pytest.raises(HaarCascadeMissing, match="no Haar cascade at .*missing.xml"):
        HaarFaceDetector(cascade_path=tmp_path / "missing.xml")
