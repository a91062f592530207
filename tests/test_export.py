"""`visage export CKPT --format state_dict|torchscript|onnx`: each format gives the checkpoint's outputs.

The checkpoints are written as `visage fit` writes them (state_dict, hyper_parameters.config) from
modules with random weights and BatchNorm statistics; the reference outputs come from the task's
LightningModule loaded with the whole checkpoint, independently of the export code.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from configs.schema import to_plain
from modules.embedder import TripletEmbedder
from modules.nets.backbones import BACKBONES, build_backbone
from modules.recognizer import FaceRecognizer
from trainers.cli import main as visage
from trainers.config import load_config

CONFIGS = {"recognizer": ("configs/recognizer/arcface.yaml", ["model.backbone=iresnet_tiny"]),
           "embedder": ("configs/embedder/triplet.yaml", ["model.width=8", "model.normalize=true"])}
CLASSES = 6


def build(task: str, config: dict):
    if task == "recognizer":
        module = FaceRecognizer(config)
        module.build_classifier(CLASSES)
        return module
    return TripletEmbedder(config)


def write_checkpoint(folder, task: str, name: str = "last.ckpt"):
    path, overrides = CONFIGS[task]
    config = to_plain(load_config(path, [*overrides, "data.image_size=32", "model.embedding_size=16"]))
    torch.manual_seed(3)
    module = build(task, config)
    for layer in module.modules():  # statistics a trained network would have, so eval mode matters
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_(0, 0.1)
            layer.running_var.uniform_(0.5, 1.5)
    checkpoint = folder / "checkpoints" / name
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}, "global_step": 7,
                "pytorch-lightning_version": "2.6.6"}, checkpoint)
    return checkpoint, config


def reference(checkpoint, task: str, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's embedding network's output: the whole module loaded strictly, its network run."""
    saved = torch.load(checkpoint, weights_only=True)
    module = build(task, saved["hyper_parameters"]["config"])
    module.load_state_dict(saved["state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        return module.backbone(images) if task == "recognizer" else module.net(images)


IMAGES = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # not the export's batch


@pytest.mark.parametrize("task", list(CONFIGS))
def test_state_dict_export_lies_beside_the_run_and_loads_into_the_built_backbone(tmp_path, capsys, task):
    checkpoint, config = write_checkpoint(tmp_path / "run", task)
    assert visage(["export", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run" / "export" / "backbone.pt"
    assert f"as state_dict: {out}" in printed and not (tmp_path / "run" / "checkpoints" / "backbone.pt").exists()
    model = config["model"]
    fits = f"model.backbone={model['backbone']}" + (" model.width=8" if model["backbone"] == "tiny" else "")
    assert f"fits {fits} model.embedding_size=16 data.image_size=32" in printed
    assert "visage fit recognizer/arcface.yaml" in printed and "visage fit embedder/triplet.yaml" in printed
    net = build_backbone(model["backbone"], 16, 32, width=model.get("width", 32))
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(IMAGES), reference(checkpoint, task, IMAGES))


@pytest.mark.parametrize("task", list(CONFIGS))
def test_torchscript_export_gives_the_checkpoints_outputs(tmp_path, capsys, task):
    checkpoint, _ = write_checkpoint(tmp_path / "run", task)
    assert visage(["export", str(checkpoint), "--format", "torchscript"]) == 0
    assert "outputs equal the checkpoint's" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "run" / "export" / "backbone.torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(IMAGES), reference(checkpoint, task, IMAGES))


@pytest.mark.parametrize("task", list(CONFIGS))
def test_onnx_export_gives_the_checkpoints_outputs(tmp_path, task):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'visage[onnx]')")
    checkpoint, _ = write_checkpoint(tmp_path / "run", task)
    assert visage(["export", str(checkpoint), "--format", "onnx"]) == 0
    out = tmp_path / "run" / "export" / "backbone.onnx"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        outputs = session.run(["embeddings"], {"images": IMAGES.numpy()})[0]
    else:  # onnx's own evaluator of the standard operators
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(str(out)).run(["embeddings"], {"images": IMAGES.numpy()})[0]
    # ONNX Runtime folds BatchNorm into the convolutions: float32 rounding differs a little
    torch.testing.assert_close(torch.from_numpy(outputs), reference(checkpoint, task, IMAGES), rtol=1e-4, atol=1e-4)


def test_a_named_checkpoint_exports_under_its_name_and_out_is_honoured(tmp_path):
    checkpoint, _ = write_checkpoint(tmp_path / "run", "recognizer", name="best-step000008.ckpt")
    assert visage(["export", str(checkpoint), "--format", "torchscript"]) == 0
    assert (tmp_path / "run" / "export" / "backbone-best-step000008.torchscript.pt").is_file()
    assert visage(["export", str(checkpoint), "--out", str(tmp_path / "elsewhere" / "r.pt")]) == 0
    assert set(torch.load(tmp_path / "elsewhere" / "r.pt", weights_only=True)) >= {"conv1.weight", "features.weight"}


def test_export_errors_are_one_line_on_stderr_with_exit_2(tmp_path, capsys):
    checkpoint, _ = write_checkpoint(tmp_path / "run", "recognizer")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    cases = [([str(tmp_path / "missing.ckpt")], "does not exist"), ([str(corrupt)], "cannot be read as a checkpoint"),
             ([str(plain)], "is not a Lightning checkpoint"),
             ([str(checkpoint), "--format", "tflite"], "--format: 'tflite' is not one of state_dict, torchscript, onnx")]
    for args, expected in cases:
        assert visage(["export", *args]) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("visage: error: ") and expected in lines[0], captured.err
        assert not captured.out


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_recognizer_takes_every_backbone_the_embedder_can_export(backbone):
    """The embedder's network loads strictly into the recognizer's backbone built from the export's overrides."""
    source_config = to_plain(load_config(CONFIGS["embedder"][0], [f"model.backbone={backbone}", "data.image_size=48",
                                                                   "model.width=8", "model.embedding_size=24"]))
    source = TripletEmbedder(source_config)
    overrides = source.exportable().overrides
    target_config = to_plain(load_config(CONFIGS["recognizer"][0], list(overrides)))  # the recognizer's checks
    if backbone in ("iresnet50", "iresnet100"):
        return  # iresnet18's code at more depth: building two of them costs a minute on a shared CPU
    target = FaceRecognizer(target_config)
    target.backbone.load_state_dict(source.net.state_dict(), strict=True)
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():  # training mode: an untrained iresnet100's running statistics overflow in eval mode
        torch.testing.assert_close(target.backbone(images), source.net(images))
