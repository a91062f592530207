"""The margin-softmax recognizer: loss against pytorch-metric-learning, label errors, configs,
the lr recipe, a tiny `visage fit`, `visage export` and `visage test` on an insightface .bin."""
from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

from datamodules.converters.verification_bin import verification_pairs_from_split, write_verification_bin
from datamodules.synthetic import cache_dir
from datamodules.synthetic_faces import synthetic_faces_name
from modules.losses.partial_fc import LabelError
from modules.nets.iresnet import iresnet50, iresnet_tiny
from modules.embedding_eval import PairSet
from modules.pictures import hardest_pairs_picture
from modules.recognizer import FaceRecognizer
from modules.schedules import SampleSchedule
from modules.recognizer_config import validate_recognizer
from trainers.cli import main as visage
from configs.schema import ConfigError, to_plain
from trainers.config import load_config
from trainers.run_dir import RUN_DIR_ENV

EXPERIMENT = "configs/recognizer/arcface.yaml"
# unit tests call the module's steps without a Trainer, where self.log() warns and does nothing
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
TINY_SYNTH = {"identities": 40, "val_identities": 12, "per_identity": 6, "size": 32}


def tiny(root) -> list[str]:
    """A tiny but real run: synthetic faces, one process, a few steps."""
    return [*(f"data.synthetic.{k}={v}" for k, v in TINY_SYNTH.items()), "data.image_size=32",
            "data.batch_size=16", "data.batches_per_epoch=4", "data.val_pairs=200", "data.num_workers=1",
            "model.embedding_size=32", "model.partial_fc.sample_rate=0.5", "trainer.devices=1", "trainer.strategy=auto",
            "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "logging.wandb=disabled", f"run.root={root}"]


def recognizer(overrides=(), num_classes: int = 10) -> FaceRecognizer:
    cfg = load_config(EXPERIMENT, ["data.image_size=32", "model.embedding_size=16", *overrides])
    validate_recognizer(cfg)
    torch.manual_seed(0)
    module = FaceRecognizer(to_plain(cfg))
    module.build_classifier(num_classes)
    return module


def batch(size: int = 6, labels=None, image_size: int = 32) -> dict:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(size) % 10 if labels is None else labels
    size = len(labels)
    return {"image": torch.randn(size, 3, image_size, image_size, generator=generator), "label": labels,
            "key": [f"shard-0/id{int(i):05d}_{n:03d}" for n, i in enumerate(labels.tolist())]}


# -- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("margin, reference", [
    (["model.margin.kind=arcface", "model.margin.m2=0.5"],
     lambda C, D: ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=64)),
    (["model.margin.kind=cosface", "model.margin.m2=null", "model.margin.m3=0.35"],
     lambda C, D: CosFaceLoss(C, D, margin=0.35, scale=64)),
])
def test_training_loss_and_classifier_gradient_match_pytorch_metric_learning(margin, reference):
    module = recognizer([*margin, "model.partial_fc.sample_rate=1.0"])
    data = batch()
    loss = module.training_step(data, 0)
    loss.backward()
    pml = reference(10, 16)
    with torch.no_grad():
        pml.W.copy_(module.partial_fc.weight.detach().t())
        embeddings = module(data["image"])
    expected = pml(embeddings, data["label"])
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    scale = pml.W.grad.abs().max().item()  # gradients of ~200: fp32 rounding is ~1e-6 of the largest
    torch.testing.assert_close(module.partial_fc.weight.grad, pml.W.grad.t(), rtol=1e-4, atol=1e-6 * scale)
    assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)


def test_combined_margin_target_logit_is_the_papers_formula():
    cfg = load_config("configs/recognizer/combined.yaml", ["data.image_size=32", "model.embedding_size=16"])
    validate_recognizer(cfg)
    module = FaceRecognizer(to_plain(cfg))
    module.build_classifier(10)
    head = module.partial_fc.margin_head
    assert (head.kind, head.m1, head.m2, head.m3) == ("combined", 1.0, 0.3, 0.2)
    cosine = torch.tensor([[0.6, 0.1, -0.2]])
    logits = head(cosine.clone(), torch.tensor([0]))
    s = cfg.model.margin.s
    assert logits[0, 0].item() == pytest.approx(s * (math.cos(math.acos(0.6) + 0.3) - 0.2), rel=1e-5)
    assert logits[0, 1:].tolist() == pytest.approx([s * 0.1, s * -0.2], rel=1e-6)


