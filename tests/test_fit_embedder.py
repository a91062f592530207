"""`visage fit` end to end: 2-process DDP, run directory contents, exact resume, NaN stop, fine-tuning."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from tests.conftest import REPO
from trainers.cli import main as visage

EXPERIMENT = "configs/embedder/triplet.yaml"


def fast(root: Path) -> list[str]:
    """A tiny but real run: synthetic faces, P x K batches, a narrow TinyNet."""
    return ["data.synthetic.identities=40", "data.synthetic.val_identities=12", "data.synthetic.per_identity=6",
            "data.synthetic.size=32", "data.image_size=32", "data.batch_size=16", "data.sampler.p=4",
            "data.sampler.k=4", "data.sampler.pool_size=32", "data.shuffle_buffer=0", "data.batches_per_epoch=4", "data.val_pairs=200", "data.num_workers=1",
            "model.width=8", "model.embedding_size=32", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "logging.wandb=disabled", f"run.root={root}"]


def single(root: Path) -> list[str]:
    return fast(root) + ["trainer.devices=1", "trainer.strategy=auto", "model.cross_rank_mining=false"]


def csv_rows(run_dir: Path) -> list[dict]:
    """Every row of the run's CSV logs, resumptions (csv-1, csv-2, ...) after the first."""
    rows = []
    for folder in sorted(run_dir.glob("csv*"), key=lambda p: (len(p.name), p.name)):
        with open(folder / "metrics.csv") as f:
            rows.extend(csv.DictReader(f))
    return rows


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, *fast(root), "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.accelerator=cpu", "logging.wandb=offline", "model.cross_rank_mining=true"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root / "embedder-triplet" / "local-0", result


@pytest.mark.ddp
def test_ddp_fit_trains_on_two_ranks_and_reports(ddp_run):
    run_dir, result = ddp_run
    assert f"run directory: {run_dir}" in result.stdout
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["world_size"] == 2
    assert summary["global_step"] == 8  # 2 epochs x 4 batches per rank
    assert 0.0 <= summary["metrics"]["val/accuracy"] <= 1.0
    assert {"val/tar@far=1e-02", "val/rank1", "val/mAP"} <= set(summary["metrics"])
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["devices"] == 2 and config["model"]["cross_rank_mining"] is True


@pytest.mark.ddp
def test_run_directory_holds_checkpoints_pictures_and_logs(ddp_run):
    run_dir, _ = ddp_run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain containers only
    assert last["global_step"] == 8 and isinstance(last["hyper_parameters"]["config"], dict)
    assert list((run_dir / "checkpoints").glob("best-step*.ckpt"))
    for name in ("samples", "retrieval", "roc"):
        image = cv2.imread(str(run_dir / "pictures" / f"{name}-latest.png"))
        assert image is not None and image.shape[0] > 50
    rows = csv_rows(run_dir)
    assert any(r.get("train/loss") for r in rows)
    assert "data/skipped_undecodable_image" in rows[0]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))
    assert not list(run_dir.glob("hpc_ckpt_*"))


