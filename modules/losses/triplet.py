"""Triplet losses with in-batch mining: batch hard, batch all (Hermans et al. 2017, "In Defense of the
Triplet Loss for Person Re-Identification") and FaceNet semi-hard (Schroff et al. 2015).

Every loss takes a batch of embeddings ``(B, D)`` and integer identity labels ``(B,)`` and returns
``(loss, TripletStats)``. Distances are Euclidean on the embeddings as given (normalise them first
if the recipe wants unit-norm embeddings, as FaceNet does).

For data-parallel training, gather the global batch with
``modules.distributed.all_gather_keep_local_grad`` (labels with ``all_gather_no_grad``) and multiply
the loss by the world size: DDP's gradient averaging then reproduces the one-process gradient.

Memory: batch hard is O(B^2); batch all and semi-hard build (B, B, B) tensors, so they suit the usual
P x K batches (a few hundred embeddings), not thousands.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modules.losses.kinds import MINING_STRATEGIES, check_triplet


@dataclass
class TripletStats:
    """What the mining found, as detached 0-dim tensors (ready for ``LightningModule.log``).

    ``num_triplets``: triplets (or anchors, for batch hard) that entered the loss;
    ``active_fraction``: the share of them that violate the margin (hinge > 0; for the soft margin,
    d_an <= d_ap); ``mean_d_ap`` / ``mean_d_an``: mean anchor-positive / anchor-negative distance over
    them (0 when there are none); ``semi_hard_fraction``: for semi-hard mining only, the share of
    anchor-positive pairs that found a semi-hard negative.
    """

    num_triplets: torch.Tensor
    active_fraction: torch.Tensor
    mean_d_ap: torch.Tensor
    mean_d_an: torch.Tensor
    semi_hard_fraction: torch.Tensor | None = None

    def as_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        values = {
            "num_triplets": self.num_triplets,
            "active_fraction": self.active_fraction,
            "mean_d_ap": self.mean_d_ap,
            "mean_d_an": self.mean_d_an,
            "semi_hard_fraction": self.semi_hard_fraction,
        }
        return {prefix + name: value for name, value in values.items() if value is not None}


def pairwise_distances(embeddings: torch.Tensor, squared: bool = False,
                       eps: float = 1e-12) -> torch.Tensor:
    """All Euclidean distances between the rows of ``embeddings`` (B, D) -> (B, B).

    ``d_ij = sqrt(||x_i||^2 + ||x_j||^2 - 2 x_i.x_j + eps)``: the epsilon sits inside the square root
    so that the gradient stays finite for identical embeddings (d/ds sqrt(s) is infinite at s = 0).
    The diagonal is exactly ``sqrt(eps)``. With ``squared=True`` the squared distance is returned
    (no epsilon needed). Half-precision inputs are computed in float32 (autocast off).
    Precision: the expanded form costs O(B^2) memory instead of O(B^2 D) but loses about
    ``1e-7 * ||x||^2`` of absolute accuracy on squared distances in float32 (clamped at 0), which
    matters only for nearly identical embeddings of large norm.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape (B, D), got {tuple(embeddings.shape)}")
    x = embeddings if embeddings.dtype in (torch.float32, torch.float64) else embeddings.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        squared_norms = (x * x).sum(dim=1)
        squared_dist = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
        # rounding can leave small negatives, and non-zeros on the diagonal
        squared_dist = squared_dist.clamp_min(0.0)
        diagonal = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        squared_dist = squared_dist.masked_fill(diagonal, 0.0)
        if squared:
            return squared_dist
        return torch.sqrt(squared_dist + eps)


def _label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_positive, is_negative), both (B, B) bool: same label except oneself / different label."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    itself = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~itself, ~same


