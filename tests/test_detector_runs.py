"""The detector as users run it: a stage on 2 DDP processes, mining split over ranks and resumed after a
kill, the whole cascade resumed at its unfinished step, an exact resume inside a stage, fine-tuning from
facenet-pytorch's weights, WIDER prediction files, and the SLURM script."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_visage
from trainers.tasks import TASKS

EXPERIMENT = "configs/detector/mtcnn.yaml"
# faces of 50 px and more: the easy setting holds some (its AP is not a 0/0)
TINY = [*TASKS["detector"].tiny, "data.synthetic.train_scenes=8", "data.synthetic.val_scenes=3",
        "data.synthetic.width=[128,160]", "data.synthetic.height=[128,160]", "data.synthetic.face_height=[50,80]",
        "logging.wandb=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
ONE = ["trainer.devices=1", "trainer.strategy=auto"]


def crops_of(split: Path) -> list[str]:
    from datamodules.bad_samples import BadSampleCounter
    from datamodules.shard_stream import read_shard
    from datamodules.shards import read_index
    counter = BadSampleCounter()
    return [raw["__key__"] for url, n in read_index(split).shards for raw in read_shard(url, counter, n)]


@pytest.fixture(scope="module")
def cascade(tmp_path_factory) -> Path:
    """A tiny whole cascade (one epoch per stage), trained once for the tests below. No stage validates
    within its fit (every 2nd epoch): each step's metrics come from the validation after it."""
    root = tmp_path_factory.mktemp("cascade")
    run_visage("fit", EXPERIMENT, *TINY, *ONE, "trainer.max_epochs=1", "model.stage_epochs={pnet: 1, rnet: 1, onet: 1}",
               "trainer.check_val_every_n_epoch=2", "trainer.log_every_n_steps=2", f"run.root={root}", "run.id=whole")
    return root / "detector-mtcnn" / "whole"


