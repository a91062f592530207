"""Real jobs on a throw-away one-node SLURM cluster (emulated node ``n1``, 4 CPUs).

Each job is a small CPU embedder training submitted with `visage submit` (or, for the mismatch,
a hand-written script), run by slurmd/srun exactly as on a cluster.
"""
from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from slurm.allocation import resolves
from tests.conftest import write_identity_split
from tests.slurm_cluster import FINISHED_STATES, job_logs, visage_env, visage_submit
from tests.slurm_cluster import _slurm_one_node, slurm_cluster  # noqa: F401 (fixtures used by the tests)
from tests.wandb_records import offline_runs

pytestmark = pytest.mark.slurm

CONFIG = "embedder/triplet.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-faces")
    write_identity_split(root, "train", range(0, 24), 6)
    write_identity_split(root, "val", range(100, 110), 5)
    return root


def small_run(shards: Path, max_steps: int, *extra: str) -> list[str]:
    """A few steps of a small embedder; no epoch ends within them (one final validation only)."""
    return [CONFIG, "--cluster", "local", "data.synthetic=null", f"data.root={shards}", "data.image_size=32",
            "data.batch_size=16", "data.sampler.p=4", "data.sampler.k=4", "data.num_workers=0",
            "data.val_pairs=100", "data.batches_per_epoch=50", "model.width=8", "trainer.accelerator=cpu",
            "trainer.max_epochs=null", f"trainer.max_steps={max_steps}", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", "trainer.ddp_timeout_s=120", "logging.wandb=disabled",
            "logging.pictures=false", *extra]


def train_rows(path: Path) -> list[int]:
    """Logged steps of training rows (train/loss) in a Lightning CSV log."""
    with open(path, newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def test_one_node_two_tasks_trains_with_two_ranks(slurm_cluster, shards, tmp_path):
    assert not resolves("n1"), "the emulated node name resolves here: the MASTER_ADDR fallback is not exercised"
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, small_run(shards, 3, "--gpus-per-node", "2"))
    assert run_dir == tmp_path.resolve() / "runs" / "embedder-triplet" / f"slurm-{job}"
    state = slurm_cluster.wait_job(job, timeout=400)
    assert state == "COMPLETED", job_logs(run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["world_size"], summary["global_step"], summary["restart_count"]) == (2, 3, 0)
    err = (run_dir / "slurm.err").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in err and "GLOBAL_RANK: 1, MEMBER: 2/2" in err
    assert f"visage: job {job} restart 0 on n1" in (run_dir / "slurm.out").read_text()
    assert train_rows(run_dir / "csv" / "metrics.csv") == [0, 1, 2]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["devices"] == 2
    assert (run_dir / f"job-{job}.sbatch").is_file()
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))


def wait_until_training(slurm_cluster, job: str, run_dir: Path, deadline: float) -> None:
    """Both ranks have their requeue handlers once Lightning says so (it installs its own last)."""
    err_log = run_dir / "slurm.err"
    while not (err_log.exists() and err_log.read_text().count("SLURM auto-requeueing enabled") >= 2):
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING"), job_logs(run_dir)
        assert time.monotonic() < deadline, "training never started\n" + job_logs(run_dir)
        time.sleep(0.2)


def test_requeue_signal_checkpoints_requeues_and_resumes_without_losing_steps(slurm_cluster, shards, tmp_path):
    max_steps = 5
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, small_run(
        shards, max_steps, "--gpus-per-node", "2", "logging.wandb=offline", "logging.progress_every_n_steps=1"),
        wandb="offline")
    deadline = time.monotonic() + 400
    wait_until_training(slurm_cluster, job, run_dir, deadline)
    # without --full/--batch, scancel signals the srun tasks only (what --signal=SIGUSR1@90 does)
    slurm_cluster.run(["scancel", "--signal=USR1", job])
    while slurm_cluster.job_fields(job).get("Restarts") != "1":
        assert slurm_cluster.job_state(job) not in FINISHED_STATES, "no requeue\n" + job_logs(run_dir)
        assert time.monotonic() < deadline, "no requeue\n" + job_logs(run_dir)
        time.sleep(0.2)
    # the first run is over; the requeued one waits >= 10 s (cred_expire) before it starts
    saved = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in saved] == ["hpc_ckpt_1.ckpt"], job_logs(run_dir)
    checkpoint = torch.load(saved[0], map_location="cpu", weights_only=False)
    step = checkpoint["global_step"]
    adam_steps = {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()}
    assert 1 <= step < max_steps
    assert adam_steps == {float(step)}, "weights/optimizer and step counter of the checkpoint disagree"
    assert train_rows(run_dir / "csv" / "metrics.csv") == list(range(step)), "first run's log"

    state = slurm_cluster.wait_job(job, timeout=400)
    assert state == "COMPLETED", job_logs(run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["global_step"], summary["restart_count"], summary["world_size"]) == (max_steps, 1, 2)
    # the resumed run logs into csv-1: together the two logs are one curve without gaps or repeats
    assert train_rows(run_dir / "csv" / "metrics.csv") == list(range(step))
    assert train_rows(run_dir / "csv-1" / "metrics.csv") == list(range(step, max_steps))
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")), "a completed run must not leave hpc checkpoints"
    out = (run_dir / "slurm.out").read_text()
    assert f"visage: job {job} restart 0" in out and f"visage: job {job} restart 1" in out
    # readable progress in the job's output, and one dashboard run across the requeue
    assert "\r" not in out and "\x1b" not in out
    starts = [line for line in (run_dir / "train.log").read_text().splitlines() if " fit: starting at " in line]
    assert [line.split("step=")[1].split()[0] for line in starts] == [f"0/{max_steps}", f"{step}/{max_steps}"]
    assert all(line in out for line in (run_dir / "train.log").read_text().splitlines())
    dashboard = json.loads((run_dir / "dashboard.json").read_text())
    runs = offline_runs(run_dir)
    assert [run.run_id for run in runs] == [dashboard["id"]] * 2 and dashboard["id"].startswith(f"embedder-triplet-slurm-{job}-")


