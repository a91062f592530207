"""`visage submit --dry-run`, the rendered sbatch script and cluster profiles (no cluster needed).

The script is not only inspected: it is run by bash with a fake ``srun`` that records its argv, so
quoting is checked by the shell itself, and each job-array task is run with its SLURM_ARRAY_TASK_ID.
"""
from __future__ import annotations

import argparse
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from slurm.cli import add_submit_arguments, run_submit
from slurm.profile import ProfileError, load_profile
from slurm.submit import SubmitError, job_name_for, plan_job, run_dirs_for

REPO = Path(__file__).resolve().parents[1]
CONFIG = "embedder/triplet.yaml"  # bundled: trainer.devices=2, strategy ddp, run.name embedder-triplet
TINY = ["trainer.max_epochs=null", "trainer.max_steps=3"]


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_slurm_bin(tmp_path, monkeypatch) -> Path:
    """``sbatch``/``scontrol`` that only record a call, first on PATH: a dry run must leave no record."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name in ("sbatch", "scontrol", "scancel"):
        write_executable(bin_dir / name, f"#!/bin/sh\necho {name} \"$@\" >> {tmp_path}/slurm-calls\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "slurm-calls"


def dry_run(args: list[str], capsys, cwd: Path, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    parser = argparse.ArgumentParser()
    add_submit_arguments(parser)
    code = run_submit(parser.parse_intermixed_args(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def directives(script: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            found.setdefault(key, []).append(value)
    return found


def srun_argv(script: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the script with bash and a fake ``srun`` that writes its arguments NUL-separated."""
    bin_dir = tmp_path / "srun-bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "srun-argv"
    write_executable(bin_dir / "srun", f"#!/bin/bash\nprintf '%s\\0' \"$@\" > {record}\n")
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(script)
    full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "77",
                "SLURM_JOB_NODELIST": "n1", **(env or {})}
    subprocess.run(["bash", str(script_path)], env=full_env, check=True, capture_output=True, cwd=tmp_path)
    return record.read_bytes().decode().split("\0")[:-1]


def test_dry_run_prints_a_complete_script_and_submits_nothing(tmp_path, capsys, monkeypatch, fake_slurm_bin):
    code, script, err = dry_run([CONFIG, *TINY, "--cluster", "local", "--dry-run"], capsys, tmp_path, monkeypatch)
    assert code == 0, err
    assert not fake_slurm_bin.exists(), "a dry run called sbatch/scontrol"
    d = directives(script)
    assert d["--nodes"] == ["1"]
    assert d["--ntasks-per-node"] == ["2"]  # = trainer.devices of the config: one task per device
    assert d["--cpus-per-task"] == ["1"]
    assert d["--signal"] == ["SIGUSR1@90"]  # no "B:": every srun task, not only the batch shell
    assert not [line for line in script.splitlines() if line.startswith("#SBATCH") and "B:" in line]
    assert "--requeue" in d and d["--open-mode"] == ["append"]
    run_parent = tmp_path.resolve() / "runs" / "embedder-triplet"
    assert d["--output"] == [f"{run_parent}/slurm-%j/slurm.out"]
    assert d["--error"] == [f"{run_parent}/slurm-%j/slurm.err"]
    assert d["--chdir"] == [str(tmp_path.resolve())]
    assert d["--job-name"] == ["embedder-triplet"]
    assert d["--time"] == ["00:30:00"]
    assert "--gres" not in d and "--gpus-per-node" not in d and "--array" not in d
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert srun_argv(script, tmp_path) == ["--kill-on-bad-exit=1", "visage", "fit", CONFIG, *TINY,
                                           "trainer.accelerator=cpu", "trainer.num_nodes=1", "trainer.devices=2"]


def test_overrides_survive_the_shell_exactly(tmp_path, capsys, monkeypatch):
    tricky = ["logging.project=it's a \"project\" $HOME `id` ; rm -rf /", "optim.lr=0.0005"]
    code, script, err = dry_run([CONFIG, *tricky, "--cluster", "local", "--nodes", "2", "--gpus-per-node", "3",
                                 "--dry-run"], capsys, tmp_path, monkeypatch)
    assert code == 0, err
    argv = srun_argv(script, tmp_path)
    assert argv[4:6] == tricky
    assert argv[-2:] == ["trainer.num_nodes=2", "trainer.devices=3"]
    d = directives(script)
    assert d["--nodes"] == ["2"] and d["--ntasks-per-node"] == ["3"]


