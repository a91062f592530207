"""Fine-tuning under real 2-process DDP (gloo, subprocesses), along the path a user takes:

1. fit a tiny embedder (TinyNet) on 2 processes with part of its network frozen for the first epoch;
2. ``visage export`` its checkpoint: it prints the backbone it fits and the recognizer command line;
3. run that command (plus small-data overrides) on 2 processes: the recognizer's backbone is frozen
   for epoch 0, so PartialFC's classifier is all that trains and DDP has nothing to average (it used to
   crash on both ranks), then the backbone joins training at ``finetune.unfreeze_at_epoch=1``.

``tests/rank_weights.py`` saves every rank's parameters at the start and after each epoch. The ranks
read different shards, so parameters whose gradients DDP did not average would drift apart.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, write_identity_split
from trainers.cli import main as visage

pytestmark = pytest.mark.ddp

TINY_DATA = ["data.synthetic=null", "data.num_workers=0", "data.batch_size=8", "data.val_pairs=40",
             "logging.wandb=disabled", "logging.pictures=false", "trainer.max_epochs=2", "trainer.devices=2",
             "trainer.enable_progress_bar=false"]


def fit_two_ranks(args: list[str], dump: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tests.rank_weights", "fit", *args], cwd=REPO, text=True,
                            capture_output=True, timeout=900, env={**os.environ, "RANK_WEIGHTS_DIR": dump})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def saved(folder, rank: int, moment: str) -> dict:
    return torch.load(folder / f"rank{rank}-{moment}.pt", weights_only=True)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-ddp")
    faces = root / "faces"
    write_identity_split(faces, "train", range(0, 24), 6)  # 15 shards: the two ranks read different ones
    write_identity_split(faces, "val", range(100, 110), 5)
    data = [f"data.root={faces}", f"run.root={root / 'runs'}", *TINY_DATA]
    fit_two_ranks(["configs/embedder/triplet.yaml", *data, "data.image_size=32", "data.sampler.p=4",
                   "data.sampler.k=2", "model.width=8", "model.embedding_size=16", "run.id=base",
                   "finetune.freeze=[net.stem]", "finetune.unfreeze_at_epoch=1"], str(root / "embedder-ranks"))
    checkpoint = root / "runs" / "embedder-triplet" / "base" / "checkpoints" / "last.ckpt"
    export_out = subprocess.run([sys.executable, "-m", "trainers.cli", "export", str(checkpoint)], cwd=REPO,
                                text=True, capture_output=True, timeout=600)
    assert export_out.returncode == 0, export_out.stderr[-3000:]
    command = next(line.strip() for line in export_out.stdout.splitlines()
                   if line.strip().startswith("visage fit recognizer/"))
    args = shlex.split(command)[2:]  # after "visage fit"
    recognizer = fit_two_ranks([*args, *data, "run.id=tuned"], str(root / "recognizer-ranks"))
    return root, export_out.stdout, args, recognizer


def test_the_export_says_what_it_fits_and_prints_the_recognizer_command(tuned):
    root, printed, args, _ = tuned
    out = root / "runs" / "embedder-triplet" / "base" / "export" / "backbone.pt"  # beside the run
    assert out.is_file() and not (root / "runs" / "embedder-triplet" / "base" / "checkpoints" / "backbone.pt").exists()
    assert "fits model.backbone=tiny model.width=8 model.embedding_size=16 data.image_size=32" in printed
    assert args[0] == "recognizer/arcface.yaml"
    assert {"model.backbone=tiny", "model.width=8", "model.embedding_size=16", "data.image_size=32",
            f"finetune.from={out}", "finetune.freeze=[backbone]", "finetune.unfreeze_at_epoch=1"} <= set(args)


def test_a_part_of_the_embedder_frozen_then_unfrozen_stays_identical_on_both_ranks(tuned):
    folder = tuned[0] / "embedder-ranks"
    start, first, last = saved(folder, 0, "start"), saved(folder, 0, "epoch0"), saved(folder, 0, "epoch1")
    stem = [name for name in start["params"] if name.startswith("net.stem.")]
    assert stem and not any(start["requires_grad"][name] for name in stem)  # frozen during epoch 0
    for name in stem:
        assert torch.equal(first["params"][name], start["params"][name]), name
        assert not torch.equal(last["params"][name], start["params"][name]), name  # trained in epoch 1
    assert not torch.equal(first["params"]["net.head.1.weight"], start["params"]["net.head.1.weight"])
    for moment in ("epoch0", "epoch1"):  # DDP averaged every trained gradient, the stem's after the unfreeze too
        other = saved(folder, 1, moment)["params"]
        for name, value in saved(folder, 0, moment)["params"].items():
            torch.testing.assert_close(other[name], value, rtol=0, atol=1e-6, msg=f"{moment} {name}")


def test_a_frozen_backbone_trains_the_recognizer_head_on_two_ranks_then_joins_ddp(tuned):
    root, _, _, result = tuned
    folder = root / "recognizer-ranks"
    exported = torch.load(root / "runs" / "embedder-triplet" / "base" / "export" / "backbone.pt", weights_only=True)
    backbone = [name for name in saved(folder, 0, "start")["params"] if name.startswith("backbone.")]
    assert len(backbone) == sum(1 for key in exported if not re.search(r"running_|num_batches", key))
    for rank in (0, 1):
        start, first, last = (saved(folder, rank, m) for m in ("start", "epoch0", "epoch1"))
        assert not any(start["requires_grad"][name] for name in backbone)
        for name in backbone:  # the exported weights, untouched while frozen, trained after the unfreeze
            key = name[len("backbone."):]
            assert torch.equal(first["params"][name], exported[key]), (rank, name)
        assert all(last["requires_grad"][name] for name in backbone)
        assert sum(not torch.equal(last["params"][n], exported[n[len("backbone."):]]) for n in backbone) > len(backbone) // 2
        # the classifier (this rank's PartialFC shard) trained while the backbone was frozen
        assert not torch.equal(first["params"]["partial_fc.weight"], start["params"]["partial_fc.weight"])
    for name in backbone:  # after the unfreeze DDP averaged the backbone's gradients: the ranks agree
        torch.testing.assert_close(saved(folder, 1, "epoch1")["params"][name], saved(folder, 0, "epoch1")["params"][name],
                                   rtol=0, atol=1e-6, msg=name)
    assert "DDP now averages the gradients of" in result.stderr
    assert "loaded: 67 tensors" in result.stdout
