"""finetune.from weights that do not fit stop the run (one line, exit 2) instead of training from scratch."""
from __future__ import annotations

import pytest
import torch

from configs.schema import ConfigError, to_plain
from modules.embedder import TripletEmbedder
from modules.recognizer import FaceRecognizer
from trainers.cli import main as visage
from trainers.config import load_config
from trainers.finetune_guard import load_finetune_weights
from trainers.tasks import TASKS

EMBEDDER = "configs/embedder/triplet.yaml"
RECOGNIZER = "configs/recognizer/arcface.yaml"
SMALL = ["data.image_size=32", "model.embedding_size=16"]


def recognizer_checkpoint(path, backbone: str = "iresnet_tiny", extra=()) -> str:
    """A Visage recognizer checkpoint as `visage fit` writes it: weights under backbone. and partial_fc., config."""
    config = to_plain(load_config(RECOGNIZER, [*SMALL, f"model.backbone={backbone}", *extra]))
    module = FaceRecognizer(config)
    module.build_classifier(6)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config},
                "pytorch-lightning_version": "2.6.6"}, path)
    return str(path)


def embedder(finetune_from: str, *overrides: str) -> tuple[TripletEmbedder, dict]:
    config = to_plain(load_config(EMBEDDER, [*SMALL, "model.width=8", f"finetune.from={finetune_from}", *overrides]))
    return TripletEmbedder(config), config


def test_a_checkpoint_of_another_network_is_a_one_line_error_before_any_data_is_made(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VISAGE_CACHE", str(cache))
    ckpt = recognizer_checkpoint(tmp_path / "arcface.ckpt")
    code = visage(["fit", EMBEDDER, *TASKS["embedder"].tiny, *SMALL, f"finetune.from={ckpt}", "trainer.max_epochs=1",
                   f"run.root={tmp_path / 'runs'}", "logging.wandb=disabled", "trainer.devices=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"visage: config error: finetune.from: {ckpt} fills 0 of the 67 tensors of the model's 'net'")
    assert "the file's keys start with 'backbone.'" in err and "the model's with 'net.'" in err
    # the fix: the backbone it was trained with, and the prefix that names the weights for this model
    assert "model.backbone=iresnet_tiny" in err and "finetune.prefix_map={'backbone.': 'net.'}" in err
    assert not cache.exists() or not any(cache.iterdir())


def test_the_suggested_prefix_map_loads_the_same_network_from_another_task(tmp_path):
    ckpt = recognizer_checkpoint(tmp_path / "tiny.ckpt", backbone="tiny", extra=["model.width=8"])
    module, config = embedder(ckpt)
    with pytest.raises(ConfigError, match=r"fix: finetune\.prefix_map=\{'backbone\.': 'net\.'\} \(names 67 of them\)"):
        load_finetune_weights(module, config)
    module, config = embedder(ckpt, "finetune.prefix_map={backbone.: net.}")
    report = load_finetune_weights(module, config)
    assert len(report.loaded) == 67 and report.unexpected == ["partial_fc.weight"]


def test_fewer_than_min_loaded_of_the_network_is_an_error(tmp_path):
    source, _ = embedder(recognizer_checkpoint(tmp_path / "unused.ckpt"))
    state = source.net.state_dict()
    path = tmp_path / "part.pt"
    torch.save({key: state[key] for key in list(state)[:20]}, path)  # 20 of TinyNet's 67 tensors
    module, config = embedder(str(path))
    with pytest.raises(ConfigError, match="fills 20 of the 67 tensors of the model's 'net', fewer than "
                                          "finetune.min_loaded=0.5"):
        load_finetune_weights(module, config)
    module, config = embedder(str(path), "finetune.min_loaded=0.25")
    assert len(load_finetune_weights(module, config).loaded) == 20
    torch.testing.assert_close(module.net.stem[0].weight, source.net.stem[0].weight)


def test_nothing_loaded_is_an_error_even_with_min_loaded_zero(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    module, config = embedder(str(path), "finetune.min_loaded=0")
    with pytest.raises(ConfigError, match="fills 0 of the 67 tensors"):
        load_finetune_weights(module, config)


def test_a_changed_width_names_the_shapes_and_the_backbone_to_build(tmp_path):
    ckpt = recognizer_checkpoint(tmp_path / "wide.ckpt", backbone="tiny", extra=["model.width=16"])
    module, config = embedder(ckpt, "finetune.prefix_map={backbone.: net.}")
    with pytest.raises(ConfigError) as err:
        load_finetune_weights(module, config)
    message = str(err.value)
    assert "tensors have other shapes (e.g. net.stem.0.weight: file [16, 3, 3, 3] vs model [8, 3, 3, 3])" in message
    assert "build the network it was trained with: model.width=16" in message


@pytest.mark.parametrize("value", ["1.5", "-0.1", "true"])
def test_min_loaded_must_be_a_fraction(value):
    with pytest.raises(ConfigError, match="finetune.min_loaded"):
        load_config(EMBEDDER, [f"finetune.min_loaded={value}"])