def test_the_whole_cascade_leaves_each_step_and_the_final_metrics(cascade):
    for step in ("pnet", "rnet", "onet"):
        assert (cascade / step / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((cascade / step / "metrics.json").read_text())["metrics"]["val/ap_easy"] >= 0
    for step in ("rnet_crops", "onet_crops"):
        assert (cascade / step / "done.json").is_file()
        stats = json.loads((cascade / step / "crops" / "train" / "crops.json").read_text())
        assert stats["scenes"] == 8 and stats["crops"]["negative"] > 0 and stats["crops"]["landmark"] > 0
    final = json.loads((cascade / "metrics.json").read_text())
    assert final["steps"] == ["pnet", "rnet_crops", "rnet", "onet_crops", "onet"]
    assert {"val/ap_easy", "val/ap_medium", "val/ap_hard", "val/haar/ap_hard"} <= set(final["metrics"])
    assert (cascade / "onet" / "pictures" / "precision-recall-latest.png").is_file()
    assert (cascade / "onet" / "pictures" / "detections-latest.png").is_file()
    # the Haar baseline beside the whole cascade's validation, not beside P-Net's windows
    assert not [k for k in json.loads((cascade / "pnet" / "metrics.json").read_text())["metrics"] if "haar" in k]


def test_the_loss_parts_are_logged_on_every_step_the_loss_is_written(cascade):
    """Logged only on the steps the loggers write, the parts must be that step's own: eq. 4, the loss is
    their weighted sum (1 / 0.5 / 0.5 for P-Net, 1 / 0.5 / 1 for O-Net), step by step."""
    from modules.losses.mtcnn_loss import LOSS_WEIGHTS
    from trainers.csv_log import read_metrics
    for stage in ("pnet", "onet"):
        curves = read_metrics(cascade / stage)
        steps, loss = curves["train/loss"]
        assert len(steps) >= 3, (stage, steps)
        parts = [curves[f"train/{part}_loss"] for part in ("face", "box", "landmark")]
        for part_steps, _ in parts:
            assert part_steps.tolist() == steps.tolist(), stage
        weighted = sum(w * values for w, (_, values) in zip(LOSS_WEIGHTS[stage], parts))
        assert weighted == pytest.approx(loss, rel=1e-4, abs=1e-6), stage


def test_a_stopped_cascade_resumes_at_its_unfinished_step(cascade, tmp_path):
    import shutil
    run = tmp_path / "detector-mtcnn" / "whole"
    shutil.copytree(cascade, run)
    (run / "onet" / "metrics.json").unlink()  # as if the O-Net step had been stopped
    finished = {step: (run / step / "checkpoints" / "last.ckpt").stat().st_mtime_ns for step in ("pnet", "rnet")}
    stopped_at = torch.load(run / "onet" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    run_visage("fit", EXPERIMENT, *TINY, *ONE, "trainer.max_epochs=1", "model.stage_epochs={pnet: 1, rnet: 1, onet: 2}",
               f"run.root={tmp_path}", "run.resume=auto")
    assert sorted(p.name for p in (tmp_path / "detector-mtcnn").iterdir()) == ["whole"]  # the same run
    for step, mtime in finished.items():  # the finished steps were not run again
        assert (run / step / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    resumed = torch.load(run / "onet" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * stopped_at and (run / "onet" / "metrics.json").is_file()
    with open(run / "onet" / "csv-1" / "metrics.csv") as log:  # the second part of its curve starts where it stopped
        steps = [int(row["step"]) for row in csv.DictReader(log) if row.get("train/loss")]
    assert steps and min(steps) >= stopped_at


def test_wider_prediction_files_from_the_trained_cascade(cascade, tmp_path):
    result = run_visage("predict", EXPERIMENT, *TINY, *ONE, "model.stage=onet",
                        f"model.weights.pnet={cascade}/pnet/checkpoints/last.ckpt",
                        f"model.weights.rnet={cascade}/rnet/checkpoints/last.ckpt",
                        "--ckpt", str(cascade / "onet" / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "wider"))
    files = sorted((tmp_path / "wider").rglob("val/scene*.txt"))
    assert len(files) == 3, result.stdout[-2000:]
    for path in files:
        lines = path.read_text().splitlines()
        assert lines[0] == path.stem and int(lines[1]) == len(lines) - 2
        assert all(len(line.split()) == 5 for line in lines[2:])


@pytest.mark.ddp
def test_a_stage_trains_on_two_processes(tmp_path):
    run_visage("fit", EXPERIMENT, *TINY, "model.stage=pnet", "trainer.devices=2", "trainer.strategy=ddp",
               "trainer.max_epochs=2", f"run.root={tmp_path}", "run.id=ddp")
    summary = json.loads((tmp_path / "detector-mtcnn" / "ddp" / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["epoch"] == 2
    assert 0.0 <= summary["metrics"]["val/ap_hard"] <= 1.0


@pytest.mark.ddp
def test_mining_splits_the_scenes_over_two_ranks_without_duplicates(cascade, tmp_path):
    out = tmp_path / "mined"
    run_visage("data", "mine", EXPERIMENT, *TINY, "data.crops.chunk_scenes=1", "model.stage=rnet",
               f"model.weights.pnet={cascade}/pnet/checkpoints/last.ckpt", "trainer.devices=2",
               "trainer.strategy=ddp", "--out", str(out))
    keys = crops_of(out / "train")
    scenes = {key.rsplit("_", 1)[0] for key in keys}
    assert len(keys) == len(set(keys)) and len(scenes) == 8  # every scene mined once, on one rank or the other
    assert json.loads((out / "train" / "crops.json").read_text())["scenes"] == 8


def test_mining_killed_midway_resumes_without_redoing_finished_chunks(cascade, tmp_path):
    out = tmp_path / "mined"
    args = [sys.executable, "-m", "trainers.cli", "data", "mine", EXPERIMENT, *TINY, *ONE, "data.crops.chunk_scenes=1",
            "model.stage=rnet", f"model.weights.pnet={cascade}/pnet/checkpoints/last.ckpt", "--out", str(out)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = out / ".train.chunks"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(chunks.glob("chunk-*/index.json"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(chunks.glob("chunk-*/index.json"))
    assert 2 <= len(done) < 8, "the kill came too late to test a resume"
    kept = {path.stat().st_ino for index in done for path in index.parent.glob("shard-*.tar")}
    run_visage(*args[3:])
    merged = {path.stat().st_ino for path in (out / "train").glob("shard-*.tar")}
    assert kept <= merged  # the finished chunks' shards were moved into the split, not written again
    keys = crops_of(out / "train")
    assert len(keys) == len(set(keys)) and len({k.rsplit("_", 1)[0] for k in keys}) == 8


def test_a_stage_resumed_mid_run_ends_as_a_straight_run(tmp_path):
    common = [*TINY, *ONE, "model.stage=pnet", "trainer.max_epochs=null", "trainer.val_check_interval=3",
              "data.batches_per_epoch=4", "optim.scheduler=none", "model.haar_baseline=false", "logging.pictures=false",
              f"run.root={tmp_path}"]
    run_visage("fit", EXPERIMENT, *common, "trainer.max_steps=9", "run.id=straight")
    run_visage("fit", EXPERIMENT, *common, "trainer.max_steps=6", "run.id=resumed")
    run_visage("fit", EXPERIMENT, *common, "trainer.max_steps=9", "run.resume=auto")
    runs = tmp_path / "detector-mtcnn"
    straight = torch.load(runs / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 9
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_fine_tuning_starts_from_facenet_pytorchs_weights(mtcnn_weights, tmp_path):
    weights = tmp_path / "mtcnn.pt"
    run_visage("detect", "--weights", str(mtcnn_weights), "--save-weights", str(weights))
    run_visage("fit", EXPERIMENT, *TINY, *ONE, "model.stage=pnet", "trainer.max_steps=2", "trainer.max_epochs=1",
               f"finetune.from={weights}", f"run.root={tmp_path}", "run.id=tuned")
    report = (tmp_path / "detector-mtcnn" / "tuned" / "finetune_report.txt").read_text()
    state = torch.load(weights, weights_only=True)
    assert f"loaded: {len(state)} tensors" in report and "shape-mismatched (kept their initialisation): 0" in report


def test_the_slurm_script_runs_the_same_cascade():
    result = run_visage("submit", EXPERIMENT, "--cluster", "local", "--dry-run")
    assert "visage fit configs/detector/mtcnn.yaml" in result.stdout and "--ntasks-per-node=2" in result.stdout
