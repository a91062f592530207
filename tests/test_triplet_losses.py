"""Triplet losses against pytorch-metric-learning (batch hard) and NumPy loops (batch all, semi-hard).

PML's configuration is the equivalent one, checked in its source: ``BatchHardMiner`` keeps the
anchors that have a positive and a negative and picks max d_ap / min d_an on the same distance;
``TripletMarginLoss`` computes ``l(d_ap - d_an + margin)`` (softplus when ``smooth_loss``) and
``MeanReducer`` averages every mined triplet, zeros included (its default reducer, AvgNonZero, would
not). ``LpDistance`` uses ``torch.cdist`` (no epsilon), whose gradient is 0 at zero distance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer

from modules.losses.triplet import (TripletLoss, batch_all_triplet_loss, batch_hard_triplet_loss,
                                    pairwise_distances, semi_hard_triplet_loss, triplet_loss)

RTOL = 1e-5
ATOL = 1e-10  # fp64: the eps inside the sqrt changes distances by ~eps / (2 d), far below this


def pk_batch(identities=6, per_identity=4, dim=8, seed=0, dtype=torch.float64, normalise=False,
             dyadic=False, clustered=0.0):
    """A shuffled P x K batch; ``clustered`` scales a per-identity centre added to the noise;
    ``dyadic`` rounds to multiples of 1/1024 so that fp64 Gram sums are exact."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(identities * per_identity, dim, generator=generator, dtype=torch.float64)
    centres = torch.randn(identities, dim, generator=generator, dtype=torch.float64)
    x = x + clustered * centres.repeat_interleave(per_identity, dim=0)
    if normalise:
        x = torch.nn.functional.normalize(x, dim=1)
    if dyadic:
        x = torch.round(x * 1024) / 1024
    labels = torch.arange(identities).repeat_interleave(per_identity)
    order = torch.randperm(labels.numel(), generator=generator)
    return x[order].to(dtype).requires_grad_(True), labels[order]


def pml_batch_hard(x, labels, margin, squared=False):
    distance = LpDistance(normalize_embeddings=False, power=2 if squared else 1)
    miner = BatchHardMiner(distance=distance)
    loss_fn = TripletMarginLoss(margin=0.0 if margin is None else margin,
                                smooth_loss=margin is None, reducer=MeanReducer(),
                                distance=distance)
    return loss_fn(x, labels, miner(x, labels))


def value_and_grad(fn, x):
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# ---------------------------------------------------------------- NumPy references (plain loops)

def np_distances(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def np_triplet_grad(x, d, a, p, n, weight):
    """Gradient of weight * (d_ap - d_an) with respect to x (hinge active)."""
    g = np.zeros_like(x)
    u_ap = (x[a] - x[p]) / d[a, p]
    u_an = (x[a] - x[n]) / d[a, n]
    g[a] += weight * (u_ap - u_an)
    g[p] -= weight * u_ap
    g[n] += weight * u_an
    return g


def np_batch_all(x, labels, margin):
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    d = np_distances(x)
    active = []
    for a in range(len(x)):
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(x)):
                if labels[n] == labels[a]:
                    continue
                value = d[a, p] - d[a, n] + margin
                if value > 0:
                    active.append((a, p, n, value))
    if not active:
        return 0.0, np.zeros_like(x)
    loss = sum(v for *_, v in active) / len(active)
    grad = sum(np_triplet_grad(x, d, a, p, n, 1.0 / len(active)) for a, p, n, _ in active)
    return loss, grad