def test_center_loss_adds_weighted_squared_distance_to_centres():
    module = recognizer(["model.center_loss.weight=0.01", "model.partial_fc.sample_rate=1.0"])
    data = batch()
    total = module.training_step(data, 0)
    with torch.no_grad():
        embeddings = module(data["image"])
        margin_only = module.partial_fc(embeddings, data["label"])
        centres = module.center_loss.centers[data["label"]]
    center = 0.5 * ((embeddings - centres) ** 2).sum(dim=1).mean()  # Wen et al. eq. 2, batch mean
    torch.testing.assert_close(total.detach(), margin_only + 0.01 * center, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_logits_and_loss_in_float32_with_channels_last():
    module = recognizer(["model.channels_last=true"])
    data = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = module(data["image"])
        shard = module.partial_fc.shard_logits(embeddings, data["label"])
        loss = module.training_step(data, 0)
    assert embeddings.dtype == torch.bfloat16
    assert shard.logits.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert module.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_backbone_sees_the_configured_layout_whatever_the_batch_layout(channels_last):
    module = recognizer([f"model.channels_last={str(channels_last).lower()}"])
    seen = []
    module.backbone.register_forward_pre_hook(lambda net, args: seen.append(args[0]))
    images = batch()["image"]
    for layout in (torch.contiguous_format, torch.channels_last):  # the loaders hand over channels-last
        module(images.contiguous(memory_format=layout))
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    assert all(x.is_contiguous(memory_format=wanted) and torch.equal(x, images) for x in seen) and len(seen) == 2


# -- label errors -------------------------------------------------------------------------------
def test_out_of_range_label_error_names_the_sample_key():
    module = recognizer()
    data = batch(labels=torch.tensor([0, 1, 12, 3]))
    with pytest.raises(LabelError) as err:
        module.training_step(data, 0)
    assert "shard-0/id00012_002" in str(err.value) and "[0, 10)" in str(err.value)
    assert "id00001" not in str(err.value)


def test_float_labels_error_names_the_keys():
    module = recognizer()
    data = batch(labels=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(LabelError) as err:
        module.training_step(data, 0)
    assert "integer" in str(err.value) and "shard-0/id00000_000" in str(err.value)


# -- gradient clipping and the lr recipe --------------------------------------------------------
def test_gradient_clipping_touches_the_backbone_only():
    module = recognizer(["optim.backbone_clip_norm=1e-3", "model.partial_fc.sample_rate=1.0"])
    module.training_step(batch(), 0).backward()
    classifier_grad = module.partial_fc.weight.grad.clone()
    norm_before = torch.cat([p.grad.flatten() for p in module.backbone.parameters() if p.grad is not None]).norm()
    assert norm_before > 1e-2
    module.configure_gradient_clipping(None)
    norm_after = torch.cat([p.grad.flatten() for p in module.backbone.parameters() if p.grad is not None]).norm()
    assert norm_after.item() == pytest.approx(1e-3, rel=1e-3)
    torch.testing.assert_close(module.partial_fc.weight.grad, classifier_grad, rtol=0, atol=0)


def test_schedule_follows_samples_across_a_change_of_global_batch():
    schedule = SampleSchedule("warmup_poly", total_steps=100, warmup_steps=10, power=1.0, planned_global_batch=128)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(40) == pytest.approx(1 - 30 / 90)
    schedule.rebase(40, global_batch=256)       # twice the samples per step from step 40 on
    assert schedule(40) == pytest.approx(1 - 30 / 90)
    assert schedule(41) == pytest.approx(1 - 32 / 90)
    assert schedule(70) == pytest.approx(0.0)   # 40 + 30 double steps = the 100 planned steps
    state = dict(schedule.__dict__)
    assert all(isinstance(v, (int, float, str)) for v in state.values())  # plain numbers in checkpoints


# -- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("arcface", "arcface"), ("cosface", "cosface"),
                                        ("sphereface", "sphereface"), ("combined", "combined")])
def test_bundled_configs_load_validate_and_build(name, kind):
    cfg = load_config(f"configs/recognizer/{name}.yaml")
    validate_recognizer(cfg)
    assert cfg.task == "recognizer" and cfg.model.margin.kind == kind
    assert cfg.data.sampler.kind == "plain" and cfg.trainer.devices == 2
    assert cfg.data.synthetic.identities >= 1000
    module = FaceRecognizer(to_plain(cfg))
    module.build_classifier(cfg.data.synthetic.identities)
    assert module.partial_fc.margin_head.kind == kind


