"""iresnet / MobileFaceNet backbones: insightface-compatible state_dicts, shapes, forward maths."""
import io

import pytest
import torch
import torch.nn.functional as F

from modules.nets.iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet_tiny
from modules.nets.mobilefacenet import MobileFaceNet

# From the architecture description (insightface arcface_torch backbones/iresnet.py).
STAGE_BLOCKS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
CONSTRUCTORS = {"r18": iresnet18, "r34": iresnet34, "r50": iresnet50, "r100": iresnet100}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # measured here: on a busy 2-core machine two intra-op threads made these small nets up to 18x
    # slower than one (OpenMP threads spinning against each other)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def expected_shapes(blocks, widths=(64, 128, 256, 512), num_features=512, fc_hw=(7, 7)):
    """Parameter/buffer names and shapes of an insightface iresnet, written out by hand."""
    shapes = {}

    def batchnorm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (widths[0], 3, 3, 3)
    batchnorm("bn1", widths[0])
    shapes["prelu.weight"] = (widths[0],)
    in_channels = widths[0]
    for stage, (count, channels) in enumerate(zip(blocks, widths), start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            block_in = in_channels if block == 0 else channels
            batchnorm(f"{prefix}.bn1", block_in)
            shapes[f"{prefix}.conv1.weight"] = (channels, block_in, 3, 3)
            batchnorm(f"{prefix}.bn2", channels)
            shapes[f"{prefix}.prelu.weight"] = (channels,)
            shapes[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
            batchnorm(f"{prefix}.bn3", channels)
            if block == 0:  # every stage starts with stride 2, so its first block has a shortcut conv
                shapes[f"{prefix}.downsample.0.weight"] = (channels, block_in, 1, 1)
                batchnorm(f"{prefix}.downsample.1", channels)
        in_channels = channels
    batchnorm("bn2", widths[-1])
    shapes["fc.weight"] = (num_features, widths[-1] * fc_hw[0] * fc_hw[1])
    shapes["fc.bias"] = (num_features,)
    batchnorm("features", num_features)
    return shapes


@pytest.mark.parametrize("name", ["r18", "r34", "r50", "r100"])
def test_state_dict_matches_insightface_names_and_shapes(name):
    with torch.device("meta"):
        model = CONSTRUCTORS[name]()
    got = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    want = expected_shapes(STAGE_BLOCKS[name])
    assert set(got) - set(want) == set() and set(want) - set(got) == set()
    assert got == want


def test_known_key_counts_and_r50_size():
    # insightface r50: 475 state_dict entries; 43.6M parameters (174 MB fp32 backbone.pth)
    shapes = expected_shapes(STAGE_BLOCKS["r50"])
    assert len(shapes) == 475
    with torch.device("meta"):
        model = iresnet50()
    assert abs(sum(p.numel() for p in model.parameters()) - 43.59e6) < 0.01e6


def random_checkpoint(shapes, seed=0):
    """A stand-in for a released backbone.pth: every tensor present, random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    state["features.weight"] = torch.ones(shapes["features.weight"])
    return state


def test_released_checkpoint_loads_strict():
    buffer = io.BytesIO()
    torch.save(random_checkpoint(expected_shapes(STAGE_BLOCKS["r18"])), buffer)
    buffer.seek(0)
    model = iresnet18()
    result = model.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def reference_forward(state, x, blocks, eps=1e-5):
    """The iresnet computation written with torch.nn.functional from a state_dict (eval mode)."""

    def bn(prefix, t):
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=eps)

    x = F.prelu(bn("bn1", F.conv2d(x, state["conv1.weight"], padding=1)), state["prelu.weight"])
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            p = f"layer{stage}.{block}"
            stride = 2 if block == 0 else 1
            out = F.conv2d(bn(f"{p}.bn1", x), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(f"{p}.bn2", out), state[f"{p}.prelu.weight"])
            out = bn(f"{p}.bn3", F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1))
            shortcut = x
            if f"{p}.downsample.0.weight" in state:
                shortcut = bn(f"{p}.downsample.1", F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride))
            x = out + shortcut
    x = F.linear(torch.flatten(bn("bn2", x), 1), state["fc.weight"], state["fc.bias"])
    return F.batch_norm(x, state["features.running_mean"], state["features.running_var"],
                        state["features.weight"], state["features.bias"], training=False, eps=eps)


def test_forward_matches_functional_reference():
    blocks, widths = (2, 1, 1, 2), (8, 16, 24, 32)
    model = IResNet(blocks, widths=widths, num_features=16, input_size=(40, 32)).eval()
    state = random_checkpoint(expected_shapes(blocks, widths, num_features=16, fc_hw=(3, 2)), seed=3)
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(state, x, blocks), rtol=1e-4, atol=1e-5)


def test_forward_shape_eval_determinism_and_batch_independence():
    model = iresnet18().eval()
    model.load_state_dict(random_checkpoint(expected_shapes(STAGE_BLOCKS["r18"])))  # moderate activations
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        first, second, single = model(x), model(x), model(x[1:2])
    assert first.shape == (2, 512)
    assert torch.equal(first, second)
    torch.testing.assert_close(single[0], first[1], rtol=1e-4, atol=1e-5)  # eval BN: no batch coupling


def test_architecture_details():
    model = iresnet50(dropout=0.2, num_features=256)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert model.dropout.p == 0.2
    assert model.fc.in_features == 512 * 7 * 7 and model.fc.out_features == 256
    assert isinstance(model.features, torch.nn.BatchNorm1d)
    assert not model.features.weight.requires_grad and torch.all(model.features.weight == 1)
    assert model.features.bias.requires_grad


@pytest.mark.parametrize("size, fc_hw", [(112, (7, 7)), (64, (4, 4)), ((112, 96), (7, 6)), (36, (3, 3))])
def test_tiny_fc_input_follows_input_size(size, fc_hw):
    model = iresnet_tiny(num_features=32, input_size=size).eval()
    assert model.fc.in_features == 128 * fc_hw[0] * fc_hw[1]
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        assert model(torch.randn(2, 3, h, w)).shape == (2, 32)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(2, 3, h + 16, w))


def test_features_scale_stays_frozen_while_training():
    model = iresnet_tiny(num_features=16, input_size=32)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    bias_before = model.features.bias.detach().clone()
    loss = (model(torch.randn(4, 3, 32, 32)) - torch.randn(4, 16)).square().mean()
    loss.backward()
    optimizer.step()
    assert model.features.weight.grad is None and torch.all(model.features.weight == 1)
    assert not torch.equal(model.features.bias, bias_before)


def test_tiny_learns_on_cpu():
    # four classes told apart by which image quadrant is bright: a linear head on the embedding
    torch.manual_seed(0)
    images = torch.randn(32, 3, 16, 16) * 0.3
    labels = torch.arange(32) % 4
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 1.0
    model = torch.nn.Sequential(iresnet_tiny(num_features=32, input_size=16), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9


def test_fp16_flag_runs_body_in_low_precision_and_returns_float32():
    model = iresnet_tiny(num_features=16, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        model.fp16 = True
        half = model(x)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.1, atol=0.1)  # bfloat16 body on CPU


def mobilefacenet_parameter_count(embedding_size):
    """Count by hand from the MobileFaceNet paper's Table 1 (conv no bias, BN 2/channel, PReLU 1/channel)."""
    def conv_bn(cin, cout, k, groups=1, prelu=True):
        return cout * (cin // groups) * k * k + 2 * cout + (cout if prelu else 0)

    total = conv_bn(3, 64, 3) + conv_bn(64, 64, 3, groups=64)
    cin = 64
    for t, c, n, _ in ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)):
        for _ in range(n):
            hidden = cin * t
            total += conv_bn(cin, hidden, 1) + conv_bn(hidden, hidden, 3, groups=hidden)
            total += conv_bn(hidden, c, 1, prelu=False)
            cin = c
    total += conv_bn(128, 512, 1) + conv_bn(512, 512, 7, groups=512, prelu=False)
    return total + conv_bn(512, embedding_size, 1, prelu=False)


@pytest.mark.parametrize("embedding_size", [128, 512])
def test_mobilefacenet_shapes_and_size(embedding_size):
    model = MobileFaceNet(embedding_size).eval()
    count = sum(p.numel() for p in model.parameters())
    assert count == mobilefacenet_parameter_count(embedding_size)
    if embedding_size == 128:
        assert 0.9e6 < count < 1.1e6  # the paper: 0.99M parameters
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, embedding_size)
    assert model.gdconv[0].kernel_size == (7, 7) and model.gdconv[0].groups == 512


def test_mobilefacenet_other_input_size_and_training_step():
    model = MobileFaceNet(64, input_size=(112, 96))
    assert model.gdconv[0].kernel_size == (7, 6)
    out = model(torch.randn(4, 3, 112, 96))
    assert out.shape == (4, 64)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
