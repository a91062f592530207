"""The MTCNN stage loss: a hand-computed batch, each term on its crop kinds only, OHEM's exact top-k."""
import math

import pytest
import torch

from datamodules.codecs.crop_kinds import LANDMARK, NEGATIVE, PART, POSITIVE
from modules.losses.mtcnn_loss import (LOSS_WEIGHTS, box_loss, face_loss, hard_sample_count, landmark_loss,
                                       stage_loss)


def batch(n: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    kinds = torch.tensor([NEGATIVE, POSITIVE, PART, LANDMARK] * (n // 4))
    return (torch.randn(n, 2, generator=generator), torch.randn(n, 4, generator=generator),
            torch.randn(n, 10, generator=generator), kinds, torch.randn(n, 4, generator=generator),
            torch.randn(n, 10, generator=generator))


def test_hand_computed_batch():
    face = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [5.0, 1.0], [2.0, 2.0]])  # neg, pos, part, landmark
    kinds = torch.tensor([NEGATIVE, POSITIVE, PART, LANDMARK])
    boxes = torch.tensor([[9.0] * 4, [0.5, 0, 0, 0], [0, 1, 1, 0], [9.0] * 4])
    box_targets = torch.zeros(4, 4)
    landmarks = torch.zeros(4, 10)
    landmark_targets = torch.zeros(4, 10)
    landmark_targets[3, :2] = torch.tensor([3.0, 4.0])
    loss = stage_loss(face, boxes, landmarks, kinds, box_targets, landmark_targets, weights=(1.0, 0.5, 0.5),
                      ohem_ratio=1.0)
    # face: negative with p = 1/2 -> log 2; positive with p = 3/4 -> log(4/3); mean of the two
    assert loss.face.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    # box: positive 0.25, part 2 -> mean 1.125 (squared distance summed over the 4 offsets, eq. 2)
    assert loss.box.item() == pytest.approx(1.125)
    assert loss.landmark.item() == pytest.approx(25.0)  # 3^2 + 4^2, the one landmark crop
    assert loss.total.item() == pytest.approx(loss.face.item() + 0.5 * 1.125 + 0.5 * 25.0)
    onet = stage_loss(face, boxes, landmarks, kinds, box_targets, landmark_targets, LOSS_WEIGHTS["onet"], 1.0)
    assert onet.total.item() == pytest.approx(loss.face.item() + 0.5 * 1.125 + 1.0 * 25.0)
    assert LOSS_WEIGHTS == {"pnet": (1.0, 0.5, 0.5), "rnet": (1.0, 0.5, 0.5), "onet": (1.0, 0.5, 1.0)}


@pytest.mark.parametrize("term", ["face", "box", "landmark"])
def test_each_term_ignores_the_other_kinds(term):
    face, boxes, landmarks, kinds, box_targets, landmark_targets = batch()
    used = {"face": (NEGATIVE, POSITIVE), "box": (POSITIVE, PART), "landmark": (LANDMARK,)}[term]
    before = stage_loss(face, boxes, landmarks, kinds, box_targets, landmark_targets)
    unused = ~torch.isin(kinds, torch.tensor(used))
    changed = [t.clone() for t in (face, boxes, landmarks, box_targets, landmark_targets)]
    for tensor in changed:
        tensor[unused] += torch.arange(tensor.shape[1]) * 3.0 + 1  # uneven: moves softmax too
    after = stage_loss(changed[0], changed[1], changed[2], kinds, changed[3], changed[4])
    assert getattr(after, term).item() == pytest.approx(getattr(before, term).item())
    # and it does depend on its own kinds' outputs
    own = [t.clone() for t in (face, boxes, landmarks)]
    for tensor in own:
        tensor[~unused] += torch.arange(tensor.shape[1]) * 3.0 + 1
    assert getattr(stage_loss(*own, kinds, box_targets, landmark_targets), term).item() != pytest.approx(
        getattr(before, term).item())


def test_ohem_keeps_exactly_the_hardest_top_fraction():
    torch.manual_seed(0)
    logits = torch.randn(20, 2, requires_grad=True)
    kinds = torch.tensor([NEGATIVE, POSITIVE] * 8 + [PART, LANDMARK] * 2)  # 16 classified crops
    per_crop = torch.nn.functional.cross_entropy(logits[:16], (kinds[:16] == POSITIVE).long(), reduction="none")
    keep = math.ceil(0.7 * 16)  # 11.2 -> 12
    hardest = sorted(range(16), key=lambda i: -per_crop[i].item())[:keep]
    loss = face_loss(logits, kinds, ohem_ratio=0.7)
    assert loss.item() == pytest.approx(sum(per_crop[i].item() for i in hardest) / keep)
    loss.backward()
    with_gradient = {i for i in range(20) if logits.grad[i].abs().sum() > 0}
    assert with_gradient == set(hardest)
    assert face_loss(logits, kinds, ohem_ratio=1.0).item() == pytest.approx(per_crop.mean().item())


def test_hard_sample_count_rounds_up():
    assert [hard_sample_count(n, 0.7) for n in (1, 2, 3, 10, 16, 100, 101)] == [1, 2, 3, 7, 12, 70, 71]
    assert hard_sample_count(10, 1.0) == 10 and hard_sample_count(10, 0.05) == 1
    with pytest.raises(ValueError):
        hard_sample_count(10, 0.0)


def test_terms_without_their_crops_are_zero_and_keep_every_gradient_defined():
    net_out = [torch.randn(4, 2, 1, 1, requires_grad=True), torch.randn(4, 4, 1, 1, requires_grad=True),
               torch.randn(4, 10, 1, 1, requires_grad=True)]  # P-Net's 1x1 maps are accepted
    kinds = torch.full((4,), LANDMARK)
    loss = stage_loss(*net_out, kinds, torch.zeros(4, 4), torch.zeros(4, 5, 2))
    assert loss.face.item() == 0.0 and loss.box.item() == 0.0 and loss.landmark.item() > 0
    loss.total.backward()
    assert all(t.grad is not None for t in net_out)
    assert box_loss(net_out[1], torch.zeros(4, 4), kinds).item() == 0.0
    assert landmark_loss(net_out[2], torch.zeros(4, 10), torch.full((4,), PART)).item() == 0.0