def test_devices_that_do_not_match_the_tasks_fail_fast_with_a_clear_message(slurm_cluster, shards, tmp_path):
    script = tmp_path / "mismatch.sbatch"
    overrides = " ".join(small_run(shards, 2)[3:])  # the overrides, without CONFIG --cluster local
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=mismatch
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --output={tmp_path}/mismatch.out
#SBATCH --error={tmp_path}/mismatch.err
export PYTHONPROFILEIMPORTTIME=1  # every import is listed on stderr: shows what ran before the check
srun visage fit {CONFIG} {overrides} trainer.devices=1 run.root={tmp_path}/runs
""")
    job = slurm_cluster.sbatch(script, cwd=tmp_path, env=visage_env(slurm_cluster))
    assert slurm_cluster.wait_job(job, timeout=300) == "FAILED"
    err = (tmp_path / "mismatch.err").read_text()
    assert "trainer.devices=1 but SLURM runs 2 task(s) per node" in err, err
    assert "Traceback" not in err
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", err, flags=re.MULTILINE)
    assert "trainers.config" in imported
    heavy = sorted({name for name in imported if name.split(".")[0] == "pytorch_lightning" or name == "trainers.build"})
    assert not heavy, f"the check ran only after importing {heavy[:3]}..."
    assert not (tmp_path / "runs").exists(), "a run directory was prepared before the check"


def test_sweep_runs_a_job_array_with_one_run_directory_per_task(slurm_cluster, shards, tmp_path):
    rates = ["0.002", "0.0005"]
    job, run_dirs = visage_submit(slurm_cluster, tmp_path, small_run(
        shards, 2, "--gpus-per-node", "1", "logging.wandb=offline", "--sweep", f"optim.lr={','.join(rates)}"),
        wandb="offline")
    parent = tmp_path.resolve() / "runs" / "embedder-triplet"
    assert run_dirs == [parent / f"slurm-{job}_0", parent / f"slurm-{job}_1"]
    assert slurm_cluster.wait_job(job, timeout=400) == "COMPLETED"
    for task, (run_dir, rate) in enumerate(zip(run_dirs, rates)):
        assert slurm_cluster.job_state(f"{job}_{task}") == "COMPLETED", job_logs(run_dir)
        summary = json.loads((run_dir / "metrics.json").read_text())
        assert (summary["global_step"], summary["world_size"]) == (2, 1)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == float(rate)
        assert f"visage: array task {task}: optim.lr={rate}" in (run_dir / "slurm.out").read_text()
    assert sorted(p.name for p in parent.iterdir()) == [f"slurm-{job}_0", f"slurm-{job}_1"]
    # the sweep's tasks: a dashboard run each, in one group
    (first,), (second,) = (offline_runs(run_dir) for run_dir in run_dirs)
    assert first.run_id != second.run_id and first.group == second.group == f"embedder-triplet-sweep-{job}"


def test_sigterm_leaves_a_checkpoint_to_resume_from(slurm_cluster, shards, tmp_path):
    """Preemption or the time limit: SIGTERM stops every rank at a step boundary with a checkpoint."""
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, small_run(shards, 500, "--gpus-per-node", "2"))
    deadline = time.monotonic() + 400
    wait_until_training(slurm_cluster, job, run_dir, deadline)
    time.sleep(3)  # a few steps, usually
    slurm_cluster.run(["scancel", "--signal=TERM", job])
    slurm_cluster.wait_job(job, timeout=200)
    saved = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in saved] == ["hpc_ckpt_1.ckpt"], job_logs(run_dir)
    checkpoint = torch.load(saved[0], map_location="cpu", weights_only=False)
    step = checkpoint["global_step"]
    adam_steps = {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()}
    assert adam_steps == ({float(step)} if step else set()), "weights/optimizer and step counter disagree"
    assert train_rows(run_dir / "csv" / "metrics.csv") == list(range(step))
    assert not (run_dir / "metrics.json").exists(), "an interrupted run must not look finished"
