"""`visage detect` end to end with the real weights: JSON and PNG per image, --weights and --ckpt agree,
unreadable images are skipped and counted, and bad weights are one-line errors."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from modules.nets.mtcnn_pretrained import load_facenet_mtcnn
from tests.conftest import REPO
from tests.face_images import astronaut, face_composite
from trainers.detect import DetectorCheckpointError, main, nets_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def detect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainers.detect", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_detect_writes_json_and_picture_for_the_astronaut(mtcnn_weights, tmp_path):
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    result = detect(str(image), "--weights", str(mtcnn_weights), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "astronaut.json").read_text())
    assert (record["width"], record["height"]) == (512, 512) and len(record["faces"]) == 1
    face = record["faces"][0]
    assert face["score"] > 0.99 and len(face["box"]) == 4 and np.array(face["landmarks"]).shape == (5, 2)
    x0, y0, x1, y1 = face["box"]
    assert abs((x0 + x1) / 2 - 224) < 10 and abs((y0 + y1) / 2 - 117) < 10
    picture = cv2.imread(str(tmp_path / "out" / "astronaut.png"))
    assert picture.shape == (512, 512, 3)
    original = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    drawn = np.abs(picture.astype(int) - original).sum(axis=2) > 0
    assert drawn[round(y0) - 20:round(y1) + 4, round(x0) - 3:round(x1) + 40].sum() == drawn.sum() > 100  # at the face (score above)
    assert "1 face(s)" in result.stdout


def test_checkpoint_gives_the_weights_results_and_bad_inputs_are_reported(mtcnn_weights, tmp_path, capsys):
    nets = load_facenet_mtcnn(mtcnn_weights).nets
    state = {f"{stage}.{key}": value for stage, net in nets.items() for key, value in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "cascade.ckpt")
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("pnet.")}}, tmp_path / "pnet.ckpt")
    good = tmp_path / "scene.jpg"
    cv2.imwrite(str(good), cv2.cvtColor(face_composite(0)[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    common = ["--out", str(tmp_path / "a"), "--device", "cpu"]
    assert main([str(good), "--weights", str(mtcnn_weights), *common]) == 0
    from_weights = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert len(from_weights["faces"]) == 5
    code = main([str(broken), str(good), str(tmp_path / "missing.png"), "--ckpt", str(tmp_path / "cascade.ckpt"),
                 "--out", str(tmp_path / "b"), "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 1
    assert f"cannot read image {broken}; skipped" in out.err and f"cannot read image {tmp_path / 'missing.png'}" in out.err
    assert "2 unreadable image(s) skipped" in out.out
    assert json.loads((tmp_path / "b" / "scene.json").read_text()) == from_weights | {"image": str(good)}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["scene.json", "scene.png"]

    assert main([str(good), "--ckpt", str(tmp_path / "pnet.ckpt"), *common]) == 1
    assert "no weights for rnet, onet (found: pnet)" in capsys.readouterr().err
    with pytest.raises(DetectorCheckpointError, match="--ckpt: checkpoint .*nothing.ckpt does not exist"):
        nets_from_checkpoint(tmp_path / "nothing.ckpt")
    assert main([str(good), "--weights", str(tmp_path), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pnet.pt: no such file" in err
