"""Faults injected into real processes (issue 12, parts 3 and 4): no rank spins, hangs or outlives its
job, and a signal always leaves a checkpoint and an honest exit status.

Runs are real `visage fit` commands: 2 DDP ranks on gloo started by Lightning's launcher (one
process started here, which starts the other), or jobs of the throw-away local SLURM cluster.
Every process of a run carries an environment marker (children inherit it, loader workers too), so
"nothing left running" is checked in /proc, not trusted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from datamodules.batchers import PlainBatcher
from datamodules.epoch_loader import EpochLoader
from datamodules.shard_stream import ShardStream
from datamodules.shards import read_index
from datamodules.starvation import NoTrainingSamples
from tests.conftest import REPO, write_identity_split
from tests.slurm_cluster import FINISHED_STATES, job_logs, visage_submit
from tests.slurm_cluster import _slurm_one_node, slurm_cluster  # noqa: F401 (fixtures used by the tests)
from tests.test_fit_embedder import EXPERIMENT, csv_rows, single
from tests.test_slurm_jobs import small_run, train_rows, wait_until_training
from trainers.cli import main as visage

MARK = "VISAGE_FAULT_MARK"
DDP_TIMEOUT_S = 20


# -- data: good shards, and shards where rank 1 of 2 gets only an empty and a corrupt shard ------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault-data")
    good, starved = root / "good", root / "starved"
    for folder in (good, starved):
        write_identity_split(folder, "train", range(0, 16), 5, size=32, shard_size=20)  # 4 shards of 20
        write_identity_split(folder, "val", range(100, 106), 4, size=32)
    # shard i goes to rank i mod 2: rank 1 reads shards 1 and 3
    (starved / "train" / "shard-000001.tar").write_bytes(b"")
    (starved / "train" / "shard-000003.tar").write_bytes(os.urandom(3000))
    return {"good": good, "starved": starved}


# -- processes of a run --------------------------------------------------------------------------
def marked(mark: str) -> list[int]:
    """Every live process whose environment carries the run's marker."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{MARK}={mark}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or a zombie
            continue
    return [pid for pid in found if _state(pid) not in ("Z", "")]


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rfind(")") + 2:].split()[0]


def rank_process(mark: str, launcher: int, local_rank: int) -> int | None:
    """The rank the launcher started (its child with LOCAL_RANK set), not a loader worker."""
    for pid in marked(mark):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2:].split()[1])
        if parent == launcher and f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    return None


class DDPRun:
    """`visage fit` on 2 ranks in a subprocess of its own session, stderr kept in a file."""

    def __init__(self, tmp_path: Path, data_root: Path, *overrides: str):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.mark, self.err_path = uuid.uuid4().hex, tmp_path / "stderr.txt"
        self.run_root = tmp_path / "runs"
        args = ["fit", EXPERIMENT, "data.synthetic=null", f"data.root={data_root}", "data.image_size=32",
                "data.batch_size=16", "data.sampler.p=4", "data.sampler.k=4", "data.sampler.pool_size=32",
                "data.num_workers=1", "data.batches_per_epoch=4", "data.val_pairs=50", "model.width=8",
                "model.embedding_size=16", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "logging.wandb=disabled",
                "logging.pictures=false", f"trainer.ddp_timeout_s={DDP_TIMEOUT_S}", f"run.root={self.run_root}",
                *overrides]
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainers.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                         stderr=err, env={**os.environ, MARK: self.mark}, start_new_session=True)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_training(self, timeout: float = 600) -> None:
        """Until rank 0 printed its model summary (both ranks have met) and a few steps ran."""
        deadline = time.monotonic() + timeout
        while "Total Flops" not in self.stderr():
            assert self.proc.poll() is None, f"the run ended before training:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"training never started:\n{self.stderr()[-3000:]}"
            time.sleep(0.3)
        time.sleep(3)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_everything()
            pytest.fail(f"the run did not end within {timeout:.0f} s:\n{self.stderr()[-3000:]}")

    def left_running(self, settle_s: float = 3.0) -> list[int]:
        """Processes of the run still alive (after giving exiting ones ``settle_s``)."""
        deadline = time.monotonic() + settle_s
        while (left := marked(self.mark)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_everything(self) -> None:
        for pid in marked(self.mark):
            os.kill(pid, signal.SIGKILL)

    def visage_lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.startswith("visage:")]


