"""The whole cascade as a real SLURM job (the throw-away local cluster, 2 tasks): the requeue signal
during the R-Net stage checkpoints it, requeues the job, and the requeued job keeps the finished
steps, resumes R-Net from its checkpoint and completes the cascade."""
from __future__ import annotations

import json
import time

import pytest
import torch

from tests.slurm_cluster import FINISHED_STATES, job_logs, visage_submit
from tests.slurm_cluster import _slurm_one_node, slurm_cluster  # noqa: F401 (fixtures used by the test)
from tests.test_detector_runs import TINY

pytestmark = [pytest.mark.slurm, pytest.mark.ddp]


def test_requeue_inside_a_stage_resumes_that_stage_and_completes_the_cascade(slurm_cluster, tmp_path):
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, [
        "detector/mtcnn.yaml", "--cluster", "local", "--gpus-per-node", "2", *TINY, "trainer.max_epochs=1",
        "model.stage_epochs={pnet: 1, rnet: 12, onet: 1}", "trainer.ddp_timeout_s=120",
        "logging.progress_every_n_steps=1", "logging.pictures=false", "model.haar_baseline=false"])
    deadline = time.monotonic() + 400
    rnet_log = run_dir / "rnet" / "train.log"
    while not (rnet_log.exists() and " step=" in rnet_log.read_text().split("fit: starting", 1)[-1]):
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING"), job_logs(run_dir)
        assert time.monotonic() < deadline, "R-Net never started training\n" + job_logs(run_dir)
        time.sleep(0.2)
    finished = {name: (run_dir / name / marker).stat().st_mtime_ns
                for name, marker in (("pnet", "metrics.json"), ("rnet_crops", "done.json"))}
    slurm_cluster.run(["scancel", "--signal=USR1", job])  # what --signal=SIGUSR1@90 sends before the limit
    while slurm_cluster.job_fields(job).get("Restarts") != "1":
        assert slurm_cluster.job_state(job) not in FINISHED_STATES, "no requeue\n" + job_logs(run_dir)
        assert time.monotonic() < deadline, "no requeue\n" + job_logs(run_dir)
        time.sleep(0.2)
    saved = sorted((run_dir / "rnet").glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in saved] == ["hpc_ckpt_1.ckpt"], job_logs(run_dir)
    stopped_at = torch.load(saved[0], map_location="cpu", weights_only=True)["global_step"]
    assert stopped_at >= 1

    assert slurm_cluster.wait_job(job, timeout=400) == "COMPLETED", job_logs(run_dir)
    for name, mtime in finished.items():  # the steps finished before the requeue were not run again
        marker = "metrics.json" if name == "pnet" else "done.json"
        assert (run_dir / name / marker).stat().st_mtime_ns == mtime
    starts = [line for line in rnet_log.read_text().splitlines() if " fit: starting at " in line]
    assert len(starts) == 2 and f"step={stopped_at}/" in starts[1], starts
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["steps"] == ["pnet", "rnet_crops", "rnet", "onet_crops", "onet"]
    assert {"val/ap_easy", "val/ap_medium", "val/ap_hard"} <= set(final["metrics"])
    assert not list(run_dir.rglob("hpc_ckpt_*.ckpt")), "a completed run leaves no SLURM checkpoints"