def test_sweep_renders_a_job_array_with_one_task_per_combination(tmp_path, capsys, monkeypatch):
    code, script, err = dry_run([CONFIG, *TINY, "--cluster", "local", "--sweep", "optim.lr=0.1,0.01",
                                 "--sweep", "model.embedding_size=64,32", "--dry-run"], capsys, tmp_path, monkeypatch)
    assert code == 0, err
    d = directives(script)
    assert d["--array"] == ["0-3"]
    assert d["--output"][0].endswith("/slurm-%A_%a/slurm.out")
    expected = [["optim.lr=0.1", "model.embedding_size=64"], ["optim.lr=0.1", "model.embedding_size=32"],
                ["optim.lr=0.01", "model.embedding_size=64"], ["optim.lr=0.01", "model.embedding_size=32"]]
    for task, swept in enumerate(expected):
        argv = srun_argv(script, tmp_path, {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "70"})
        assert argv[4:] == [*TINY, *swept, "trainer.accelerator=cpu", "trainer.num_nodes=1", "trainer.devices=2"]
    script_path = tmp_path / "job.sbatch"
    outside = subprocess.run(["bash", str(script_path)], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": "4"})
    assert outside.returncode != 0 and "no sweep entry for array task 4" in outside.stderr


def test_sweep_task_run_dirs_follow_the_trainer_naming(tmp_path):
    spec = plan_job(CONFIG, TINY, load_profile("local"), sweep=["optim.lr=0.1,0.01,0.001"], workdir=tmp_path)
    parent = tmp_path.resolve() / "runs" / "embedder-triplet"
    assert run_dirs_for(spec, "812") == [parent / "slurm-812_0", parent / "slurm-812_1", parent / "slurm-812_2"]
    plain = plan_job(CONFIG, TINY, load_profile("local"), workdir=tmp_path)
    assert run_dirs_for(plain, "813") == [parent / "slurm-813"]
    fixed = plan_job(CONFIG, [*TINY, "run.id=first-try"], load_profile("local"), workdir=tmp_path)
    assert run_dirs_for(fixed, "814") == [parent / "first-try"]


def test_gpu_profile_requests_gpus_and_carries_setup_and_environment(tmp_path, capsys, monkeypatch):
    code, script, err = dry_run([CONFIG, *TINY, "--cluster", "example-gpu", "--nodes", "2", "--time", "2-00:00:00",
                                 "--partition", "big", "--account", "proj42", "--dry-run"], capsys, tmp_path,
                                monkeypatch)
    assert code == 0, err
    d = directives(script)
    assert d["--gres"] == ["gpu:2"]  # trainer.devices=2 of the config, within the profile's 4 per node
    assert d["--ntasks-per-node"] == ["2"] and d["--cpus-per-task"] == ["8"] and d["--mem"] == ["0"]
    assert d["--partition"] == ["big"] and d["--account"] == ["proj42"] and d["--time"] == ["2-00:00:00"]
    assert d["--signal"] == ["SIGUSR1@120"]
    body = script.split("set -eo pipefail", 1)[1]
    order = ["module purge", "module load cuda/12.4", 'source "$HOME/venvs/visage/bin/activate"',
             "export NCCL_SOCKET_IFNAME=ib0", "\nsrun --kill-on-bad-exit=1"]
    positions = [body.index(line) for line in order]
    assert positions == sorted(positions)
    assert "trainer.accelerator=gpu trainer.num_nodes=2 trainer.devices=2" in script
    code, script, err = dry_run([CONFIG, *TINY, "trainer.devices=auto", "--cluster", "example-gpu", "--dry-run"],
                                capsys, tmp_path, monkeypatch)
    assert code == 0, err
    assert directives(script)["--gres"] == ["gpu:4"]  # "auto": every GPU of a node


def test_gpus_per_node_request_with_a_type(tmp_path):
    profile_path = tmp_path / "typed.yaml"
    profile_path.write_text('accelerator: gpu\ngpus_per_node: 8\ngpu_request: gpus-per-node\ngpu_type: a100\n'
                            'qos: high\nconstraint: a100\ntime: "04:00:00"\nsbatch_args: ["--exclusive"]\n')
    from slurm.render import render_script  # noqa: PLC0415

    script = render_script(plan_job(CONFIG, TINY, load_profile(str(profile_path)), gpus_per_node=4, workdir=tmp_path))
    d = directives(script)
    assert d["--gpus-per-node"] == ["a100:4"] and "--gres" not in d
    assert d["--qos"] == ["high"] and d["--constraint"] == ["a100"] and "--exclusive" in d


@pytest.mark.parametrize("args, message", [
    (["trainer.bogus=1"], "trainer.bogus"),
    (["model.mining=semi_hard"], "model.margin"),
    (["trainer.devices=auto"], "trainer.devices"),
    (["trainer.strategy=ddp_spawn"], "trainer.strategy"),
    (["--sweep", "trainer.devices=1,2"], "trainer.devices"),
    (["run.id=x", "--sweep", "optim.lr=0.1,0.2"], "run.id"),
    (["--sweep", "optim.lr=0.1,,0.2"], "--sweep"),
    (["--sweep", "optim.lr=0.1,bad"], "optim.lr"),
    (["run.root=/tmp/with space"], "run.root"),
    (["--time", "tomorrow"], "--time"),
    (["--cluster", "no-such-profile"], "no-such-profile"),
])
def test_bad_jobs_are_refused_before_anything_is_submitted(args, message, tmp_path, capsys, monkeypatch,
                                                            fake_slurm_bin):
    cluster = [] if "--cluster" in args else ["--cluster", "local"]
    code, _, err = dry_run([CONFIG, *TINY, *args, *cluster], capsys, tmp_path, monkeypatch)
    assert code == 2
    assert message in err
    assert not fake_slurm_bin.exists(), "sbatch was called for a job that should have been refused"


def test_too_many_gpus_for_the_profile_is_refused():
    with pytest.raises(SubmitError, match="gpus_per_node=4"):
        plan_job(CONFIG, TINY, load_profile("example-gpu"), gpus_per_node=8)


@pytest.mark.parametrize("text, message", [
    ("gpus: 4\n", "gpus: unknown key"),
    ("accelerator: tpu\n", "accelerator: must be cpu or gpu"),
    ("accelerator: gpu\n", "gpus_per_node: a gpu profile needs"),
    ("gpus_per_node: 2\n", "gpus_per_node: a cpu profile"),
    ("time: 24:00:00\n", "time: YAML read"),
    ("time: 'soon'\n", "time: not a SLURM time"),
    ("cpus_per_task: two\n", "cpus_per_task: expected int"),
    ("mem: 64 GB\n", "mem:"),
    ("env: {'bad-name': 1}\n", "env: 'bad-name'"),
    ("sbatch_args: ['exclusive']\n", "sbatch_args:"),
    ("partition: 'a b'\n", "partition:"),
    ("- a list\n", "mapping"),
])
def test_profile_errors_name_the_key(text, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_bundled_profiles_load():
    local, gpu = load_profile("local"), load_profile("example-gpu")
    assert (local.accelerator, local.gpus_per_node, local.env["OMP_NUM_THREADS"]) == ("cpu", 0, "1")
    assert (gpu.accelerator, gpu.gpus_per_node, gpu.gpu_request, gpu.mem) == ("gpu", 4, "gres", "0")
    assert load_profile(str(REPO / "configs" / "cluster" / "local.yaml")) == local


def test_visage_cli_registers_submit(tmp_path):
    """The console script: `visage submit ... --dry-run`, options after the overrides."""
    visage = Path(sys.executable).parent / "visage"
    if not visage.exists():
        pytest.skip("the visage console script is not installed in this environment")
    out = subprocess.run([str(visage), "submit", CONFIG, "--cluster", "local", *TINY, "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout.strip().splitlines()[-1])[-5:-3] == TINY


@pytest.mark.parametrize("run_name, job_name", [("bash", "visage-bash"), ("interactive", "visage-interactive"),
                                                ("faces/r50 v2", "faces-r50-v2")])
def test_job_names_are_never_ones_lightning_ignores(run_name, job_name):
    assert job_name_for(run_name) == job_name


def test_the_job_is_named_after_the_run(tmp_path):
    assert plan_job(CONFIG, [*TINY, "run.name=bash"], load_profile("local"), workdir=tmp_path).job_name == "visage-bash"
