"""Every bad config is a one-line error before any work: exit code 2, the key named, no traceback,
nothing written (no run directory, no synthetic data in the cache, nothing in the working folder).

The table holds the cases of issue 12 §5 and the ones tests/test_config.py and tests/test_recognizer.py
check at load time, here through the real command: ``trainers.cli.main`` in this process (what
``python -m trainers.cli`` runs; the same ``main``), and a few of them in a fresh process too.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from trainers.cli import main

E, R = "embedder/triplet.yaml", "recognizer/arcface.yaml"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
ERROR_LINE = re.compile(r"^visage(?: submit)?: (?:config )?error: (.*)$")

# (command and overrides, what the message starts with)
CASES = [
    # issue 12 §5
    (["fit", E, "data.sampler={p: 4"], "data.sampler"),
    (["fit", "LIST_YAML"], "config file"),
    pytest.param(["fit", E, "trainer.accelerator=gpu"], "trainer.accelerator", marks=NO_GPU),
    pytest.param(["fit", E, "trainer.accelerator=cuda", "trainer.devices=1"], "trainer.accelerator", marks=NO_GPU),
    (["fit", E, "trainer.max_time=banana"], "trainer.max_time"),
    (["fit", E, "trainer.max_time=1:00"], "trainer.max_time"),  # YAML reads 1:00 as 60
    (["fit", E, "trainer.max_time={hours: -1}"], "trainer.max_time"),
    (["fit", E, "trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
    (["fit", E, "trainer.limit_train_batches=1.5"], "trainer.limit_train_batches"),
    pytest.param(["fit", E, "trainer.devices=[0,1]"], "trainer.devices", marks=NO_GPU),  # auto: Lightning refuses
    (["fit", E, "trainer.devices=[0,1]", "trainer.accelerator=cpu"], "trainer.devices"),
    (["fit", E, "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
    (["fit", E, "trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch"),
    (["fit", E, "trainer.val_check_interval=0"], "trainer.val_check_interval"),
    (["fit", E, "trainer.val_check_interval=1.5"], "trainer.val_check_interval"),
    (["fit", E, "trainer.val_check_interval=banana"], "trainer.val_check_interval"),
    (["fit", E, "data.synthetic.identities=0"], "data.synthetic.identities"),
    (["fit", E, "data.synthetic.per_identity=0"], "data.synthetic.per_identity"),
    (["fit", E, "data.synthetic.size=0"], "data.synthetic.size"),
    (["fit", E, "data.val_pairs=-1"], "data.val_pairs"),
    (["fit", E, "model.width=0"], "model.width"),
    (["fit", E, "model.embedding_size=0"], "model.embedding_size"),
    (["fit", R, "model.embedding_size=0"], "model.embedding_size"),
    (["fit", E, "optim.warmup_steps=-10"], "optim.warmup_steps"),
    (["fit", R, "optim.warmup_steps=-10"], "optim.warmup_steps"),
    (["fit", E, "trainer.ddp_timeout_s=0"], "trainer.ddp_timeout_s"),
    (["fit", E, "trainer.ddp_timeout_s=-30"], "trainer.ddp_timeout_s"),
    (["fit", E, "data.shuffle_buffer=-5"], "data.shuffle_buffer"),
    (["fit", E, "data.sampler.pool_size=0"], "data.sampler.pool_size"),
    (["fit", E, "trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    (["fit", E, "data.synthetic.difficulty=5"], "data.synthetic.difficulty"),
    # the other trainer settings Lightning would refuse late or never
    (["fit", E, "trainer.precision=15"], "trainer.precision"),
    (["fit", E, "trainer.profiler=fancy"], "trainer.profiler"),
    (["fit", E, "trainer.gradient_clip_algorithm=max"], "trainer.gradient_clip_algorithm"),
    (["fit", E, "trainer.deterministic=maybe"], "trainer.deterministic"),
    (["fit", E, "trainer.fast_dev_run=-1"], "trainer.fast_dev_run"),
    (["fit", E, "trainer.overfit_batches=-1"], "trainer.overfit_batches"),
    (["fit", E, "trainer.max_steps=-5"], "trainer.max_steps"),
    (["fit", E, "trainer.num_nodes=0"], "trainer.num_nodes"),
    (["fit", E, "trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    (["fit", E, "trainer.num_sanity_val_steps=-2"], "trainer.num_sanity_val_steps"),
    (["fit", E, "trainer.callbacks=[x]"], "trainer.callbacks"),
    (["fit", E, "trainer.max_epoch=3"], "trainer.max_epoch"),
    # tests/test_config.py
    (["fit", E, "trainer.nonsense=1"], "trainer.nonsense"),
    (["fit", E, "model.embeding_size=64"], "model.embeding_size"),
    (["fit", E, "trainer.max_epochs=many"], "trainer.max_epochs"),
    (["fit", E, "model.normalize=perhaps"], "model.normalize"),
    (["fit", E, "data.batch_size=60"], "data.batch_size"),
    (["fit", E, "data.synthetic=null", "data.root=/does/not/exist"], "data.root"),
    (["fit", E, "data.synthetic=null"], "data.root"),
    (["fit", E, "data.synthetic=null", "data.root=EMPTY_DIR"], "data.root"),
    (["fit", E, "trainer.devices=0"], "trainer.devices"),
    (["fit", E, "trainer.strategy=fsdp_magic"], "trainer.strategy"),
    (["fit", E, "model.mining=semi_hard"], "model.margin"),
    (["fit", E, "model.mining=hardest"], "model.mining"),
    (["fit", E, "finetune.from=/no/such.ckpt"], "finetune.from"),
    (["fit", E, "finetune.unknown=1"], "finetune.unknown"),
    (["fit", E, "finetune.freeze=[backbone]"], "finetune.freeze"),  # checked on the built module
    (["fit", E, "run.resume=/no/such.ckpt"], "run.resume"),
    (["fit", E, "task=segmentation"], "task"),
    (["fit", E, "optim.lr=-1"], "optim.lr"),
    (["fit", E, "data.sampler.p=1", "data.sampler.k=64"], "data.sampler.p"),
    (["fit", E, "model.backbone=resnet18"], "model.backbone"),
    (["fit", E, "data.image_size=72"], "data.image_size"),
    (["fit", "no/such/config.yaml"], "config file"),
    # tests/test_recognizer.py
    (["fit", R, "model.backbone=resnet9000"], "model.backbone"),
    (["fit", R, "model.margin.kind=magface"], "model.margin.kind"),
    (["fit", R, "model.margin.kind=cosface", "model.margin.m2=0.2"], "model.margin.kind"),
    (["fit", R, "model.margin.kind=sphereface", "model.margin.m2=0.5"], "model.margin.m2"),
    (["fit", R, "model.partial_fc.sample_rate=0"], "model.partial_fc.sample_rate"),
    (["fit", R, "model.center_loss.weight=-1"], "model.center_loss.weight"),
    (["fit", R, "optim.lr_scaling=cubic"], "optim.lr_scaling"),
    (["fit", R, "data.sampler.kind=pk", "data.batch_size=64"], "data.sampler.kind"),
    (["fit", R, "data.verification=[/no/such/lfw.bin]"], "data.verification[0]"),
    (["fit", R, "model.num_classes=0"], "model.num_classes"),
    # the same checks for the other commands that take a config
    (["validate", E, "trainer.max_time=banana"], "trainer.max_time"),
    pytest.param(["test", E, "trainer.accelerator=gpu"], "trainer.accelerator", marks=NO_GPU),
    (["predict", E, "data.synthetic.identities=0"], "data.synthetic.identities"),
    (["validate"], "config"),
    (["validate", "--ckpt", "/no/such.ckpt"], "--ckpt"),
    # `visage submit --dry-run` (issue 12 §5): the same checks, and the profile's accelerator
    (["submit", E, "--cluster", "local", "--dry-run", "trainer.max_time=banana"], "trainer.max_time"),
    (["submit", E, "--cluster", "local", "--dry-run", "data.synthetic.identities=0"], "data.synthetic.identities"),
    (["submit", E, "--cluster", "local", "--dry-run", "trainer.accelerator=gpu"], "trainer.accelerator"),
    (["submit", E, "--cluster", "example-gpu", "--dry-run", "trainer.accelerator=cpu"], "trainer.accelerator"),
    (["submit", E, "--cluster", "local", "--dry-run", "trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
]


def case_id(case) -> str:
    argv = case.values[0] if hasattr(case, "values") else case[0]
    return "-".join([argv[0], *(a.replace("/", "_") for a in argv[2:] if not a.startswith("--") and a != "local")])


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Empty run root, synthetic-data cache and working folder: a bad config must leave them empty."""
    folders = {name: tmp_path / name for name in ("runs", "cache", "cwd", "empty")}
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "list.yaml").write_text("- task: embedder\n- data: {}\n")
    monkeypatch.setenv("VISAGE_CACHE", str(folders["cache"]))
    monkeypatch.chdir(folders["cwd"])
    return tmp_path


