"""Margin heads against pytorch-metric-learning and numpy; center loss against hand computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

from modules.losses.center_loss import CenterLoss
from modules.losses.margins import MarginHead

NUM_CLASSES, EMBEDDING = 10, 16


def margin_cross_entropy(head: MarginHead, embeddings, weight, labels):
    """Our loss on the same pieces PML uses: normalised embeddings and normalised class rows."""
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t()
    return F.cross_entropy(head(cosine, labels), labels)


def problem(seed: int = 0, batch: int = 24):
    """Random embeddings, with a third of them pointing away from their class (theta near pi)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(NUM_CLASSES, EMBEDDING, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    embeddings = torch.randn(batch, EMBEDDING, generator=gen)
    far = torch.arange(batch) % 3 == 0
    embeddings[far] = -F.normalize(weight[labels[far]], dim=1) * 3 + 0.05 * embeddings[far]
    return weight, embeddings, labels


def compare_with_pml(head: MarginHead, pml_loss, seed: int = 0):
    weight, embeddings, labels = problem(seed)
    with torch.no_grad():
        pml_loss.W.copy_(weight.t())  # PML stores (embedding, classes)
    ours_x = embeddings.clone().requires_grad_()
    pml_x = embeddings.clone().requires_grad_()
    ours = margin_cross_entropy(head, ours_x, weight, labels)
    theirs = pml_loss(pml_x, labels)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours_x.grad, pml_x.grad, rtol=1e-5, atol=1e-7)
    return weight, embeddings, labels


def test_arcface_equals_pml_including_the_fallback_branch():
    head = MarginHead("arcface", s=64.0, m2=0.5)
    pml = ArcFaceLoss(NUM_CLASSES, EMBEDDING, margin=math.degrees(0.5), scale=64)
    weight, embeddings, labels = compare_with_pml(head, pml)
    target_cos = (F.normalize(embeddings, dim=1) * F.normalize(weight[labels], dim=1)).sum(1)
    assert (torch.acos(target_cos) > math.pi - 0.5).sum() >= 5  # the guard was really compared


def test_cosface_equals_pml():
    compare_with_pml(MarginHead("cosface", s=64.0, m3=0.35),
                     CosFaceLoss(NUM_CLASSES, EMBEDDING, margin=0.35, scale=64))
    compare_with_pml(MarginHead("cosface", s=30.0, m3=0.2),
                     CosFaceLoss(NUM_CLASSES, EMBEDDING, margin=0.2, scale=30), seed=1)


def random_cosines(batch=40, classes=7, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    cosine = torch.rand(batch, classes, generator=gen, dtype=dtype) * 2 - 1
    labels = torch.randint(0, classes, (batch,), generator=gen)
    labels[::5] = -1  # rows whose target another shard owns
    return cosine, labels


def numpy_additive(cos, m1, m2, m3):
    """s-free target value: cos(m1 theta + m2) - m3, the ArcFace guard past pi."""
    theta = np.arccos(cos)
    return np.where(m1 * theta + m2 <= np.pi, np.cos(m1 * theta + m2), cos - m2 * np.sin(m2)) - m3


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.3, 0.2), (1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.35, 0.1, 0.1)])
def test_combined_margin_matches_the_formula(m1, m2, m3):
    cosine, labels = random_cosines()
    logits = MarginHead("combined", s=32.0, m1=m1, m2=m2, m3=m3)(cosine, labels).numpy()
    c, y = cosine.numpy(), labels.numpy()
    expected = 32.0 * c.copy()
    rows = np.nonzero(y >= 0)[0]
    expected[rows, y[rows]] = 32.0 * numpy_additive(c[rows, y[rows]], m1, m2, m3)
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-12)


