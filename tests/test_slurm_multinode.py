"""Two emulated nodes (``n1``, ``n2``; 4 CPUs each) on one machine: multi-node DDP under SLURM.

"Agree" is made concrete: with cross-rank mining every rank computes the triplet loss of the global
batch, and rank r reads the same shards whatever node it is on, so the logged loss of every step is
a deterministic function of the global batch and the synchronised weights. A 2 nodes x 2 tasks run
and a 1 node x 4 tasks run must log the same loss at every step (steps after the first also check
that the gradients were averaged over all four ranks across the node boundary).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from slurm.allocation import ensure_master_addr, first_host, resolves
from tests.conftest import write_identity_split
from tests.slurm_cluster import job_logs, visage_submit
from tests.slurm_cluster import _slurm_two_nodes, slurm_cluster_2nodes  # noqa: F401 (fixtures used by the tests)

pytestmark = pytest.mark.slurm

CONFIG = "embedder/triplet.yaml"
STEPS = 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-faces-2n")
    write_identity_split(root, "train", range(0, 32), 6)
    write_identity_split(root, "val", range(100, 110), 5)
    return root


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


def test_hostlists_and_master_addr_as_slurm_sees_them(slurm_cluster_2nodes):
    for nodelist in ("n[1-2]", "n2,n1", "gpu[007-009,012],cpu1", "rack[2-3]-node[05-08]"):
        expanded = slurm_cluster_2nodes.run(["scontrol", "show", "hostnames", nodelist]).stdout.split()
        assert first_host(nodelist) == expanded[0]  # SLURM's own hostlist parser is the reference
    assert not resolves("n1")
    env = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2",
           **slurm_cluster_2nodes.env, "PATH": os.environ["PATH"]}
    ensure_master_addr(env)
    assert env["MASTER_ADDR"] == "127.0.0.1"  # NodeAddr of n1 in slurm.conf


def test_two_nodes_agree_with_one_node_on_the_same_global_batch(slurm_cluster_2nodes, shards, tmp_path):
    common = [CONFIG, "--cluster", "local", "data.synthetic=null", f"data.root={shards}", "data.image_size=32",
              "data.batch_size=16", "data.sampler.p=4", "data.sampler.k=4", "data.num_workers=0",
              "data.val_pairs=100", "data.batches_per_epoch=50", "model.width=8", "model.cross_rank_mining=true",
              "trainer.accelerator=cpu", "trainer.max_epochs=null", f"trainer.max_steps={STEPS}",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.ddp_timeout_s=120",
              "logging.wandb=disabled", "logging.pictures=false"]
    jobs = {}
    for layout, (nodes, per_node) in {"2x2": (2, 2), "1x4": (1, 4)}.items():
        jobs[layout] = visage_submit(slurm_cluster_2nodes, tmp_path, [
            *common, "--nodes", str(nodes), "--gpus-per-node", str(per_node), f"run.name=agree-{layout}"])
    runs = {}
    for layout, (job, (run_dir,)) in jobs.items():  # queued together; 1x4 starts when 2x2 frees n1
        assert slurm_cluster_2nodes.wait_job(job, timeout=500) == "COMPLETED", job_logs(run_dir)
        summary = json.loads((run_dir / "metrics.json").read_text())
        assert (summary["world_size"], summary["global_step"]) == (4, STEPS), job_logs(run_dir)
        runs[layout] = run_dir
    assert "on n[1-2]" in (runs["2x2"] / "slurm.out").read_text()
    err = (runs["2x2"] / "slurm.err").read_text()
    assert all(f"GLOBAL_RANK: {r}, MEMBER: {r + 1}/4" in err for r in range(4))
    two_nodes, one_node = losses(runs["2x2"]), losses(runs["1x4"])
    assert sorted(two_nodes) == sorted(one_node) == list(range(STEPS))
    for step in range(STEPS):
        assert two_nodes[step] == pytest.approx(one_node[step], rel=1e-5, abs=1e-6), f"step {step}"
    assert len({round(v, 4) for v in one_node.values()}) > 1, "the loss did not change: nothing was trained"


def test_partial_fc_shards_the_classifier_across_nodes(slurm_cluster_2nodes, shards, tmp_path):
    """The recognizer's classifier split over two nodes (one rank each) trains exactly as over two
    ranks of one node: same loss at every step, and the checkpoint gathers all 32 class centres."""
    common = ["recognizer/arcface.yaml", "--cluster", "local", "data.synthetic=null", f"data.root={shards}",
              "data.image_size=32", "data.batch_size=16", "data.num_workers=0", "data.val_pairs=100",
              "data.batches_per_epoch=50", "model.embedding_size=16", "model.partial_fc.sample_rate=0.5",
              "optim.warmup_steps=1", "trainer.accelerator=cpu", "trainer.max_epochs=null",
              f"trainer.max_steps={STEPS}", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
              "trainer.ddp_timeout_s=120", "logging.wandb=disabled", "logging.pictures=false"]
    jobs = {layout: visage_submit(slurm_cluster_2nodes, tmp_path, [
                *common, "--nodes", str(nodes), "--gpus-per-node", str(per_node), f"run.name=pfc-{layout}"])
            for layout, (nodes, per_node) in {"2x1": (2, 1), "1x2": (1, 2)}.items()}
    runs = {}
    for layout, (job, (run_dir,)) in jobs.items():
        assert slurm_cluster_2nodes.wait_job(job, timeout=500) == "COMPLETED", job_logs(run_dir)
        summary = json.loads((run_dir / "metrics.json").read_text())
        assert (summary["world_size"], summary["global_step"]) == (2, STEPS), job_logs(run_dir)
        runs[layout] = run_dir
    assert "on n[1-2]" in (runs["2x1"] / "slurm.out").read_text()
    two_nodes, one_node = losses(runs["2x1"]), losses(runs["1x2"])
    assert sorted(two_nodes) == sorted(one_node) == list(range(STEPS))
    for step in range(STEPS):
        assert two_nodes[step] == pytest.approx(one_node[step], rel=1e-5, abs=1e-6), f"step {step}"
    import torch  # noqa: PLC0415

    checkpoint = torch.load(runs["2x1"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["partial_fc.weight"].shape == (32, 16)  # both nodes' 16 classes
    trained_rows = checkpoint["recognizer"]["classifier_optimizer_state"]["momentum_buffer"].abs().sum(dim=1) > 0
    assert trained_rows[:16].any() and trained_rows[16:].any()  # each node's shard was trained and gathered