def command(argv: list[str], root: Path) -> list[str]:
    argv = [str(root / "list.yaml") if a == "LIST_YAML" else a.replace("EMPTY_DIR", str(root / "empty"))
            for a in argv]
    return [*argv, f"run.root={root / 'runs'}", "logging.wandb=disabled"]


def assert_clean_refusal(code: int, stderr: str, key: str, root: Path) -> None:
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [m.group(1) for line in stderr.splitlines() if (m := ERROR_LINE.match(line))]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith(key) or (key == "config file" and "config file" in errors[0]), errors[0]
    for name in ("runs", "cache", "cwd", "empty"):
        assert not any((root / name).iterdir()), f"{name}: {sorted(p.name for p in (root / name).iterdir())}"


class Accepted(Exception):
    """Raised where a run would start making data: the config was accepted."""


@pytest.mark.parametrize("argv, key", CASES, ids=[case_id(c) for c in CASES])
def test_a_bad_config_is_one_line_naming_the_key_and_nothing_is_written(argv, key, sandbox, capsys, monkeypatch):
    from datamodules.base import ShardDataModule

    def accepted(self):  # a trip wire, so that an accepted config fails here instead of training
        raise Accepted(f"{argv} was accepted: the run went on to make its data")

    monkeypatch.setattr(ShardDataModule, "prepare_data", accepted)
    code = main(command(argv, sandbox))
    assert_clean_refusal(code, capsys.readouterr().err, key, sandbox)