def _check_inputs(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2 or labels.reshape(-1).shape[0] != embeddings.shape[0]:
        raise ValueError(f"embeddings (B, D) and labels (B,) disagree: {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError("labels must be integers (identity ids), got a floating-point tensor")


def _triplet_terms(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Hinge ``relu(d_ap - d_an + margin)`` or, for ``margin=None``, soft margin
    ``softplus(d_ap - d_an)`` (Hermans et al. 2017, eq. 5 and the soft-margin variant)."""
    if margin is None:
        return F.softplus(d_ap - d_an)
    return F.relu(d_ap - d_an + margin)


def _zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph (DDP expects every parameter to get a gradient)."""
    return (embeddings * 0).sum()


def _stats(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float | None,
           semi_hard_fraction: torch.Tensor | None = None) -> TripletStats:
    with torch.no_grad():
        d_ap, d_an = d_ap.detach(), d_an.detach()
        count = torch.tensor(d_ap.numel(), device=d_ap.device)
        zero = d_ap.new_zeros(())
        if d_ap.numel() == 0:
            return TripletStats(count, zero, zero, zero, semi_hard_fraction)
        active = (d_ap - d_an + (0.0 if margin is None else margin)) > 0
        return TripletStats(count, active.to(d_ap.dtype).mean(), d_ap.mean(), d_an.mean(),
                            semi_hard_fraction)


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                            margin: float | None = None, squared: bool = False,
                            eps: float = 1e-12) -> tuple[torch.Tensor, TripletStats]:
    """Batch hard (Hermans et al. 2017, eq. 5): for every anchor, its farthest positive and its
    nearest negative in the batch; ``mean_a l(max_p d_ap - min_n d_an)`` with the hinge
    (``margin`` a float) or the soft margin (``margin=None``).

    Anchors with no positive (an identity with one image in the batch) or no negative (one identity
    in the whole batch) are excluded from the mean; if no anchor remains the loss is an exact zero
    still connected to the graph. The gradient flows through the selected distances only.
    """
    _check_inputs(embeddings, labels)
    distances = pairwise_distances(embeddings, squared=squared, eps=eps)
    is_positive, is_negative = _label_masks(labels)
    has_triplet = is_positive.any(dim=1) & is_negative.any(dim=1)
    with torch.no_grad():
        hardest_positive = distances.masked_fill(~is_positive, float("-inf")).argmax(dim=1)
        hardest_negative = distances.masked_fill(~is_negative, float("inf")).argmin(dim=1)
    anchors = torch.nonzero(has_triplet, as_tuple=True)[0]
    d_ap = distances[anchors, hardest_positive[anchors]]
    d_an = distances[anchors, hardest_negative[anchors]]
    stats = _stats(d_ap, d_an, margin)
    if anchors.numel() == 0:
        return _zero_loss(embeddings), stats
    return _triplet_terms(d_ap, d_an, margin).mean(), stats


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                           margin: float | None = 0.2, squared: bool = False,
                           eps: float = 1e-12) -> tuple[torch.Tensor, TripletStats]:
    """Batch all (Hermans et al. 2017, eq. 4): every valid triplet (a, p, n) of the batch.

    Hinge (``margin`` a float): the mean over the triplets whose loss is positive ("BA not-0"; 0 when
    none is). Soft margin (``margin=None``): softplus is positive everywhere, so the mean over all
    valid triplets. A batch without a valid triplet gives an exact zero connected to the graph.
    """
    _check_inputs(embeddings, labels)
    distances = pairwise_distances(embeddings, squared=squared, eps=eps)
    is_positive, is_negative = _label_masks(labels)
    is_triplet = is_positive[:, :, None] & is_negative[:, None, :]  # indexed [a, p, n]
    anchors, positives, negatives = torch.nonzero(is_triplet, as_tuple=True)
    d_ap = distances[anchors, positives]
    d_an = distances[anchors, negatives]
    stats = _stats(d_ap, d_an, margin)
    losses = _triplet_terms(d_ap, d_an, margin)
    if margin is not None:
        losses = losses[losses > 0]
    if losses.numel() == 0:
        return _zero_loss(embeddings), stats
    return losses.mean(), stats


def semi_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                           squared: bool = False,
                           eps: float = 1e-12) -> tuple[torch.Tensor, TripletStats]:
    """FaceNet semi-hard (Schroff et al. 2015, eq. 1 with the semi-hard selection of sec. 3.2).

    Every anchor-positive pair (a, p) of the batch is used. Its negative is the hardest semi-hard
    one: the smallest d_an among the negatives with ``d_ap < d_an < d_ap + margin``. When the pair
    has no semi-hard negative, the easiest negative (largest d_an) is used instead: if some negative
    lies at ``d_an >= d_ap + margin`` that triplet has zero loss (the pair is already satisfied);
    if every negative is at ``d_an <= d_ap`` the least hard of them gives a positive loss, so a
    collapsed embedding still gets a gradient. The loss is ``relu(d_ap - d_an + margin)`` averaged
    over all anchor-positive pairs whose anchor has at least one negative (zero losses included).
    """
    if margin is None or margin <= 0:
        raise ValueError(f"semi-hard mining needs a positive margin, got {margin!r}")
    _check_inputs(embeddings, labels)
    distances = pairwise_distances(embeddings, squared=squared, eps=eps)
    is_positive, is_negative = _label_masks(labels)
    is_pair = is_positive & is_negative.any(dim=1, keepdim=True)
    anchors, positives = torch.nonzero(is_pair, as_tuple=True)
    with torch.no_grad():
        d_ap_all = distances[anchors, positives][:, None]  # (pairs, 1)
        d_an_all = distances[anchors]  # (pairs, B)
        negative = is_negative[anchors]
        semi_hard = negative & (d_an_all > d_ap_all) & (d_an_all < d_ap_all + margin)
        has_semi_hard = semi_hard.any(dim=1)
        hardest_semi_hard = d_an_all.masked_fill(~semi_hard, float("inf")).argmin(dim=1)
        easiest = d_an_all.masked_fill(~negative, float("-inf")).argmax(dim=1)
        negatives = torch.where(has_semi_hard, hardest_semi_hard, easiest)
        semi_hard_fraction = (has_semi_hard.to(distances.dtype).mean() if anchors.numel()
                              else distances.new_zeros(()))
    d_ap = distances[anchors, positives]
    d_an = distances[anchors, negatives]
    stats = _stats(d_ap, d_an, margin, semi_hard_fraction.detach())
    if anchors.numel() == 0:
        return _zero_loss(embeddings), stats
    return _triplet_terms(d_ap, d_an, margin).mean(), stats


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, mining: str = "batch_hard",
                 margin: float | None = None, squared: bool = False,
                 eps: float = 1e-12) -> tuple[torch.Tensor, TripletStats]:
    """One entry point for the three strategies; see the functions above for each one's rule."""
    if mining == "batch_hard":
        return batch_hard_triplet_loss(embeddings, labels, margin, squared, eps)
    if mining == "batch_all":
        return batch_all_triplet_loss(embeddings, labels, margin, squared, eps)
    if mining == "semi_hard":
        return semi_hard_triplet_loss(embeddings, labels, margin, squared, eps)
    raise ValueError(f"unknown triplet mining {mining!r}; expected one of {MINING_STRATEGIES}")


class TripletLoss(torch.nn.Module):
    """Config-friendly triplet loss: ``TripletLoss(mining, margin, squared)(embeddings, labels)``.

    ``mining``: "batch_hard" | "batch_all" | "semi_hard"; ``margin``: a float for the hinge, ``None``
    for the soft margin (batch hard only, ``kinds.check_triplet``); ``squared``: squared Euclidean distances.
    ``forward`` returns the loss and keeps the mining statistics of that call in ``last_stats``.
    """

    def __init__(self, mining: str = "batch_hard", margin: float | None = None,
                 squared: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        check_triplet(mining, margin)
        self.mining = mining
        self.margin = margin
        self.squared = squared
        self.eps = eps
        self.last_stats: TripletStats | None = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, self.last_stats = triplet_loss(embeddings, labels, self.mining, self.margin,
                                             self.squared, self.eps)
        return loss

    def extra_repr(self) -> str:
        return f"mining={self.mining!r}, margin={self.margin}, squared={self.squared}"
