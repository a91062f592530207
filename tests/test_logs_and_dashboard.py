"""What a cluster user reads: plain progress lines in a piped stdout and train.log, the bar in a
terminal, and real offline wandb runs read back from their files.

One small job, run as SLURM would run it (stdout a pipe, ``SLURM_JOB_ID`` naming the run
directory, wandb offline): a fit of 2 epochs x 4 steps, the same job "requeued" to 3 epochs
(``run.resume=auto`` resumes it in the same directory), then two ``validate`` of its last checkpoint
(each in a folder of its own, ``<run>/validate-N``).
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.wandb_records import offline_runs
from trainers.tasks import TASKS

EXPERIMENT = "configs/embedder/triplet.yaml"
JOB = "4242"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
NUMBER = r"-?\d+\.\d+(e[+-]\d+)?"
TRAINING_LINE = re.compile(rf"^{STAMP} epoch=\d+ step=(\d+)/(\d+) train/loss={NUMBER}( train/\S+={NUMBER})* "
                           rf"lr=\d\.\d\de[+-]\d\d samples/s=\d+\.\d data_wait=\d+% eta=\d+:\d\d:\d\d$")
VALIDATION_LINE = re.compile(rf"^{STAMP} validation epoch=\d+ step=(\d+) val/accuracy=({NUMBER}) "
                             rf"best=({NUMBER})@(\d+)( val/\S+={NUMBER})+$")
START_LINE = re.compile(rf"^{STAMP} fit: starting at step=(\d+)/(\d+) epoch=\d+ world_size=1 log=\S+train.log$")


def common(root: Path) -> list[str]:
    return [*TASKS["embedder"].tiny, "trainer.devices=1", "trainer.strategy=auto", "model.cross_rank_mining=false",
            "trainer.log_every_n_steps=1", "logging.wandb=offline", "logging.progress_every_n_steps=2",
            "logging.tags=[smoke,cpu]", "logging.notes=a note", f"run.root={root}"]


def visage(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "trainers.cli", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "WANDB_MODE": "offline", "SLURM_JOB_ID": JOB}
    first = visage(["fit", EXPERIMENT, *common(root), "trainer.max_epochs=2"], env)
    run_dir = root / "embedder-triplet" / f"slurm-{JOB}"
    requeued = visage(["fit", EXPERIMENT, *common(root), "trainer.max_epochs=3", "run.resume=auto"], env)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    validations = [visage(["validate", EXPERIMENT, *common(root), "--ckpt", str(checkpoint)],
                          {**os.environ, "WANDB_MODE": "offline"}) for _ in range(2)]
    return run_dir, first, requeued, validations


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(STAMP, line)]


@pytest.mark.slow
def test_a_piped_stdout_gets_plain_lines_every_n_steps_and_after_each_validation(job):
    _, first, _, _ = job
    assert "\r" not in first.stdout and "\x1b" not in first.stdout, "bar frames or ANSI codes in a piped stdout"
    assert "v_num" not in first.stdout + first.stderr
    lines = lines_of(first.stdout)
    assert START_LINE.match(lines[0]) and START_LINE.match(lines[0]).groups() == ("0", "8")
    training = [TRAINING_LINE.match(line) for line in lines[1:] if " validation " not in line]
    assert all(training), [line for line, m in zip(lines, training) if not m]
    assert [(int(m.group(1)), int(m.group(2))) for m in training] == [(2, 8), (4, 8), (6, 8), (8, 8)]
    validation = [VALIDATION_LINE.match(line) for line in lines if " validation " in line]
    assert all(validation) and [int(m.group(1)) for m in validation] == [4, 8]
    # the best so far is the highest val/accuracy printed, at the step it was printed at
    values = [float(m.group(2)) for m in validation]
    best, at = float(validation[-1].group(4)), int(validation[-1].group(6))
    assert best == max(values) and values[[4, 8].index(at)] == best
    assert len(lines) == 1 + 8 // 2 + 2  # start, every 2nd step, each validation


@pytest.mark.slow
def test_train_log_holds_the_same_lines_appended_across_a_requeue(job):
    run_dir, first, requeued, _ = job
    log = (run_dir / "train.log").read_text().splitlines()
    assert log[:7] == lines_of(first.stdout)
    assert log[7:] == lines_of(requeued.stdout)
    assert START_LINE.match(log[7]).groups() == ("8", "12")  # resumed at step 8 of 12
    assert [int(TRAINING_LINE.match(line).group(1)) for line in log[8:] if TRAINING_LINE.match(line)] == [10, 12]


@pytest.mark.slow
def test_no_warning_noise(job):
    _, first, requeued, validations = job
    for result in (first, requeued, *validations):
        assert "anonymous setting" not in result.stderr
        assert "dirpath has changed" not in result.stderr
        assert "ambiguous collection" not in result.stderr
        assert "callbacks used to create the checkpoint" not in result.stderr
        assert "\x1b" not in result.stdout


@pytest.mark.slow
def test_one_dashboard_run_per_training_run_across_a_requeue(job):
    run_dir, _, _, _ = job
    stored = (run_dir / "dashboard.json").read_text()
    first, requeued = offline_runs(run_dir)
    assert first.run_id == requeued.run_id and first.run_id in stored
    assert first.run_id.startswith(f"embedder-triplet-slurm-{JOB}-") and len(first.run_id) > len(f"embedder-triplet-slurm-{JOB}-")
    assert (first.group, first.job_type, first.name) == (first.run_id, "fit", f"embedder-triplet/slurm-{JOB}")
    assert first.tags == ["smoke", "cpu"] and first.notes == "a note"


@pytest.mark.slow
def test_each_validate_is_a_dashboard_run_of_its_own_grouped_with_its_training_run(job):
    run_dir, _, _, validate_results = job
    for result in validate_results:  # one line, the checkpoint metric first, no step of its own
        (line,) = lines_of(result.stdout)
        assert re.match(rf"{STAMP} validation val/accuracy={NUMBER} val/", line)
    training = offline_runs(run_dir)[0]
    evaluations = [run for folder in sorted(run_dir.glob("validate-*")) for run in offline_runs(folder)]
    assert len(evaluations) == 2
    ids = {run.run_id for run in evaluations}
    assert len(ids) == 2 and training.run_id not in ids
    assert all(run.group == training.group and run.job_type == "validate" for run in evaluations)
    assert all(any("val/accuracy" in row for row in run.history) for run in evaluations)


@pytest.mark.slow
def test_the_config_is_logged_once(job):
    run_dir, _, _, _ = job
    for run in offline_runs(run_dir):
        sections = {key for key in run.config if not key.startswith("_")}
        assert sections == {"task", "run", "data", "model", "optim", "trainer", "logging", "finetune"}
        # wandb's own bookkeeping (e.g. the ROC chart's panel, under _wandb/visualize) aside
        again = [key for update in run.config_updates for key in update if not key.startswith("_wandb")]
        assert not again, f"config logged again: {again}"
        assert run.config["model"]["width"] == 8


@pytest.mark.slow
def test_the_summary_holds_the_best_and_the_last_value(job):
    run_dir, _, _, _ = job
    runs = offline_runs(run_dir)
    validations = [row for run in runs for row in run.history if "val/accuracy" in row]
    assert len(validations) == 3  # epochs 1-3: the validation after fit is not repeated
    values = [row["val/accuracy"] for row in validations]
    summary = runs[-1].summary
    assert summary["val/accuracy"] == pytest.approx(values[-1])
    assert summary["best/val/accuracy"] == pytest.approx(max(values))
    best_step = summary["best/global_step"]  # the global step of best-step<N>.ckpt, logged at N - 1
    assert best_step in (4, 8, 12) and values[(4, 8, 12).index(best_step)] == pytest.approx(max(values))
    assert (run_dir / "checkpoints" / f"best-step{best_step:06d}.ckpt").is_file()


@pytest.mark.slow
def test_validation_metrics_and_their_pictures_carry_the_same_step(job):
    run_dir, _, _, _ = job
    for run in offline_runs(run_dir):
        steps = [row["trainer/global_step"] for row in run.history if "val/accuracy" in row]
        assert len(steps) == len(set(steps)), "a validation logged twice"
        for key in ("pictures/samples", "pictures/roc", "pictures/retrieval", "pictures/roc_curve_table"):
            picture_steps = [row["trainer/global_step"] for row in run.history if any(k.startswith(key + "/") or k == key
                                                                                       for k in row)]
            assert picture_steps == steps, key
    last = offline_runs(run_dir)[-1]
    assert any("pictures/curves/filenames" in row or "pictures/curves" in row for row in last.history)


@pytest.mark.slow
def test_the_sample_picture_changes_between_validations(job):
    run_dir, _, _, _ = job
    pictures = run_dir / "pictures"
    shown = [(pictures / f"samples-step{step:06d}.png").read_bytes() for step in (4, 8, 12)]
    assert len(set(shown)) == 3
    assert (pictures / "curves-latest.png").is_file()


@pytest.mark.slow
def test_a_terminal_gets_the_bar_and_train_log_the_lines(tmp_path):
    """Under a pseudo-terminal: Lightning's bar (carriage-return frames, no v_num), no plain lines on
    stdout; train.log still gets them."""
    args = [sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, *common(tmp_path), "trainer.max_epochs=1",
            "logging.wandb=disabled"]
    parent, child = pty.openpty()
    # a terminal of 50 x 200 characters (a new pty has 0 columns, and tqdm then draws nothing)
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(args, cwd=REPO, stdin=child, stdout=child, stderr=subprocess.PIPE)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the terminal closed: the child has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(parent)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]
    text = output.decode(errors="replace")
    assert "\r" in text and "Epoch 0" in text and "train/loss" in text
    assert "v_num" not in text
    assert not TRAINING_LINE.search(text.replace("\r\n", "\n"))
    log = (tmp_path / "embedder-triplet" / "local-0" / "train.log").read_text().splitlines()
    assert [bool(TRAINING_LINE.match(line)) for line in log] == [False, True, True, False]  # start, 2, 4, validation