def test_combined_reduces_to_arcface_and_cosface():
    cosine, labels = random_cosines(seed=3)
    pairs = [(MarginHead("combined", m1=1.0, m2=0.5, m3=0.0), MarginHead("arcface", m2=0.5)),
             (MarginHead("combined", m1=1.0, m2=0.0, m3=0.35), MarginHead("cosface", m3=0.35))]
    for combined, named in pairs:
        a, b = cosine.clone().requires_grad_(), cosine.clone().requires_grad_()
        out_a, out_b = combined(a, labels), named(b, labels)
        weights = torch.randn_like(out_a)
        (out_a * weights).sum().backward()
        (out_b * weights).sum().backward()
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_default_margins_are_the_published_ones():
    assert (MarginHead("arcface").m1, MarginHead("arcface").m2, MarginHead("arcface").m3) == (1.0, 0.5, 0.0)
    assert MarginHead("cosface").m3 == 0.35
    combined = MarginHead("combined")
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.3, 0.2)
    with pytest.raises(ValueError):
        MarginHead("arcface", m3=0.2)
    with pytest.raises(ValueError):
        MarginHead("cosface", m2=0.5)
    with pytest.raises(ValueError):
        MarginHead("sphereface", m2=0.5)


def test_arcface_fallback_near_pi_has_finite_gradients():
    m = 0.5
    cosine = torch.tensor([[-1.0, 0.2], [-0.9999, 0.1], [math.cos(math.pi - 0.6), 0.0],
                           [math.cos(math.pi - 0.4), 0.3], [1.0, 0.0]], dtype=torch.float64,
                          requires_grad=True)
    labels = torch.zeros(5, dtype=torch.long)
    logits = MarginHead("arcface", s=64.0, m2=m)(cosine, labels)
    logits.sum().backward()
    c = cosine.detach()[:, 0].numpy()
    theta = np.arccos(np.clip(c, -1 + 1e-7, 1 - 1e-7))
    expected = np.where(theta <= np.pi - m, np.cos(theta + m), c - m * np.sin(m))
    np.testing.assert_allclose(logits.detach()[:, 0].numpy(), 64 * expected, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(cosine.grad).all()
    # fallback rows (theta > pi - m): d/dcos (cos - m sin m) = 1
    np.testing.assert_allclose(cosine.grad[[0, 1, 3], 0].numpy(), 64.0, rtol=1e-12)
    # monotone row (theta = pi - 0.6): d/dcos cos(theta + m) = sin(theta + m) / sin(theta)
    t = math.pi - 0.6
    assert cosine.grad[2, 0].item() == pytest.approx(64 * math.sin(t + m) / math.sin(t), rel=1e-6)


def test_straight_through_has_the_plain_cosine_gradient():
    cosine, labels = random_cosines(seed=5)
    exact, straight = MarginHead("arcface", s=64.0), MarginHead("arcface", s=64.0, straight_through=True)
    a, b = cosine.clone().requires_grad_(), cosine.clone().requires_grad_()
    out_a, out_b = exact(a, labels), straight(b, labels)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    weights = torch.randn_like(out_b)
    (out_b * weights).sum().backward()
    torch.testing.assert_close(b.grad, 64.0 * weights, rtol=0, atol=1e-12)
    (out_a * weights).sum().backward()
    rows = torch.nonzero(labels >= 0).squeeze(1)
    assert not torch.allclose(a.grad[rows, labels[rows]], b.grad[rows, labels[rows]])


def numpy_psi(cos, m):
    """SphereFace eq. 6 by intervals: psi = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m]."""
    theta = np.arccos(cos)
    psi, dpsi = np.full_like(cos, np.nan), np.full_like(cos, np.nan)
    for k in range(m):
        inside = (theta >= k * np.pi / m) & (theta <= (k + 1) * np.pi / m)
        psi[inside] = (-1) ** k * np.cos(m * theta[inside]) - 2 * k
        # d psi / d cos = (-1)^k m sin(m theta) / sin(theta)
        dpsi[inside] = (-1) ** k * m * np.sin(m * theta[inside]) / np.sin(theta[inside])
    return psi, dpsi


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_psi_and_lambda_annealing(m):
    gen = torch.Generator().manual_seed(m)
    batch = 64
    cosine = (torch.rand(batch, 5, generator=gen, dtype=torch.float64) * 1.98 - 0.99).requires_grad_()
    labels = torch.randint(0, 5, (batch,), generator=gen)
    head = MarginHead("sphereface", s=30.0, sphere_m=m)
    head.iteration.fill_(9)
    logits = head(cosine, labels)  # training mode: this forward runs as iteration 10
    assert int(head.iteration) == 10
    lam = max(5.0, 1000.0 / (1 + 0.12 * 10))
    rows = torch.arange(batch)
    c = cosine.detach()[rows, labels].numpy()
    psi, dpsi = numpy_psi(c, m)
    target = logits[rows, labels]
    np.testing.assert_allclose(target.detach().numpy(), 30 * (lam * c + psi) / (1 + lam), rtol=1e-10)
    target.sum().backward()
    np.testing.assert_allclose(cosine.grad[rows, labels].numpy(), 30 * (lam + dpsi) / (1 + lam),
                               rtol=1e-8, atol=1e-8)
    others = torch.ones_like(cosine, dtype=torch.bool)
    others[rows, labels] = False
    torch.testing.assert_close(logits[others], 30 * cosine[others])


def test_sphereface_lambda_schedule_and_checkpointed_iteration():
    head = MarginHead("sphereface")
    cosine, labels = random_cosines(seed=2)
    head(cosine, labels)
    assert head.sphereface_lambda() == pytest.approx(1000.0 / 1.12)  # first forward is iteration 1
    head.eval()
    head(cosine, labels)
    assert int(head.iteration) == 1  # evaluation does not advance the schedule
    head.iteration.fill_(10_000)
    assert head.sphereface_lambda() == 5.0
    restored = MarginHead("sphereface")
    restored.load_state_dict(head.state_dict())
    assert int(restored.iteration) == 10_000


def test_rows_without_target_are_plain_scaled_cosines():
    cosine, _ = random_cosines()
    labels = torch.full((cosine.shape[0],), -1)
    for head in (MarginHead("arcface"), MarginHead("cosface"), MarginHead("sphereface")):
        torch.testing.assert_close(head(cosine, labels), head.s * cosine)


# ------------------------------------------------------------------------------- center loss
def test_center_loss_value_and_gradients():
    gen = torch.Generator().manual_seed(0)
    loss_fn = CenterLoss(num_classes=4, embedding_size=3).double()
    with torch.no_grad():
        loss_fn.centers.copy_(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 3, 0, 0])
    loss = loss_fn(x, y)
    loss.backward()
    xs, cs, ys = x.detach().numpy(), loss_fn.centers.detach().numpy(), y.numpy()
    expected = 0.5 * np.mean([np.sum((xs[i] - cs[ys[i]]) ** 2) for i in range(6)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), (xs - cs[ys]) / 6, rtol=1e-12)
    expected_center_grad = np.zeros_like(cs)
    for i in range(6):
        expected_center_grad[ys[i]] -= (xs[i] - cs[ys[i]]) / 6
    np.testing.assert_allclose(loss_fn.centers.grad.numpy(), expected_center_grad, rtol=1e-12)


def test_center_loss_alpha_update_follows_eq_4():
    gen = torch.Generator().manual_seed(1)
    loss_fn = CenterLoss(num_classes=4, embedding_size=3, alpha=0.5).double()
    assert not any(True for _ in loss_fn.parameters())
    before = loss_fn.centers.clone().numpy()
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([2, 2, 0, 2, 0, 1, 2])
    loss = loss_fn(x, y)
    expected_loss = 0.5 * np.mean(np.sum((x.numpy() - before[y.numpy()]) ** 2, axis=1))
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)  # computed with the old centres
    expected = before.copy()
    for j in range(4):
        members = x.numpy()[y.numpy() == j]
        delta = np.sum(before[j] - members, axis=0) / (1 + len(members))
        expected[j] = before[j] - 0.5 * delta
    np.testing.assert_allclose(loss_fn.centers.numpy(), expected, rtol=1e-12)


def test_center_loss_rejects_bad_labels():
    loss_fn = CenterLoss(num_classes=4, embedding_size=3)
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        loss_fn(torch.zeros(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