@pytest.mark.parametrize("overrides, key", [
    (["model.backbone=resnet9000"], "model.backbone"),
    (["model.margin.kind=magface"], "model.margin.kind"),
    (["model.margin.kind=cosface", "model.margin.m2=0.2"], "model.margin.kind"),
    (["model.margin.kind=sphereface", "model.margin.m2=0.5"], "model.margin.m2"),
    (["model.partial_fc.sample_rate=0"], "model.partial_fc.sample_rate"),
    (["model.center_loss.weight=-1"], "model.center_loss.weight"),
    (["optim.lr_scaling=cubic"], "optim.lr_scaling"),
    (["data.sampler.kind=pk", "data.batch_size=64"], "data.sampler.kind"),
    (["data.verification=[/no/such/lfw.bin]"], "data.verification[0]"),
    (["model.num_classes=0"], "model.num_classes"),
])
def test_bad_recognizer_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate_recognizer(load_config(EXPERIMENT, overrides))
    assert str(err.value).startswith(key), str(err.value)


# -- a tiny fit, export, test on a .bin ---------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    launcher_run_dir = os.environ.get(RUN_DIR_ENV)
    assert visage(["fit", EXPERIMENT, *tiny(root)]) == 0
    # the run directory handed to this run's ranks does not leak into later commands of this process
    assert os.environ.get(RUN_DIR_ENV) == launcher_run_dir
    return root, root / "recognizer-arcface" / "local-0"


def test_fit_trains_reports_and_checkpoints_the_full_classifier(fitted):
    _, run_dir = fitted
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 8
    metrics = summary["metrics"]
    assert 0.5 <= metrics["val/accuracy"] <= 1.0 and metrics["val/accuracy_std"] >= 0
    assert {"val/tar@far=1e-03", "val/tar@far=1e-04", "val/rank1"} <= set(metrics)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain containers only
    assert last["state_dict"]["partial_fc.weight"].shape == (40, 32)
    momentum = last["recognizer"]["classifier_optimizer_state"]["momentum_buffer"]
    assert momentum.shape == (40, 32) and momentum.abs().sum() > 0
    # lr = 0.2 x global batch (16) / base batch (64), the linear rule; one base lr per parameter group
    assert last["lr_schedulers"][0]["base_lrs"] == pytest.approx([0.2 * 16 / 64] * 2)
    for name in ("hardest-pairs-val", "samples", "retrieval", "roc"):
        image = cv2.imread(str(run_dir / "pictures" / f"{name}-latest.png"))
        assert image is not None and image.shape[0] > 50, name


def test_export_writes_a_backbone_that_loads_strictly(fitted, tmp_path):
    _, run_dir = fitted
    out = tmp_path / "backbone.pt"
    assert visage(["export", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith(("partial_fc", "backbone.")) for k in state)
    net = iresnet_tiny(num_features=32, input_size=32)
    net.load_state_dict(state, strict=True)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    module = FaceRecognizer(checkpoint["hyper_parameters"]["config"])
    module.build_classifier(40)
    module.load_state_dict(checkpoint["state_dict"])
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(net.eval()(images), module.eval()(images))


def test_an_exported_backbone_fine_tunes_a_new_recognizer(fitted, tmp_path):
    """export -> finetune.from: every backbone tensor loads (prefix found), the new classifier stays fresh."""
    from trainers.finetune import load_pretrained  # noqa: PLC0415

    _, run_dir = fitted
    out = tmp_path / "backbone.pt"
    assert visage(["export", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    module = recognizer(["model.embedding_size=32"], num_classes=7)
    report = load_pretrained(module, out)
    backbone_keys = {f"backbone.{k}" for k in torch.load(out, weights_only=True)}
    assert report.prefix_map == {"": "backbone."} and set(report.loaded) == backbone_keys
    assert report.missing == ["partial_fc.weight"] and not report.unexpected and not report.mismatched
    exported = torch.load(out, weights_only=True)
    torch.testing.assert_close(module.backbone.state_dict()["conv1.weight"], exported["conv1.weight"])


def test_export_of_iresnet50_has_insightface_names(tmp_path):
    cfg = load_config(EXPERIMENT, ["model.backbone=iresnet50", "model.embedding_size=512", "data.image_size=112"])
    module = FaceRecognizer(to_plain(cfg))
    module.build_classifier(4)
    ckpt = tmp_path / "r50.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": to_plain(cfg)}}, ckpt)
    assert visage(["export", str(ckpt), "--out", str(tmp_path / "r50.pt")]) == 0
    state = torch.load(tmp_path / "r50.pt", weights_only=True)
    assert {"conv1.weight", "prelu.weight", "layer3.13.bn3.running_var", "fc.weight", "features.weight"} <= set(state)
    iresnet50().load_state_dict(state, strict=True)  # insightface's r50: 112x112, 512-d