def embeddings_by_hand(checkpoint: Path, split: Path) -> tuple[torch.Tensor, list[int], list[str]]:
    """The checkpoint's embedding (image + mirror) of every sample of a split, in the split's order,
    decoded and normalised here: OpenCV's BGR reversed, (x - 127.5) / 128."""
    import numpy as np
    from datamodules.bad_samples import BadSampleCounter
    from datamodules.shard_stream import read_shard
    from datamodules.shards import read_index
    from modules.embedder import TripletEmbedder
    state = torch.load(checkpoint, weights_only=True)
    module = TripletEmbedder(state["hyper_parameters"]["config"])
    module.load_state_dict(state["state_dict"])
    module.eval()
    records = [raw for url, n in read_index(split).shards for raw in read_shard(url, BadSampleCounter(), n)]
    images = np.stack([cv2.imdecode(np.frombuffer(r["jpg"], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for r in records])
    x = ((torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).double() - 127.5) / 128).float()
    with torch.no_grad():
        embeddings = module(x) + module(torch.flip(x, dims=[3]))
    return embeddings, [json.loads(r["json"])["identity"] for r in records], [r["__key__"] for r in records]


@pytest.mark.ddp
def test_predict_writes_the_split_embeddings_in_order_on_one_and_on_two_ranks(ddp_run, tmp_path):
    run_dir, _ = ddp_run
    checkpoint, root = run_dir / "checkpoints" / "last.ckpt", run_dir.parent.parent
    assert visage(["predict", EXPERIMENT, *fast(root), "trainer.devices=1", "trainer.strategy=auto",
                   "run.id=predict-one", "--ckpt", str(checkpoint)]) == 0
    one = torch.load(run_dir / "predict-one" / "predictions.pt", weights_only=True)
    cache = next(Path(os.environ["VISAGE_CACHE"]).glob("synth-faces-i40-v12-k6-s32-*"))
    expected, labels, keys = embeddings_by_hand(checkpoint, cache / "val")
    assert one["split"] == "val" and one["key"] == keys and one["label"].tolist() == labels
    assert one["embedding"].shape == (72, 32)
    torch.testing.assert_close(one["embedding"], expected, rtol=1e-4, atol=1e-4)
    # two ranks: each embeds half of the split (36 samples, batches of 20 and 16), gathered into one file
    cmd = [sys.executable, "-m", "trainers.cli", "predict", EXPERIMENT, *fast(root), "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.accelerator=cpu", "data.val_batch_size=20", "run.id=predict-two",
           "--ckpt", str(checkpoint)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    two = torch.load(run_dir / "predict-two" / "predictions.pt", weights_only=True)
    assert two["key"] == keys and two["label"].tolist() == labels
    torch.testing.assert_close(two["embedding"], one["embedding"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stop", [6, 5], ids=["stopped at a validation", "stopped between two validations"])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, stop):
    """Stopped at step ``stop``, in the middle of an epoch and of a 10-step learning-rate warm-up (a
    schedule that does not depend on max_steps, which differs between the two halves), then resumed
    with run.resume=auto: weights, loss curve and step count equal the straight run's. Validation
    runs every 2 steps: at step 5 last.ckpt is written where fit stops, not at the last validation."""
    common = single(tmp_path) + ["trainer.max_epochs=null", "trainer.val_check_interval=2", "optim.scheduler=none",
                                 "optim.warmup_steps=10"]
    assert visage(["fit", EXPERIMENT, *common, "trainer.max_steps=12", "run.id=straight"]) == 0
    assert visage(["fit", EXPERIMENT, *common, f"trainer.max_steps={stop}", "run.id=resumed"]) == 0
    runs = tmp_path / "embedder-triplet"
    interrupted = torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert interrupted["global_step"] == stop and interrupted["epoch"] == 1  # in epoch 1, whose steps are 4 to 7
    # auto: the run of this name whose last.ckpt is newest, which is "resumed"
    assert visage(["fit", EXPERIMENT, *common, "trainer.max_steps=12", "run.resume=auto"]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["resumed", "straight"]
    straight = torch.load(runs / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 12
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    def losses(run):
        return {int(r["step"]): float(r["train/loss"]) for r in csv_rows(runs / run) if r.get("train/loss")}

    straight_losses, resumed_losses = losses("straight"), losses("resumed")
    assert sorted(resumed_losses) == sorted(straight_losses) == list(range(12))  # one curve, no gap
    assert all(abs(straight_losses[s] - v) < 1e-5 for s, v in resumed_losses.items())
    assert (runs / "resumed" / "csv-1" / "metrics.csv").is_file()


def test_non_finite_loss_stops_the_run_with_the_step(tmp_path, capsys):
    code = visage(["fit", EXPERIMENT, *single(tmp_path), "optim.name=sgd", "optim.lr=1e30"])
    assert code == 1
    err = capsys.readouterr().err
    assert "at global step" in err and "training stopped" in err


def test_a_loss_gone_nan_mid_run_leaves_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """The loss of the 6th step (global step 5) turns NaN: the run stops naming that step, and
    last.ckpt still holds the state of the last validation (step 4), finite, ready to resume."""
    from modules.losses.triplet import TripletLoss
    real_forward, calls = TripletLoss.forward, []

    def poisoned(self, embeddings, labels):
        calls.append(len(calls))
        loss = real_forward(self, embeddings, labels)
        return loss * float("nan") if len(calls) > 5 else loss

    monkeypatch.setattr(TripletLoss, "forward", poisoned)
    code = visage(["fit", EXPERIMENT, *single(tmp_path), "trainer.max_epochs=null", "trainer.max_steps=20",
                   "trainer.val_check_interval=2", "optim.scheduler=none", "run.id=diverged"])
    assert code == 1
    assert "loss became nan at global step 5" in capsys.readouterr().err
    last = torch.load(tmp_path / "embedder-triplet" / "diverged" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_finetune_reports_keys_and_reinitialises_a_changed_head(tmp_path, capsys):
    assert visage(["fit", EXPERIMENT, *single(tmp_path), "trainer.max_epochs=1", "run.id=base"]) == 0
    base = tmp_path / "embedder-triplet" / "base" / "checkpoints" / "last.ckpt"
    assert visage(["fit", EXPERIMENT, *single(tmp_path), "trainer.max_epochs=2", "run.id=tuned",
                   f"finetune.from={base}", "model.embedding_size=16", "finetune.freeze=[net.stem]",
                   "finetune.unfreeze_at_epoch=1"]) == 0
    report = (tmp_path / "embedder-triplet" / "tuned" / "finetune_report.txt").read_text()
    assert "net.head.1.weight" in report and "mismatch" in report.lower()
    assert "net.stem.0.weight" not in report.split("mismatch")[-1]
    tuned = torch.load(tmp_path / "embedder-triplet" / "tuned" / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["state_dict"]["net.head.1.weight"].shape[0] == 16