def np_semi_hard(x, labels, margin):
    """Per pair: nearest negative strictly inside (d_ap, d_ap + margin), else the farthest one."""
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    d = np_distances(x)
    chosen, semi_hard_found = [], 0
    for a in range(len(x)):
        negatives = [n for n in range(len(x)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            semi_hard = [n for n in negatives if d[a, p] < d[a, n] < d[a, p] + margin]
            if semi_hard:
                n = min(semi_hard, key=lambda k: d[a, k])
                semi_hard_found += 1
            else:
                n = max(negatives, key=lambda k: d[a, k])
            chosen.append((a, p, n))
    losses = [max(0.0, d[a, p] - d[a, n] + margin) for a, p, n in chosen]
    grad = np.zeros_like(x)
    for (a, p, n), value in zip(chosen, losses):
        if value > 0:
            grad += np_triplet_grad(x, d, a, p, n, 1.0 / len(chosen))
    return float(np.mean(losses)), grad, semi_hard_found / len(chosen)


# ---------------------------------------------------------------- distances

def test_pairwise_distances_match_numpy_and_cdist():
    x, _ = pk_batch(seed=1)
    d = pairwise_distances(x)
    reference = np_distances(x.detach().numpy())
    np.testing.assert_allclose(d.detach().numpy(), np.sqrt(reference ** 2 + 1e-12), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(pairwise_distances(x, squared=True),
                               torch.cdist(x, x) ** 2, rtol=1e-10, atol=1e-12)


def test_pairwise_distances_eps_inside_sqrt_keeps_gradient_finite():
    # rows 0 and 1 are identical: s = 0 there, where d sqrt(s)/ds is infinite without the eps
    x = torch.tensor([[1.0, 2.0, -0.5], [1.0, 2.0, -0.5], [0.25, -1.0, 3.0]],
                     dtype=torch.float64, requires_grad=True)
    d = pairwise_distances(x)
    assert d[0, 1].item() == pytest.approx(1e-6, rel=1e-9)  # sqrt(0 + 1e-12)
    assert d[0, 0].item() == pytest.approx(1e-6, rel=1e-9)
    (grad,) = torch.autograd.grad(d[0, 1] + d[0, 2], x)
    assert torch.isfinite(grad).all()
    # d d_02 / d x_0 = (x_0 - x_2) / d_02; d_01 contributes 0 (x_0 - x_1 = 0)
    expected = (x[0] - x[2]) / torch.linalg.norm(x[0] - x[2])
    # the zero term is a difference of two terms scaled by 1 / (2 sqrt(eps)) = 5e5: ~1e-10 rounding
    torch.testing.assert_close(grad[0], expected.detach(), rtol=1e-8, atol=1e-9)


def test_pairwise_distances_near_duplicates_in_float32_stay_finite():
    # large norms and near-duplicate rows: the float32 Gram form rounds some squared distances
    # below zero (checked below); they must be clamped, not turned into NaN by the sqrt
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(16, 64, generator=generator) * 30
    x = torch.cat([base, base + 1e-4 * torch.randn(16, 64, generator=generator)])
    norms = (x * x).sum(1)
    raw = (norms[:, None] + norms[None, :] - 2 * x @ x.T).fill_diagonal_(0)
    assert (raw < 0).any()
    d = pairwise_distances(x)
    assert torch.isfinite(d).all() and (d > 0).all()
    # float32 rounding of a 3600-sized squared norm: absolute error well under 1
    torch.testing.assert_close(d, torch.cdist(x.double(), x.double()).float(), rtol=0, atol=0.2)


def test_pairwise_distances_half_precision_computed_in_float32():
    x, _ = pk_batch(seed=2, dtype=torch.float16)
    assert pairwise_distances(x).dtype == torch.float32


# ---------------------------------------------------------------- batch hard == PML

@pytest.mark.parametrize("margin", [None, 0.3])
@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_value_and_gradient_equal_pml(margin, squared):
    x, labels = pk_batch(identities=6, per_identity=4, seed=3, clustered=1.0)
    ours = value_and_grad(lambda e: batch_hard_triplet_loss(e, labels, margin, squared)[0], x)
    pml = value_and_grad(lambda e: pml_batch_hard(e, labels, margin, squared), x)
    torch.testing.assert_close(ours[0], pml[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours[1], pml[1], rtol=RTOL, atol=ATOL)


def test_batch_hard_hinge_counts_zero_losses_in_the_mean():
    # well separated identities leave some anchors satisfied (zero hinge): MeanReducer keeps them
    x, labels = pk_batch(identities=5, per_identity=3, seed=4, clustered=1.5)
    loss, stats = batch_hard_triplet_loss(x, labels, margin=0.1)
    assert 0 < stats.active_fraction.item() < 1, "the batch must mix active and satisfied anchors"
    torch.testing.assert_close(loss.detach(), pml_batch_hard(x, labels, 0.1).detach(),
                               rtol=RTOL, atol=ATOL)


def test_batch_hard_float32_matches_pml():
    x, labels = pk_batch(identities=8, per_identity=4, dim=16, seed=5, dtype=torch.float32)
    for margin in (None, 0.2):
        ours = value_and_grad(lambda e: batch_hard_triplet_loss(e, labels, margin)[0], x)
        pml = value_and_grad(lambda e: pml_batch_hard(e, labels, margin), x)
        torch.testing.assert_close(ours[0], pml[0], rtol=RTOL, atol=1e-6)
        torch.testing.assert_close(ours[1], pml[1], rtol=RTOL, atol=1e-6)


def test_batch_hard_by_hand_on_a_line():
    # 1-D points: identity 0 at 0, 1, 3; identity 1 at 4, 7
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [7.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1])
    # anchor: (farthest positive, nearest negative) -> d_ap - d_an
    # 0: (3, 4) -> -1 ; 1: (2, 3) -> -1 ; 3: (3, 1) -> 2
    # 4 [at 4]: (3, 1) -> 2 ; 7: (3, 4) -> -1
    expected = np.log1p(np.exp([-1.0, -1.0, 2.0, 2.0, -1.0])).mean()
    loss, stats = batch_hard_triplet_loss(x, labels, margin=None)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert stats.num_triplets.item() == 5
    assert stats.active_fraction.item() == pytest.approx(2 / 5)
    hinge, _ = batch_hard_triplet_loss(x, labels, margin=0.5)
    assert hinge.item() == pytest.approx((2.5 + 2.5) / 5, rel=1e-9)


def test_batch_hard_skips_anchor_whose_label_has_one_image():
    x, labels = pk_batch(identities=4, per_identity=3, seed=6)
    labels = labels.clone()
    singleton = 0
    labels[singleton] = 99  # identity 99 has one image: anchor 0 has no positive
    loss, stats = batch_hard_triplet_loss(x, labels, margin=None)
    assert stats.num_triplets.item() == labels.numel() - 1
    # its row excluded, but it still serves as a negative for the others: same as PML
    torch.testing.assert_close(loss.detach(), pml_batch_hard(x, labels, None).detach(),
                               rtol=RTOL, atol=ATOL)
    # and equal to the mean of the other anchors computed by hand
    d = np_distances(x.detach().numpy())
    lab = labels.numpy()
    terms = []
    for a in range(len(lab)):
        pos = [p for p in range(len(lab)) if p != a and lab[p] == lab[a]]
        neg = [n for n in range(len(lab)) if lab[n] != lab[a]]
        if pos and neg:
            terms.append(np.log1p(np.exp(max(d[a, pos]) - min(d[a, neg]))))
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-9)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("mining,margin", [("batch_hard", None), ("batch_hard", 0.2),
                                           ("batch_all", 0.2), ("batch_all", None),
                                           ("semi_hard", 0.2)])
def test_one_identity_gives_connected_zero_loss(mining, margin):
    x, _ = pk_batch(identities=1, per_identity=5, seed=7)
    labels = torch.zeros(5, dtype=torch.long)
    loss, stats = triplet_loss(x, labels, mining, margin)
    assert loss.item() == 0.0 and stats.num_triplets.item() == 0
    assert stats.mean_d_ap.item() == 0.0 and stats.active_fraction.item() == 0.0
    (grad,) = torch.autograd.grad(loss, x)  # connected to the graph, zero gradient
    assert torch.equal(grad, torch.zeros_like(x))


def test_duplicate_embeddings_give_finite_gradients_equal_to_pml():
    x, labels = pk_batch(identities=4, per_identity=2, dim=6, seed=8, dyadic=True)
    x = x.detach().clone()
    labels = labels.clone()
    # an exact duplicate positive (the only positive of both: d_ap = 0 is the hardest positive)
    # and an exact duplicate of another identity (d_an = 0 is the hardest negative)
    first, second = (labels == 0).nonzero().flatten().tolist()
    x[second] = x[first]
    other = (labels == 1).nonzero().flatten()[0]
    x[other] = x[(labels == 2).nonzero().flatten()[0]]
    x.requires_grad_(True)
    assert pairwise_distances(x, squared=True)[first, second].item() == 0.0  # exact zero
    for margin in (None, 0.2):
        ours = value_and_grad(lambda e: batch_hard_triplet_loss(e, labels, margin)[0], x)
        pml = value_and_grad(lambda e: pml_batch_hard(e, labels, margin), x)
        assert torch.isfinite(ours[1]).all()
        torch.testing.assert_close(ours[0], pml[0], rtol=RTOL, atol=1e-5)  # sqrt(eps) = 1e-6
        # the zero-distance pair's gradient is a difference of terms scaled by 1 / (2 sqrt(eps))
        torch.testing.assert_close(ours[1], pml[1], rtol=RTOL, atol=1e-8)
    for mining in ("batch_all", "semi_hard"):
        loss, _ = triplet_loss(x, labels, mining, 0.2)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- batch all == NumPy, PML

@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_batch_all_value_and_gradient_equal_numpy(margin):
    x, labels = pk_batch(identities=4, per_identity=3, seed=9)
    loss, stats = batch_all_triplet_loss(x, labels, margin)
    (grad,) = torch.autograd.grad(loss, x)
    ref_loss, ref_grad = np_batch_all(x.detach().numpy(), labels.numpy(), margin)
    assert 0 < stats.active_fraction.item() < 1, "the batch must mix active and inactive triplets"
    assert stats.num_triplets.item() == 4 * 3 * 2 * 9  # anchors x positives x negatives
    assert loss.item() == pytest.approx(ref_loss, rel=RTOL)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=RTOL, atol=ATOL)


def test_batch_all_equals_pml_all_triplets_with_avg_non_zero():
    # an independent second reference: PML's TripletMarginLoss over all triplets, default reducer
    # (AvgNonZeroReducer = mean over the positive losses)
    x, labels = pk_batch(identities=5, per_identity=4, seed=10)
    pml_loss = TripletMarginLoss(margin=0.2, distance=LpDistance(normalize_embeddings=False))
    ours = value_and_grad(lambda e: batch_all_triplet_loss(e, labels, 0.2)[0], x)
    pml = value_and_grad(lambda e: pml_loss(e, labels), x)
    torch.testing.assert_close(ours[0], pml[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours[1], pml[1], rtol=RTOL, atol=ATOL)


def test_batch_all_soft_margin_averages_all_triplets():
    x, labels = pk_batch(identities=3, per_identity=3, seed=11)
    loss, _ = batch_all_triplet_loss(x, labels, None)
    d = np_distances(x.detach().numpy())
    lab = labels.numpy()
    terms = [np.log1p(np.exp(d[a, p] - d[a, n])) for a in range(9) for p in range(9)
             for n in range(9) if a != p and lab[a] == lab[p] and lab[n] != lab[a]]
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-9)


# ---------------------------------------------------------------- semi-hard == NumPy

@pytest.mark.parametrize("seed", [12, 13])
def test_semi_hard_value_and_gradient_equal_numpy(seed):
    x, labels = pk_batch(identities=5, per_identity=4, dim=6, seed=seed, normalise=True)
    loss, stats = semi_hard_triplet_loss(x, labels, margin=0.2)
    (grad,) = torch.autograd.grad(loss, x)
    ref_loss, ref_grad, ref_found = np_semi_hard(x.detach().numpy(), labels.numpy(), 0.2)
    # the batch must exercise both branches of the rule
    assert 0 < ref_found < 1
    assert stats.semi_hard_fraction.item() == pytest.approx(ref_found)
    assert stats.num_triplets.item() == 5 * 4 * 3
    assert loss.item() == pytest.approx(ref_loss, rel=RTOL)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=RTOL, atol=ATOL)


