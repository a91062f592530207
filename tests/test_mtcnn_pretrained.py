"""facenet-pytorch's pretrained MTCNN weights in Visage's nets: the same outputs as facenet-pytorch's own
nets (loaded from its wheel), the reordering by hand, and one-line errors for bad files."""
import shutil

import pytest
import torch

from configs.errors import VisageError
from modules.nets.mtcnn_pretrained import (WeightsError, column_major_to_row_major, load_facenet_mtcnn,
                                           load_facenet_stage, xs_then_ys_to_pairs)


def test_first_fc_reordering_by_hand():
    """Their FC reads a (C, H, W) map flattened as (W, H, C); ours flattens (C, H, W)."""
    torch.manual_seed(0)
    features = torch.randn(4, 5, 3, 2)
    theirs = torch.randn(7, 30)
    expected = features.permute(0, 3, 2, 1).reshape(4, -1) @ theirs.T
    assert torch.allclose(features.reshape(4, -1) @ column_major_to_row_major(theirs, (5, 3, 2)).T, expected, atol=1e-5)
    assert xs_then_ys_to_pairs(torch.tensor([1, 2, 3, 4, 5, 10, 20, 30, 40, 50])).tolist() == [
        1, 10, 2, 20, 3, 30, 4, 40, 5, 50]


def test_imported_nets_equal_facenet_pytorch_nets(mtcnn_weights, facenet_reference):
    imported = load_facenet_mtcnn(mtcnn_weights)
    theirs = {"pnet": facenet_reference.pnet, "rnet": facenet_reference.rnet, "onet": facenet_reference.onet}
    torch.manual_seed(0)
    for stage, shape in (("pnet", (2, 3, 57, 41)), ("rnet", (9, 3, 24, 24)), ("onet", (9, 3, 48, 48))):
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            ours, reference = imported.nets[stage](x), theirs[stage](x)
        assert torch.allclose(torch.softmax(ours.face_logits, 1), reference[-1], atol=1e-5), stage
        assert torch.allclose(ours.box_offsets, reference[0], atol=1e-5), stage
        if stage == "onet":  # theirs: x1..x5, y1..y5; ours: pairs
            points = torch.stack([reference[1][:, :5], reference[1][:, 5:]], dim=2)
            assert torch.allclose(ours.landmarks.view(-1, 5, 2), points, atol=1e-5)
    assert imported.left_initialised == {"pnet": ["landmarks.bias", "landmarks.weight"],
                                         "rnet": ["landmarks.bias", "landmarks.weight"], "onet": []}
    assert "pnet: landmarks.bias, landmarks.weight kept initialised" in imported.describe()


def test_bad_weight_files_are_one_line_errors_naming_the_file(mtcnn_weights, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(WeightsError, match=r"pnet\.pt: no such file") as error:
        load_facenet_mtcnn(folder)
    assert isinstance(error.value, VisageError) and isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="no such folder"):
        load_facenet_mtcnn(tmp_path / "nowhere")
    (folder / "pnet.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"pnet\.pt: not a readable torch file"):
        load_facenet_stage(folder / "pnet.pt", "pnet")
    shutil.copy(mtcnn_weights / "rnet.pt", folder / "pnet.pt")  # R-Net's file where P-Net's belongs
    with pytest.raises(WeightsError, match=r"pnet\.pt: .*missing key 'conv4_1.bias'.*not facenet-pytorch's pnet.pt"):
        load_facenet_stage(folder / "pnet.pt", "pnet")
    torch.save({"weights": [1, 2]}, folder / "onet.pt")
    with pytest.raises(WeightsError, match=r"onet\.pt: not a state_dict of tensors"):
        load_facenet_stage(folder / "onet.pt", "onet")
