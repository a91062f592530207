"""The three MTCNN nets: output shapes, P-Net's window geometry (stride 2, 12x12 cells), the stage table."""
import pytest
import torch

from configs.errors import VisageError
from modules.nets.mtcnn import INPUT_SIZE, PNET_CELL, PNET_STRIDE, ONet, PNet, RNet, build_stage_net, normalize_pixels


def test_output_shapes_on_each_stage_input():
    x = {stage: torch.randn(3, 3, size, size) for stage, size in INPUT_SIZE.items()}
    out = PNet()(x["pnet"])
    assert [tuple(o.shape) for o in out] == [(3, 2, 1, 1), (3, 4, 1, 1), (3, 10, 1, 1)]
    for stage, net in (("rnet", RNet()), ("onet", ONet())):
        out = net(x[stage])
        assert [tuple(o.shape) for o in out] == [(3, 2), (3, 4), (3, 10)]
    assert (INPUT_SIZE, PNet.input_size, RNet.input_size, ONet.input_size) == (
        {"pnet": 12, "rnet": 24, "onet": 48}, 12, 24, 48)
    assert all(isinstance(m, torch.nn.PReLU) for m in build_stage_net("onet").modules()
               if type(m).__name__.endswith(("ReLU", "Tanh", "Sigmoid")))


def test_pnet_cell_sees_exactly_its_12x12_window_at_stride_2():
    """Changing a pixel inside window (i, j) = [2i, 2i+12) x [2j, 2j+12) changes that cell's output; a
    pixel just outside it does not (the cascade maps cells to windows by this)."""
    torch.manual_seed(0)
    net = PNet().eval()
    image = torch.randn(1, 3, 40, 34)
    base = net(image).face_logits
    assert base.shape[2:] == (15, 12)  # (40 - 12) / 2 + 1, (34 - 12) / 2 + 1
    i, j = 5, 7
    top, left = PNET_STRIDE * i, PNET_STRIDE * j
    for dy, dx, inside in ((0, 0, True), (PNET_CELL - 1, PNET_CELL - 1, True), (-1, 0, False), (0, -1, False),
                           (PNET_CELL, 0, False), (0, PNET_CELL, False)):
        changed = image.clone()
        changed[0, :, top + dy, left + dx] += 10.0
        moved = (net(changed).face_logits[0, :, i, j] - base[0, :, i, j]).abs().max().item() > 1e-6
        assert moved == inside, (dy, dx)


def test_stage_table_and_normalisation():
    assert [type(build_stage_net(s)).__name__ for s in ("pnet", "rnet", "onet")] == ["PNet", "RNet", "ONet"]
    with pytest.raises(VisageError, match="unknown MTCNN stage 'qnet'") as error:
        build_stage_net("qnet")
    assert isinstance(error.value, ValueError)
    assert normalize_pixels(torch.tensor([0, 127.5, 255])).tolist() == [-127.5 / 128, 0.0, 127.5 / 128]