def test_semi_hard_fallback_rule_by_hand():
    # 1-D, margin 0.5. Identity 0 at 0 and 2; identity 1 at 1.0 and 5.0; identity 2 at 9 and 9.25.
    x = torch.tensor([[0.0], [2.0], [1.0], [5.0], [9.0], [9.25]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, stats = semi_hard_triplet_loss(x, labels, margin=0.5)
    # pair (0 -> 2): d_ap 2; negatives at 1, 5, 9, 9.25: none in (2, 2.5) -> easiest (9.25): 0
    # pair (2 -> 0): d_ap 2; negatives at 1, 3, 7, 7.25: none in (2, 2.5) -> easiest (7.25): 0
    # pair (1.0 -> 5.0): d_ap 4; negatives at 1, 1, 8, 8.25: none in (4, 4.5) -> easiest: 0
    # pair (5.0 -> 1.0): d_ap 4; negatives at 5, 3, 4, 4.25: semi-hard 4.25 -> 4 - 4.25 + .5 = .25
    # pair (9 -> 9.25): d_ap .25; negatives 9, 7, 8, 4: none in (.25, .75) -> easiest: 0
    # pair (9.25 -> 9): d_ap .25; none in (.25, .75) -> 0
    assert loss.item() == pytest.approx(0.25 / 6, rel=1e-12)
    assert stats.semi_hard_fraction.item() == pytest.approx(1 / 6)
    # all negatives harder than the positive: the least hard one is used (positive loss)
    x = torch.tensor([[0.0], [3.0], [1.0], [-2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss, stats = semi_hard_triplet_loss(x, labels, margin=0.5)
    # (0 -> 3): d_ap 3, negatives at 1, 2 -> easiest 2: 3 - 2 + .5 = 1.5
    # (3 -> 0): d_ap 3, negatives at 2, 5: 5 is beyond 3.5 -> 0
    # (1 -> -2): d_ap 3, negatives at 1, 2 -> easiest 2: 1.5
    # (-2 -> 1): d_ap 3, negatives at 2, 5 -> 0
    assert loss.item() == pytest.approx(3.0 / 4, rel=1e-12)
    assert stats.semi_hard_fraction.item() == 0.0
    assert stats.active_fraction.item() == pytest.approx(0.5)


def test_semi_hard_needs_a_margin():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss("semi_hard", margin=None)
    with pytest.raises(ValueError, match="unknown triplet mining"):
        TripletLoss("hardest")


# ---------------------------------------------------------------- module and stats

def test_triplet_loss_module_records_stats():
    x, labels = pk_batch(identities=4, per_identity=4, seed=14)
    module = TripletLoss("batch_hard", margin=0.2)
    loss = module(x, labels)
    assert loss.item() == pytest.approx(batch_hard_triplet_loss(x, labels, 0.2)[0].item())
    stats = module.last_stats.as_dict("triplet/")
    assert set(stats) == {"triplet/num_triplets", "triplet/active_fraction", "triplet/mean_d_ap",
                          "triplet/mean_d_an"}
    # mean hardest distances by hand
    d = np_distances(x.detach().numpy())
    lab = labels.numpy()
    far_pos = [max(d[a, (lab == lab[a]) & (np.arange(16) != a)]) for a in range(16)]
    near_neg = [min(d[a, lab != lab[a]]) for a in range(16)]
    assert stats["triplet/mean_d_ap"].item() == pytest.approx(np.mean(far_pos), rel=1e-9)
    assert stats["triplet/mean_d_an"].item() == pytest.approx(np.mean(near_neg), rel=1e-9)
    active = np.mean(np.array(far_pos) - np.array(near_neg) + 0.2 > 0)
    assert stats["triplet/active_fraction"].item() == pytest.approx(active)
    assert not any(v.requires_grad for v in stats.values())