@pytest.fixture
def ddp_run(tmp_path):
    runs: list[DDPRun] = []

    def start(data_root: Path, *overrides: str) -> DDPRun:
        runs.append(DDPRun(tmp_path / f"run{len(runs)}", data_root, *overrides))
        return runs[-1]

    yield start
    for run in runs:  # never leave a process behind, whatever the test found
        run.kill_everything()


# -- loader workers and the stop signals ---------------------------------------------------------
WORKERS_SCRIPT = """
import subprocess, sys, torch
from datamodules.loader_workers import WorkerInit, WorkerLoader
loader = WorkerLoader(torch.arange(64), batch_size=4, num_workers=2, persistent_workers=True, worker_init_fn=WorkerInit())
it = iter(loader)
next(it)
workers = [str(w.pid) for w in it._workers]
print(" ".join(workers), flush=True)
subprocess.run(["kill", "-TERM", *workers], check=True)  # as SLURM does: not from the workers' parent
subprocess.run(["kill", "-USR1", *workers], check=True)
assert sum(len(batch) for batch in it) == 60  # the rest of the epoch: no worker died
"""


def test_loader_workers_ignore_the_stop_signals_and_still_end_with_their_process():
    """SLURM signals every process of a job step; a worker that died of it would fail the training
    process's next batch. A worker must still end when its own process ends it (Python's exit sends
    its daemon workers SIGTERM and waits for them: a worker ignoring that hangs the exit)."""
    done = subprocess.run([sys.executable, "-c", WORKERS_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    workers = [int(pid) for pid in done.stdout.split()]
    assert len(workers) == 2 and not [pid for pid in workers if _state(pid) not in ("", "Z")]


# -- a rank with nothing to read ---------------------------------------------------------------
def test_a_stream_whose_shards_yield_nothing_raises_instead_of_spinning(data, tmp_path):
    """In one process: empty and corrupt shards, shards whose every sample is bad, no shards at all."""
    starved = read_index(data["starved"] / "train").shards
    stream = ShardStream([starved[1], starved[3]], lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=1)
    with pytest.raises(NoTrainingSamples, match=r"rank 0 can read no training sample .*shard-000001.tar, .*"
                                                r"shard-000003.tar \(every one is empty or unreadable\)"):
        next(iter(EpochLoader(stream, batches_per_epoch=2, num_workers=0)))
    # the same through a loader worker: its one-line message, not the worker's traceback
    stream = ShardStream([starved[1], starved[3]], lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=1)
    with pytest.raises(NoTrainingSamples) as raised:
        next(iter(EpochLoader(stream, batches_per_epoch=2, num_workers=1)))
    assert "\n" not in str(raised.value) and str(raised.value).startswith("rank 0 can read no training sample")
    # records that are all bad: every sample lacks the field the task needs
    good = read_index(data["good"] / "train").shards
    stream = ShardStream(good[:2], lambda s: {"key": s.key}, PlainBatcher(4), ("no_such_field",), seed=1)
    with pytest.raises(NoTrainingSamples, match=r"all 40 samples in them are bad"):
        next(iter(EpochLoader(stream, batches_per_epoch=2, num_workers=0)))
    with pytest.raises(NoTrainingSamples, match="rank 3 has no training shards"):
        empty = ShardStream([], lambda s: {"key": s.key}, PlainBatcher(4), ("identity",))
        empty.rank, empty.world = 3, 4
        next(iter(empty))
    # a good shard among bad ones is found, however long the bad ones take to be read
    mixed = ShardStream([starved[1], starved[3], good[0]], lambda s: {"key": s.key}, PlainBatcher(4), ("identity",),
                        seed=2, shuffle_buffer=50)
    assert len(next(iter(EpochLoader(mixed, batches_per_epoch=1, num_workers=0)))["key"]) == 4


@pytest.mark.ddp
@pytest.mark.slow
def test_a_rank_whose_shards_yield_nothing_stops_every_rank_with_one_line(data, ddp_run):
    run = ddp_run(data["starved"], "trainer.max_epochs=2")
    started = time.monotonic()
    code = run.wait(timeout=600)
    lines = run.visage_lines()
    assert code == 2, run.stderr()[-3000:]
    assert any("rank 1 can read no training sample from its shards" in line and "shard-000001.tar" in line
               and "shard-000003.tar" in line for line in lines), run.stderr()[-3000:]
    assert "Traceback" not in run.stderr(), "every rank says what happened in one line"
    assert run.left_running() == [], f"left running: {run.left_running()}"
    print(f"starved rank: the run ended with {code} after {time.monotonic() - started:.0f} s")


# -- a dead rank, a frozen rank ----------------------------------------------------------------
@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_dead_or_frozen_rank_ends_the_run_within_the_ddp_timeout_and_leaves_nothing(fault, data, ddp_run):
    run = ddp_run(data["good"], "trainer.max_epochs=null", "trainer.max_steps=100000")
    run.wait_for_training()
    rank1 = rank_process(run.mark, run.proc.pid, 1)
    assert rank1 is not None and len(marked(run.mark)) >= 3, "two ranks and their loader workers"
    os.kill(rank1, fault)
    hit = time.monotonic()
    code = run.wait(timeout=DDP_TIMEOUT_S + 120)
    took = time.monotonic() - hit
    print(f"{fault.name}: the run ended with {code} {took:.1f} s after rank 1 was hit")
    assert took < DDP_TIMEOUT_S + 30, f"{took:.0f} s: longer than the ddp timeout plus a margin"
    assert code == 128 + signal.SIGKILL  # rank 1 ended by SIGKILL (frozen: killed by its launcher)
    lines = " ".join(run.visage_lines())
    expected = "was killed by SIGKILL" if fault == signal.SIGKILL else "is stopped (frozen): killed it"
    assert f"rank 1 (pid {rank1}) {expected}" in lines, run.stderr()[-3000:]
    assert "Traceback" not in run.stderr()
    assert run.left_running() == [], "a rank or a loader worker outlived the run"


# -- num_nodes outside a cluster ---------------------------------------------------------------
def test_num_nodes_above_one_outside_slurm_is_a_config_error(tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in ("NODE_RANK", "RANK", "GROUP_RANK")]:
        monkeypatch.delenv(key)
    assert visage(["fit", EXPERIMENT, *single(tmp_path), "trainer.num_nodes=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visage: config error: trainer.num_nodes=2 outside a SLURM allocation") and "NODE_RANK" in err
    assert err.count("\n") == 1 and not list(tmp_path.iterdir()), "nothing is written"


# -- SIGTERM outside SLURM -----------------------------------------------------------------------
def test_sigterm_before_training_exits_143_and_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    from datamodules.base import ShardDataModule

    def terminated(self):  # the signal arrives while the data is being prepared
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(ShardDataModule, "prepare_data", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    assert visage(["fit", EXPERIMENT, *single(tmp_path)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "visage: terminated (SIGTERM) before training started: nothing to save"
    assert signal.getsignal(signal.SIGTERM) == handler, "the command left its handler behind"
    assert not list(tmp_path.glob("*/*/checkpoints/*.ckpt"))


@pytest.mark.ddp
@pytest.mark.slow
def test_sigterm_on_two_ranks_saves_one_checkpoint_at_a_step_and_resumes_there(data, ddp_run, tmp_path, capsys):
    run = ddp_run(data["good"], "trainer.max_epochs=null", "trainer.max_steps=100000")
    run.wait_for_training()
    # to rank 1 alone: the ranks agree at a step boundary (a SIGTERM to the process the user started
    # is also passed on to the ranks it started)
    os.kill(rank_process(run.mark, run.proc.pid, 1), signal.SIGTERM)
    code = run.wait(timeout=300)
    assert code == 143, run.stderr()[-3000:]
    (line,) = [line for line in run.visage_lines() if "SIGTERM" in line]
    run_dir = run.run_root / "embedder-triplet" / "local-0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith(f"visage: terminated (SIGTERM): saved {last} at global step ")
    assert line.endswith("run.resume=auto resumes from it")
    step = int(line.split("at global step ")[1].split(";")[0])
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == step >= 1
    adam = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert adam == {float(step)}, "weights and step counter of the checkpoint disagree"
    assert run.left_running() == []
    assert not (run_dir / "metrics.json").exists(), "a terminated run must not look finished"
    # resumable: run.resume=auto continues at that step (here on one rank, in this process)
    overrides = [o for o in single(run.run_root) if not o.startswith(("data.", "model.width", "model.embedding"))]
    assert visage(["fit", EXPERIMENT, *overrides, "data.synthetic=null", f"data.root={data['good']}",
                   "data.image_size=32", "data.batch_size=16", "data.sampler.p=4", "data.sampler.k=4",
                   "data.sampler.pool_size=32", "data.num_workers=1", "data.batches_per_epoch=4", "data.val_pairs=50",
                   "model.width=8", "model.embedding_size=16", "logging.pictures=false", "trainer.max_epochs=null",
                   f"trainer.max_steps={step + 2}", "run.resume=auto"]) == 0
    resumed = [int(r["step"]) for r in csv_rows(run_dir) if r.get("train/loss")]
    assert resumed[-2:] == [step, step + 1], "the resumed run continues at the saved step"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == step + 2


# -- signals under the real local SLURM -------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_shards(data) -> Path:
    return data["good"]


@pytest.mark.slurm
@pytest.mark.slow
def test_sigterm_under_slurm_fails_the_job_with_a_checkpoint_that_scontrol_requeue_resumes(
        slurm_cluster, slurm_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    max_steps = 30
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, small_run(
        slurm_shards, max_steps, "data.num_workers=1", "data.batches_per_epoch=4", "--gpus-per-node", "2"))
    deadline = time.monotonic() + 600
    wait_until_training(slurm_cluster, job, run_dir, deadline)
    slurm_cluster.run(["scancel", "--signal=TERM", job])  # every process of the job step, loader workers too
    state = slurm_cluster.wait_job(job, timeout=300)
    fields = slurm_cluster.job_fields(job)
    assert state == "FAILED" and fields.get("ExitCode") == "143:0", f"{state} {fields.get('ExitCode')}\n" + \
        job_logs(run_dir)
    saved = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in saved] == ["hpc_ckpt_1.ckpt"], job_logs(run_dir)
    step = torch.load(saved[0], map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= step < max_steps
    err = (run_dir / "slurm.err").read_text()
    assert f"visage: terminated (SIGTERM): saved {saved[0]} at global step {step}; scontrol requeue {job} " \
           "resumes from it" in err, job_logs(run_dir)
    assert "killed by signal" not in err, "a loader worker died of the signal"
    assert not (run_dir / "metrics.json").exists()
    # what SLURM (or the user) does next: requeue the job; it resumes from that checkpoint
    slurm_cluster.run(["scontrol", "requeue", job])
    while slurm_cluster.job_fields(job).get("Restarts") != "1":
        assert time.monotonic() < deadline, "the job was not requeued\n" + job_logs(run_dir)
        time.sleep(0.3)
    assert slurm_cluster.wait_job(job, timeout=600) == "COMPLETED", job_logs(run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["global_step"], summary["restart_count"]) == (max_steps, 1)
    assert train_rows(run_dir / "csv-1" / "metrics.csv")[0] == step, "the requeued job resumed at the saved step"


@pytest.mark.slurm
@pytest.mark.slow
def test_requeue_signal_before_training_requeues_and_the_requeued_job_completes(
        slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("VISAGE_CACHE", str(tmp_path / "cache"))  # the job renders its synthetic data
    args = [a for a in small_run(tmp_path, 3) if not a.startswith(("data.synthetic=", "data.root="))] + [
        "data.synthetic.identities=150", "data.synthetic.val_identities=10", "data.synthetic.per_identity=6",
        "data.synthetic.size=48", "--gpus-per-node", "2"]
    job, (run_dir,) = visage_submit(slurm_cluster, tmp_path, args)
    deadline = time.monotonic() + 600
    err_log = run_dir / "slurm.err"
    while not (err_log.exists() and "rendering synthetic faces" in err_log.read_text(errors="replace")):
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING"), job_logs(run_dir)
        assert time.monotonic() < deadline, "the job never started rendering\n" + job_logs(run_dir)
        time.sleep(0.2)
    slurm_cluster.run(["scancel", "--signal=USR1", job])
    while slurm_cluster.job_fields(job).get("Restarts") != "1":
        assert slurm_cluster.job_state(job) not in FINISHED_STATES, "no requeue\n" + job_logs(run_dir)
        assert time.monotonic() < deadline, "no requeue\n" + job_logs(run_dir)
        time.sleep(0.2)
    assert slurm_cluster.wait_job(job, timeout=600) == "COMPLETED", job_logs(run_dir)
    err = err_log.read_text(errors="replace")
    assert f"visage: requeue signal before training started: nothing to save; requeued job {job}" in err
    assert err.count("visage: requeue signal") == 1, "one line, from rank 0 only"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["global_step"], summary["restart_count"]) == (3, 1)
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