def _embed(net, images: list[np.ndarray], size: int) -> np.ndarray:
    """The insightface protocol by hand: (x - 127.5) / 128, image + mirror summed, L2-normalised."""
    x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)
    x = torch.from_numpy((x - 127.5) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        emb = (net(x) + net(torch.flip(x, dims=[3]))).numpy().astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _ten_fold_accuracy(distances: np.ndarray, same: np.ndarray) -> float:
    """LFW protocol: 10 contiguous folds, best threshold of 0..4 step 0.01 on 9 folds, accuracy on the 10th."""
    folds = np.array_split(np.arange(len(distances)), 10)
    grid = np.arange(0.0, 4.0, 0.01)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(distances)), test)
        train_acc = [np.mean((distances[train] < t) == same[train]) for t in grid]
        best = grid[int(np.argmax(train_acc))]
        accuracies.append(np.mean((distances[test] < best) == same[test]))
    return float(np.mean(accuracies))


def test_visage_test_evaluates_an_insightface_bin(fitted, tmp_path, capsys):
    root, run_dir = fitted
    dataset = cache_dir() / synthetic_faces_name({**TINY_SYNTH, "difficulty": 0.5, "seed": 0})
    images, is_same = verification_pairs_from_split(dataset / "val", 60, seed=3)
    bin_path = write_verification_bin(tmp_path / "synthlfw.bin", images, is_same)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert visage(["test", EXPERIMENT, "--ckpt", str(ckpt), *tiny(root), f"data.verification=[{bin_path}]",
                   "run.id=bin-test"]) == 0
    metrics = json.loads((run_dir / "bin-test" / "metrics.json").read_text())["metrics"]  # beside the run
    assert {"test/accuracy", "test/synthlfw/accuracy", "test/synthlfw/accuracy_std",
            "test/synthlfw/tar@far=1e-03", "test/synthlfw/tar@far=1e-04"} <= set(metrics)
    net = iresnet_tiny(num_features=32, input_size=32)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    net.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
               for b in images]
    emb = _embed(net.eval(), decoded, 32)
    distances = ((emb[0::2] - emb[1::2]) ** 2).sum(axis=1)
    assert metrics["test/synthlfw/accuracy"] == pytest.approx(_ten_fold_accuracy(distances, is_same), abs=1e-6)


def test_a_checkpoint_whose_classifier_does_not_fit_is_one_line(fitted, capsys):
    """The classifier is built once the data is known (after the weights check): Lightning's restore
    refuses it, and that is one line naming the checkpoint and the override, exit code 2."""
    _, run_dir = fitted
    code = visage(["validate", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "model.num_classes=41"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("visage: config error: --ckpt: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "does not fit the model" in lines[0] and "the command line changes model.num_classes" in lines[0]


def test_hardest_pairs_picture_shows_closest_negatives_and_farthest_positives():
    tiles = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(8)]
    pairs = PairSet("val", 0, np.array([0, 2, 4, 6]), np.array([1, 3, 5, 7]), np.array([True, False, True, False]),
                    np.array([0.2, 1.5, 1.9, 0.4]))
    shown = []
    picture = hardest_pairs_picture(pairs, lambda i: shown.append(i) or tiles[i], count=1)
    assert shown == [6, 7, 4, 5]  # closest different pair (0.4), then farthest same pair (1.9)
    assert picture.dtype == np.uint8 and picture.ndim == 3


def test_verification_table_has_a_row_per_set_and_a_column_per_far():
    from modules.embedding_eval import verification_table  # noqa: PLC0415

    metrics = {"val/accuracy": 0.95, "val/accuracy_std": 0.01, "val/tar@far=1e-03": 0.7, "val/tar@far=1e-04": 0.5,
               "val/lfw/accuracy": 0.9, "val/lfw/accuracy_std": 0.02, "val/lfw/tar@far=1e-03": 0.3,
               "val/lfw/tar@far=1e-04": 0.2, "val/rank1": 0.8, "train/loss": 3.0}
    lines = verification_table(metrics).splitlines()
    assert [line.split() for line in lines] == [
        ["set", "accuracy", "(10-fold)", "TAR@FAR=1e-03", "TAR@FAR=1e-04"],
        ["val", "0.9500", "+-", "0.0100", "0.7000", "0.5000"],
        ["val/lfw", "0.9000", "+-", "0.0200", "0.3000", "0.2000"],
        ["val/rank1=0.8000"]]
    assert lines[1].index("0.7000") == lines[0].index("TAR@FAR=1e-03")  # values sit under their column
