"""The detector task's parts: the 3:1:1:2 batch mix, flipped crop targets, one stage trained at a time,
the cascade as steps, mining chunks split over ranks, WIDER prediction files."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from configs.schema import to_plain
from datamodules.batchers import KindMixBatcher
from datamodules.codecs.box_offsets import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from datamodules.codecs.crop_kinds import LANDMARK, MIX, NEGATIVE, PART, POSITIVE
from datamodules.detection import MiningChunks, flip_crop_targets
from trainers.config import load_config
from trainers.tasks import TASKS

EXPERIMENT = "configs/detector/mtcnn.yaml"


def crop(kind: int, i: int) -> dict:
    return {"image": torch.zeros(3, 12, 12, dtype=torch.uint8), "kind": kind, "key": f"{kind}-{i}"}


def test_batches_hold_the_mix_exactly_whatever_order_the_stream_brings():
    # a stream of runs of one kind at a time: 300 negatives, then 300 positives, ...
    stream = [crop(kind, i) for kind in (NEGATIVE, POSITIVE, PART, LANDMARK) for i in range(300)]
    batches = list(KindMixBatcher(14, MIX, pool_size=1200)(iter(stream), random.Random(0), batches=6))
    assert len(batches) == 6
    for batch in batches:
        assert Counter(batch["kind"].tolist()) == {NEGATIVE: 6, POSITIVE: 2, PART: 2, LANDMARK: 4}
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys))  # no crop twice


def test_a_stream_short_of_a_kind_still_gives_full_batches():
    stream = [crop(NEGATIVE, i) for i in range(500)] + [crop(POSITIVE, i) for i in range(500)]  # no part, no landmark
    batches = list(KindMixBatcher(14, MIX, pool_size=64)(iter(stream), random.Random(0), batches=5))
    assert len(batches) == 5 and all(len(b["key"]) == 14 for b in batches)


def test_flipped_targets_describe_the_flipped_crop():
    window = np.array([[0.0, 0.0, 40.0, 40.0]])
    box = np.array([[6.0, 8.0, 30.0, 36.0]])
    points = np.array([[[12.0, 15.0], [25.0, 14.0], [18.0, 22.0], [13.0, 30.0], [26.0, 29.0]]])
    offsets = encode_boxes(window, box).numpy()[0]
    fractions = encode_landmarks(window, points).numpy()[0]
    flipped_offsets, flipped_points = flip_crop_targets(offsets, fractions)
    # mirrored by hand: x -> 40 - x; left and right eyes and mouth corners swap
    mirrored_box = [[40.0 - 30.0, 8.0, 40.0 - 6.0, 36.0]]
    mirrored_points = [[40.0 - 25.0, 14.0], [40.0 - 12.0, 15.0], [40.0 - 18.0, 22.0], [40.0 - 26.0, 29.0],
                       [40.0 - 13.0, 30.0]]
    assert np.allclose(decode_boxes(window, flipped_offsets[None]).numpy(), mirrored_box, atol=1e-5)
    assert np.allclose(decode_landmarks(window, flipped_points[None]).numpy()[0], mirrored_points, atol=1e-5)
    again = flip_crop_targets(flipped_offsets, flipped_points)
    assert np.allclose(again[0], offsets) and np.allclose(again[1], fractions)


@pytest.mark.parametrize("chunks, world", [(7, 2), (5, 3), (1, 2)])
def test_mining_chunks_go_to_one_rank_each(chunks, world):
    per_rank = [list(MiningChunks(chunks, rank, world)) for rank in range(world)]
    assert sorted(c for part in per_rank for c in part) == list(range(chunks))


def test_one_stage_trains_the_others_stay_as_they_are():
    from modules.detector import FaceDetector
    cfg = load_config(EXPERIMENT, [*TASKS["detector"].tiny, "model.stage=rnet", "model.weights.pnet=unused.ckpt"])
    module = FaceDetector(to_plain(cfg))
    batch = {"image": torch.randn(8, 3, 24, 24), "kind": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
             "offsets": torch.randn(8, 4) * 0.1, "landmarks": torch.rand(8, 5, 2)}
    module.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in module.rnet.parameters())
    assert all(p.grad is None and not p.requires_grad for p in [*module.pnet.parameters(), *module.onet.parameters()])


def test_the_cascade_is_five_steps_and_a_stage_runs_alone():
    from modules.detector import FaceDetector
    cascade = FaceDetector.steps(to_plain(load_config(EXPERIMENT)))
    assert [(s.name, s.kind) for s in cascade] == [("pnet", "fit"), ("rnet_crops", "predict"), ("rnet", "fit"),
                                                   ("onet_crops", "predict"), ("onet", "fit")]
    onet = cascade[-1].overrides
    assert "model.weights.pnet={pnet_ckpt}" in onet and "model.weights.rnet={rnet_ckpt}" in onet
    assert "data.train_crops={onet_crops}/crops" in onet and "trainer.max_epochs=4" in onet
    assert "data.batch_size=16" in onet  # model.stage_batch_size.onet; P-Net takes data.batch_size
    assert not [o for o in cascade[0].overrides if o.startswith("data.batch_size")]
    # the Haar baseline beside the whole cascade only
    assert [s.name for s in cascade if "model.haar_baseline=false" in s.overrides] == ["pnet", "rnet"]
    assert FaceDetector.steps(to_plain(load_config(EXPERIMENT, ["model.stage=pnet"]))) == []


@pytest.mark.parametrize("overrides, key", [
    (["model.stage=rnet"], "model.weights.pnet"),
    (["model.stage=fnet"], "model.stage"),
    (["model.ohem_ratio=0"], "model.ohem_ratio"),
    (["model.cascade.thresholds=[0.6,0.7,1.5]"], "model.cascade.thresholds"),
    (["model.cascade.factor=1.2"], "model.cascade.factor"),
    (["data.crops.mix.faces=3"], "data.crops.mix.faces"),
    (["model.loss_weights.pnet=[1,0.5]"], "model.loss_weights.pnet"),
    (["data.synthetic.width=[400,300]"], "data.synthetic.width"),
    (["data.predict_on=train"], "data.predict_on"),
    (["model.stage_batch_size.onet=0"], "model.stage_batch_size.onet"),
    (["model.stage_batch_size.fnet=8"], "model.stage_batch_size.fnet"),
])
def test_bad_detector_configs_name_the_key(overrides, key):
    from configs.schema import ConfigError
    with pytest.raises(ConfigError) as err:
        load_config(EXPERIMENT, overrides)
    assert str(err.value).startswith(key), str(err.value)


def test_wider_prediction_files_hold_name_count_and_xywh_score_lines(tmp_path):
    from modules.detection.evaluation import SceneDetections
    from modules.detection.wider_files import write_wider_predictions
    scene = SceneDetections(0, "scene00000001", np.zeros((1, 4)), np.zeros(1), np.array([[10.0, 20.0, 40.0, 60.0]]),
                            np.array([0.9]))
    empty = SceneDetections(1, "scene00000002", np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
    paths = write_wider_predictions(tmp_path, "val", [scene, empty])
    assert paths[0].read_text().splitlines() == ["scene00000001", "1", "10.0 20.0 30.0 40.0 0.9000"]
    assert paths[1].read_text().splitlines() == ["scene00000002", "0"]


def test_stage_weights_from_a_bad_file_are_one_line_errors_naming_the_key(tmp_path):
    from modules.detector import StageChoiceError, stage_weights
    from modules.nets.mtcnn import build_stage_net

    good = tmp_path / "cascade.ckpt"
    pnet = build_stage_net("pnet").state_dict()
    torch.save({"state_dict": {f"pnet.{key}": value for key, value in pnet.items()}}, good)
    assert stage_weights(str(good), "pnet").keys() == pnet.keys()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    cases = [(truncated, "pnet", "cannot be read as a checkpoint"), (good, "rnet", "holds no rnet weights"),
             (tmp_path / "missing.ckpt", "pnet", "does not exist")]
    for path, stage, message in cases:
        with pytest.raises(StageChoiceError, match=f"model.weights.{stage}: .*{message}"):
            stage_weights(str(path), stage)
