"""NMS against a brute-force greedy loop (ties, duplicates, groups, both overlap modes) and by hand."""
import pytest
import torch

from modules.detection.nms import batched_nms, nms, pairwise_overlap


def overlap_by_hand(a: list[float], b: list[float], mode: str) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    denominator = area_a + area_b - inter if mode == "union" else min(area_a, area_b)
    return inter / denominator if denominator > 0 else 0.0


def greedy_by_hand(boxes, scores, groups, threshold, mode) -> list[int]:
    """The textbook loop: visit by score (ties: lower index), keep a box unless a kept box of its group
    overlaps it by more than the threshold; result by score, ties by index."""
    boxes, scores, groups = boxes.tolist(), scores.tolist(), groups.tolist()
    visit = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in visit:
        if all(groups[k] != groups[i] or overlap_by_hand(boxes[k], boxes[i], mode) <= threshold for k in kept):
            kept.append(i)
    return kept


def random_boxes(generator: torch.Generator, count: int, grid: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes on a coarse grid (many exact ties in overlap), a few exact duplicates, scores from 5 values."""
    xy = (torch.rand(count, 2, generator=generator) * 40 / grid).round() * grid
    wh = (torch.rand(count, 2, generator=generator) * 20 / grid).round() * grid + grid
    boxes = torch.cat([xy, xy + wh], dim=1)
    duplicates = torch.randint(0, count, (count // 5,), generator=generator)
    boxes[torch.randint(0, count, (count // 5,), generator=generator)] = boxes[duplicates]
    scores = torch.randint(0, 5, (count,), generator=generator).float() / 4
    return boxes, scores


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_nms_matches_brute_force_with_ties_and_duplicates(mode, threshold):
    generator = torch.Generator().manual_seed(int(threshold * 10) + (mode == "min"))
    for trial in range(8):
        count = [1, 2, 7, 60, 150][trial % 5]
        boxes, scores = random_boxes(generator, count, grid=[1.0, 2.5][trial % 2])
        groups = torch.randint(0, 3, (count,), generator=generator)
        assert nms(boxes, scores, threshold, mode).tolist() == greedy_by_hand(
            boxes, scores, torch.zeros(count, dtype=torch.long), threshold, mode)
        assert batched_nms(boxes, scores, groups, threshold, mode).tolist() == greedy_by_hand(
            boxes, scores, groups, threshold, mode)


def test_nms_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10], [2, 2, 6, 6]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.9, 0.8])
    # 1 (0.95) first; 0 and 3 (IoU 90/110 = 0.82 with 1) go; 4 (IoU 16/100 with 1) stays under union, goes
    # under "min" (inside box 1: 16 / 16); 2 overlaps nothing
    assert nms(boxes, scores, 0.7).tolist() == [1, 4, 2]
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [1, 2]
    # equal scores: the lower index wins (0 before its duplicate 3)
    assert nms(boxes[[0, 3]], torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]
    assert nms(boxes[[3, 0]], torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]
    # groups never suppress each other; the result is by score over all groups
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0, 0]), 0.7).tolist() == [1, 0, 4, 2]


def test_long_suppression_chain_needs_many_rounds():
    """Boxes 1 px apart with falling scores: each overlaps its neighbours only, so the greedy result
    alternates kept / dropped down a chain as long as the row (the fixed point needs ~N rounds)."""
    count = 40
    x = torch.arange(count, dtype=torch.float32) * 4
    boxes = torch.stack([x, torch.zeros(count), x + 10, torch.full((count,), 10.0)], dim=1)  # IoU(k, k+1) = 0.43
    scores = torch.linspace(1, 0, count)
    expected = greedy_by_hand(boxes, scores, torch.zeros(count, dtype=torch.long), 0.4, "union")
    assert nms(boxes, scores, 0.4).tolist() == expected
    assert expected == list(range(0, count, 2))


def test_overlap_modes_by_hand_and_empty_inputs():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [2, 2, 4, 4], [3, 3, 3, 8]])
    assert torch.allclose(pairwise_overlap(a, b, "union"), torch.tensor([[50 / 150, 4 / 100, 0.0]]))
    assert torch.allclose(pairwise_overlap(a, b, "min"), torch.tensor([[50 / 100, 1.0, 0.0]]))
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).tolist() == []
    with pytest.raises(ValueError, match="mode"):
        nms(a, torch.ones(1), 0.5, mode="max")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nms_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(3)
    boxes, scores = random_boxes(generator, 500, grid=1.0)
    groups = torch.randint(0, 4, (500,), generator=generator)
    for mode in ("union", "min"):
        cpu = batched_nms(boxes, scores, groups, 0.5, mode)
        cuda = batched_nms(boxes.cuda(), scores.cuda(), groups.cuda(), 0.5, mode)
        assert cuda.device.type == "cuda" and cuda.cpu().tolist() == cpu.tolist()