# the real command in a fresh process, for the kinds of failure: the YAML parser, the file, a load-time
# check, Lightning's refusal when the Trainer is built, the evaluation and the submission
IN_A_PROCESS = [(["fit", E, "data.sampler={p: 4"], "data.sampler"), (["fit", "LIST_YAML"], "config file"),
                pytest.param(["fit", E, "trainer.accelerator=gpu"], "trainer.accelerator", marks=NO_GPU),
                (["fit", E, "data.synthetic.identities=0"], "data.synthetic.identities"),
                (["validate", E, "trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
                (["submit", E, "--cluster", "local", "--dry-run", "trainer.accelerator=gpu"], "trainer.accelerator")]


@pytest.mark.parametrize("argv, key", IN_A_PROCESS, ids=[case_id(c) for c in IN_A_PROCESS])
def test_the_real_command_refuses_in_one_line(argv, key, sandbox):
    result = subprocess.run([sys.executable, "-m", "trainers.cli", *command(argv, sandbox)], capture_output=True,
                            text=True, timeout=300, cwd=sandbox / "cwd",
                            env={**os.environ, "PYTHONPATH": str(REPO), "VISAGE_CACHE": str(sandbox / "cache")})
    assert_clean_refusal(result.returncode, result.stderr, key, sandbox)
