"""Configs: merging, overrides, and every kind of bad config rejected with the key named."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from configs.schema import ConfigError, to_plain
from modules.nets.backbones import FACE_BACKBONES
from trainers.config import load_config

EXPERIMENT = "configs/embedder/triplet.yaml"


def test_defaults_experiment_and_overrides_merge():
    cfg = load_config(EXPERIMENT, ["trainer.max_epochs=3", "model.embedding_size=64", "run.name=abc"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.model.embedding_size == 64
    assert cfg.run.name == "abc"
    assert cfg.logging.project == "visage"           # the schema's default
    assert cfg.model.cross_rank_mining is True       # from the experiment file
    assert load_config(EXPERIMENT).run.name == "embedder-triplet"


@pytest.mark.parametrize("overrides, key", [
    (["trainer.nonsense=1"], "trainer.nonsense"),
    (["model.embeding_size=64"], "model.embeding_size"),
    (["trainer.max_epochs=many"], "trainer.max_epochs"),
    (["model.normalize=perhaps"], "model.normalize"),
    (["data.batch_size=60"], "data.batch_size"),
    (["data.synthetic=null", "data.root=/does/not/exist"], "data.root"),
    (["data.synthetic=null"], "data.root"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.strategy=fsdp_magic"], "trainer.strategy"),
    (["model.mining=semi_hard"], "model.margin"),
    (["model.mining=hardest"], "model.mining"),
    (["finetune.from=/no/such.ckpt"], "finetune.from"),
    (["finetune.unknown=1"], "finetune.unknown"),
    (["run.resume=/no/such.ckpt"], "run.resume"),
    (["task=segmentation"], "task"),
    (["optim.lr=-1"], "optim.lr"),
    (["data.sampler.p=1", "data.sampler.k=64"], "data.sampler.p"),
    (["model.backbone=resnet18"], "model.backbone"),
    (["data.image_size=72"], "data.image_size"),  # the tiny backbone needs a multiple of 16
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(EXPERIMENT, overrides)
    assert str(err.value).startswith(key), str(err.value)


def test_missing_split_index_is_rejected(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="data.root"):
        load_config(EXPERIMENT, ["data.synthetic=null", f"data.root={tmp_path}"])


def test_cli_reports_config_error_without_traceback():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, "trainer.bogus=1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config error: trainer.bogus" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backbone", ["tiny", *FACE_BACKBONES])
def test_every_backbone_the_embedder_config_accepts_builds_and_embeds(backbone):
    from modules.embedder import TripletEmbedder
    cfg = load_config(EXPERIMENT, [f"model.backbone={backbone}", "data.image_size=48", "model.embedding_size=24",
                                   "model.normalize=true"])
    module = TripletEmbedder(to_plain(cfg))  # training mode: untrained BatchNorm running statistics blow up
    with torch.no_grad():
        embeddings = module(torch.rand(2, 3, 48, 48))
    assert embeddings.shape == (2, 24)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)  # model.normalize


def test_a_freeze_path_the_module_lacks_is_a_config_error_before_the_data_is_made(tmp_path):
    """The embedder's network is ``net``: ``finetune.freeze=[backbone]`` names nothing, and the run
    stops before it renders its synthetic data (the cache stays empty)."""
    import os
    cache = tmp_path / "cache"
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, "finetune.freeze=[backbone]",
                             f"run.root={tmp_path / 'runs'}", "logging.wandb=disabled"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "VISAGE_CACHE": str(cache)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config error: finetune.freeze: cannot freeze 'backbone'" in result.stderr and "'net'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not cache.exists() or not any(cache.iterdir())


def test_print_config_is_the_resolved_yaml():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, "--print-config",
                             "optim.lr=0.05"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["optim"]["lr"] == 0.05 and printed["task"] == "embedder"


def test_checkpoint_hyperparameters_are_plain_containers(tmp_path):
    cfg = load_config(EXPERIMENT)
    plain = to_plain(cfg)
    path = tmp_path / "h.pt"
    torch.save({"config": plain}, path)
    # weights-only loading (torch >= 2.6 default) refuses DictConfig; plain containers load
    assert torch.load(path, weights_only=True)["config"]["task"] == "embedder"
