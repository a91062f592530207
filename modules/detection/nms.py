"""Greedy non-maximum suppression in plain torch (torchvision cannot be used here), on CPU or GPU.

Greedy NMS keeps the best-scored box, drops every box overlapping it by more than the threshold, and
repeats with the best remaining one. Boxes are visited by score, highest first; equal scores by index,
lowest first, so the result is deterministic. Overlap is the IoU ("union") or the intersection over the
smaller area ("min", used by MTCNN after O-Net, so that a small box inside a bigger one goes too).

No Python loop over boxes: the pairs of boxes that overlap too much (an edge from the better box to the
worse) are found group by group in blocks, and the greedy result is the unique fixed point of

    keep[j] = not any(keep[i] for every edge i -> j),

reached from keep = all-true by repeating that vectorised update (Cluster-NMS, Zheng et al. 2020: after t
rounds every box whose chain of better overlapping boxes is shorter than t is final). The fixed point is
unique because box j's value depends only on boxes visited before it, so it equals the greedy pass.
Boxes are ``(N, 4)`` ``x0, y0, x1, y1`` in continuous coordinates (width = x1 - x0).
"""
from __future__ import annotations

import torch

OVERLAP_MODES = ("union", "min")
PAIRS_PER_BLOCK = 1 << 22  # overlaps computed at once while looking for edges (bounds the memory)


def box_areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_overlap(a: torch.Tensor, b: torch.Tensor, mode: str = "union") -> torch.Tensor:
    """``(..., N, M)`` overlap of boxes ``a`` ``(..., N, 4)`` with boxes ``b`` ``(..., M, 4)``: IoU for
    ``"union"``, intersection / smaller area for ``"min"``; 0 where the denominator is 0."""
    if mode not in OVERLAP_MODES:
        raise ValueError(f"NMS overlap mode must be one of {OVERLAP_MODES}, got {mode!r}")
    low = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    high = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    area_a, area_b = box_areas(a)[..., :, None], box_areas(b)[..., None, :]
    denominator = area_a + area_b - inter if mode == "union" else torch.minimum(area_a, area_b)
    return torch.where(denominator > 0, inter / denominator.clamp(min=1e-12), torch.zeros_like(inter))


def visiting_order(scores: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Indices by group (ascending), then score (descending), then index (ascending)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if groups is not None:
        order = order[torch.sort(groups[order], stable=True).indices]
    return order


def _suppression_edges(boxes: torch.Tensor, counts: torch.Tensor, threshold: float,
                       mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges (better, worse) as positions in ``boxes``, which holds the groups one after another, each
    sorted best first, ``counts[g]`` boxes in group g: pairs of one group overlapping by > threshold.
    Group by group (a loop over images and pyramid levels, not boxes): padding every group to the
    longest would cost groups x longest^2 overlaps where the groups need the sum of their squares."""
    better, worse = [], []
    start = 0
    for count in counts.tolist():
        rows_per_block = max(1, PAIRS_PER_BLOCK // max(1, count))
        group = boxes[start:start + count]
        columns = torch.arange(count, device=boxes.device)
        for first in range(0, count, rows_per_block):
            rows = group[first:first + rows_per_block]
            overlapping = pairwise_overlap(rows, group, mode) > threshold  # (rows, count)
            overlapping &= columns[None, :] > (columns[first:first + len(rows), None])  # only better -> worse
            i, j = overlapping.nonzero(as_tuple=True)
            better.append(start + first + i)
            worse.append(start + j)
        start += count
    return torch.cat(better), torch.cat(worse)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor | None, threshold: float,
                mode: str = "union") -> torch.Tensor:
    """Greedy NMS within each group (boxes of different groups never suppress each other): the kept
    indices into ``boxes``, by score descending (ties: lower index first). ``groups`` ``(N,)`` integer
    labels (image, scale ...), or None for one group."""
    if mode not in OVERLAP_MODES:
        raise ValueError(f"NMS overlap mode must be one of {OVERLAP_MODES}, got {mode!r}")
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = visiting_order(scores, groups)
    if groups is None:
        counts = torch.tensor([len(boxes)], device=boxes.device)
    else:
        counts = torch.unique_consecutive(groups[order], return_counts=True)[1]
    better, worse = _suppression_edges(boxes[order].float(), counts, threshold, mode)
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for _ in range(len(boxes) + 1):  # converges in (longest chain of suppressions + 1) rounds
        suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        suppressed[worse[keep[better]]] = True
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    kept = order[keep].sort().values
    return kept[visiting_order(scores[kept])]  # by score over all groups, ties by index


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy NMS of one set of boxes: the kept indices, by score descending (ties: lower index first)."""
    return batched_nms(boxes, scores, None, threshold, mode)
