"""Dashboard run ids, groups and credentials: made once per run directory, shared, never reused."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainers.dashboard import default_group, display_name, has_wandb_credentials, wandb_mode
from trainers.run_dir import DASHBOARD_FILE, _create_once, dashboard_run, new_dashboard_run


def _race(run_dir: str, barrier, results) -> None:
    barrier.wait()
    results.put(dashboard_run(Path(run_dir)).id)


def test_every_process_starting_at_once_reads_the_same_id(tmp_path):
    """As srun starts every rank of a job together, each computing the same run directory."""
    run_dir = tmp_path / "embedder-triplet" / "slurm-77"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_race, args=(str(run_dir), barrier, results)) for _ in range(6)]
    for process in processes:
        process.start()
    ids = {results.get(timeout=60) for _ in processes}
    for process in processes:
        process.join(timeout=60)
    assert len(ids) == 1
    assert json.loads((run_dir / DASHBOARD_FILE).read_text())["id"] in ids
    assert not [p for p in run_dir.iterdir() if p.name != DASHBOARD_FILE], "a private copy was left behind"


def test_the_first_creator_wins_and_the_file_is_never_overwritten(tmp_path):
    path = tmp_path / DASHBOARD_FILE
    _create_once(path, '{"id": "first", "group": "g"}\n')
    _create_once(path, '{"id": "second", "group": "g"}\n')  # a rank that lost the race
    assert dashboard_run(tmp_path) == ("first", "g")


def test_a_requeue_reads_the_id_and_a_new_run_directory_gets_a_new_one(tmp_path):
    run_dir = tmp_path / "runs" / "embedder-triplet" / "local-0"
    first = dashboard_run(run_dir)
    assert dashboard_run(run_dir) == first  # a requeue or a resume of the same run
    assert first.id.startswith("embedder-triplet-local-0-") and first.group == first.id
    (run_dir / DASHBOARD_FILE).unlink()  # rm -rf runs, or a fresh clone
    assert dashboard_run(run_dir).id != first.id
    assert dashboard_run(tmp_path / "other" / "local-0").id != first.id
    assert dashboard_run(tmp_path / "grouped", "sweep-9").group == "sweep-9"


def test_each_evaluation_gets_a_new_dashboard_run(tmp_path):
    ids = {new_dashboard_run(tmp_path / "validate", "training-run").id for _ in range(3)}
    assert len(ids) == 3
    assert dashboard_run(tmp_path / "validate").group == "training-run"


def cfg(**logging):
    return OmegaConf.create({"run": {"name": "embedder-triplet", "root": "runs"},
                             "logging": {"name": None, **logging}})


def test_sweep_tasks_share_a_group_and_evaluations_join_their_training_run(tmp_path):
    env = {"SLURM_ARRAY_JOB_ID": "500", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "503"}
    assert default_group(cfg(), "fit", None, env) == "embedder-triplet-sweep-500"
    assert default_group(cfg(), "fit", None, {}) is None  # a training run is its own group
    trained = tmp_path / "embedder-triplet" / "slurm-500_3"
    training = dashboard_run(trained, "embedder-triplet-sweep-500")
    (trained / "config.yaml").write_text("task: embedder\n")
    for checkpoint in (trained / "checkpoints" / "last.ckpt", trained / "hpc_ckpt_2.ckpt"):
        assert default_group(cfg(), "validate", str(checkpoint), {}) == training.group
    untracked = tmp_path / "embedder-triplet" / "local-4" / "checkpoints" / "last.ckpt"  # trained without wandb
    assert default_group(cfg(), "test", str(untracked), {}) == "embedder-triplet-local-4"


def test_display_name(tmp_path):
    run_dir = tmp_path / "runs" / "embedder-triplet" / "local-0" / "validate-1"
    config = cfg()
    config.run.root = str(tmp_path / "runs")
    assert display_name(config, run_dir) == "embedder-triplet/local-0/validate-1"
    assert display_name(cfg(name="baseline"), run_dir) == "baseline"


def test_credentials_from_the_environment_or_the_netrc_file_wandb_login_writes(tmp_path):
    netrc = tmp_path / "netrc"
    assert not has_wandb_credentials({"NETRC": str(netrc)})
    assert has_wandb_credentials({"WANDB_API_KEY": "x" * 40})
    wbnetrc = pytest.importorskip("wandb.sdk.lib.wbauth.wbnetrc")
    with pytest.MonkeyPatch.context() as patch:  # what `wandb login` does: wandb's own writer
        patch.setenv("NETRC", str(netrc))
        wbnetrc.write_netrc_auth(host="https://api.wandb.ai", api_key="k" * 40)
    assert has_wandb_credentials({"NETRC": str(netrc)})
    assert wandb_mode("online", {"NETRC": str(netrc)}) == "online"
    # a key for another server does not log in to this one
    assert not has_wandb_credentials({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine wandb.example.org\n  login user\n  password " + "p" * 40 + "\n")
    assert has_wandb_credentials({"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.org"})


def test_online_without_credentials_logs_offline(tmp_path, caplog):
    assert wandb_mode("online", {"NETRC": str(tmp_path / "none")}) == "offline"
    assert "wandb login" in caplog.text
    assert wandb_mode("disabled", {}) == "disabled"
