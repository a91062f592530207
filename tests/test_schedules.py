"""The large-batch lr recipe: scaling rules, warm-up + polynomial decay, weight-decay groups."""
import math
import pickle

import pytest
import torch
from torch import nn

from modules.nets.iresnet import iresnet_tiny
from modules.schedules import param_groups, scaled_lr, warmup_poly_lambda


def test_scaled_lr_rules():
    # insightface: lr 0.1 at 8 GPUs x 128 = 1024; linear scaling to 4096 gives 0.4, sqrt gives 0.2
    assert scaled_lr(0.1, 1024, 4096) == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, 4096, rule="sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, 256) == pytest.approx(0.025)
    assert scaled_lr(0.02, 512, 512, rule="sqrt") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="rule"):
        scaled_lr(0.1, 1024, 2048, rule="cubic")
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, 2048)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_lambda_matches_formula_at_chosen_steps(power):
    total, warmup = 100, 10
    f = warmup_poly_lambda(total, warmup, power)
    # warm-up: (step + 1) / warmup
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    # decay: (1 - (step - warmup) / (total - warmup)) ** power
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 ** power)
    assert f(91) == pytest.approx((9 / 90) ** power)
    assert f(99) == pytest.approx((1 / 90) ** power)
    assert f(100) == 0.0 and f(150) == 0.0


def test_lambdalr_stepped_per_iteration():
    base_lr, total, warmup = 0.4, 20, 4
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_poly_lambda(total, warmup))
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr this iteration runs with
        optimizer.step()
        scheduler.step()
    expected = [base_lr * (i + 1) / warmup for i in range(warmup)]
    expected += [base_lr * (1 - (i - warmup) / (total - warmup)) for i in range(warmup, total)]
    assert seen == pytest.approx(expected)
    assert seen[0] > 0 and max(seen) == pytest.approx(base_lr)
    assert optimizer.param_groups[0]["lr"] == 0.0  # after the last step


def test_lambda_without_warmup_and_bad_arguments():
    f = warmup_poly_lambda(10, 0)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5)
    pickle.loads(pickle.dumps(f))  # checkpoints and spawned workers need it to pickle
    with pytest.raises(ValueError):
        warmup_poly_lambda(10, 10)
    with pytest.raises(ValueError):
        warmup_poly_lambda(0, 0)


def test_param_groups_split_weights_from_norms_and_biases():
    model = iresnet_tiny(num_features=16, input_size=32)
    groups = param_groups(model, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["weight_decay"] == 5e-4 and by_name["no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in by_name["decay"]["params"]}
    no_decay = {names[id(p)] for p in by_name["no_decay"]["params"]}
    # expected from the names: conv/fc weights and PReLU slopes decay; BN params and biases do not
    expected_decay = {n for n in names.values() if (".conv" in n or n.startswith("conv") or "downsample.0" in n
                                                    or n == "fc.weight" or "prelu" in n)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay == expected_decay
    assert no_decay == trainable - expected_decay
    assert "fc.bias" in no_decay and "bn2.weight" in no_decay and "layer1.0.downsample.1.bias" in no_decay
    assert "features.weight" not in decay | no_decay  # frozen, left out
    assert "features.bias" in no_decay
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted by torch


def test_param_groups_without_exclusion_and_empty_groups_dropped():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, 1e-4, no_decay_bn_bias=False)
    assert len(groups) == 1 and len(groups[0]["params"]) == 4 and groups[0]["weight_decay"] == 1e-4
    only_weights = nn.Linear(4, 4, bias=False)
    groups = param_groups(only_weights, 1e-4)
    assert [g["name"] for g in groups] == ["decay"]


def test_weight_decay_really_skips_no_decay_group():
    # one SGD step with zero gradients: only decayed parameters move, by lr * wd * p
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = list(model.parameters())
    torch.testing.assert_close(after[0], before[0] * (1 - 0.1 * 0.5))  # linear weight decayed
    for b, a in zip(before[1:], after[1:]):  # linear bias, BN weight, BN bias untouched
        assert torch.equal(a, b)
    assert math.isclose(optimizer.param_groups[1]["weight_decay"], 0.0)


def test_cosine_and_constant_schedules_follow_their_formulas():
    import math

    from modules.schedules import WarmupConstantLambda, WarmupCosineLambda
    cosine = WarmupCosineLambda(total_steps=110, warmup_steps=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(110) == pytest.approx(0.0, abs=1e-12) and cosine(500) == pytest.approx(0.0, abs=1e-12)
    constant = WarmupConstantLambda(4)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
