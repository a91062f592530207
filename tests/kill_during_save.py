"""Killing a real `visage fit` at random moments around its checkpoint saves (tests/test_faults_checkpoints.py).

Each try starts `visage fit ... run.resume=auto` in the same run directory, waits until a save is
under way as seen from outside (a file appears or changes in the checkpoint folder or in TMPDIR:
wherever the writer keeps its partial file), waits a random delay (mostly within the save, every
third try later, in the steps after it) and SIGKILLs the run's whole process group (every rank, as a
node failure would). After each kill the checks of ``check_after_kill`` run; the next try resumes
from what the kill left. Nothing here knows how the writer works inside: the same loop catches
fsspec's write-to-TMPDIR-and-move as well as a temporary file beside the target.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "configs/embedder/triplet.yaml"
# a tiny run whose checkpoint is large (a 256 x 8192 embedding layer plus Adam's two moments: 27 MB),
# so that a save takes a measurable time, validated and checkpointed every 2 steps (with
# val_check_interval=1 Lightning 2.6 saves at epoch ends only: it reads 1 as "once per epoch")
SETTINGS = ("data.synthetic.identities=8", "data.synthetic.val_identities=4", "data.synthetic.per_identity=4",
            "data.synthetic.size=32", "data.image_size=32", "data.num_workers=0", "data.val_pairs=40",
            "data.batch_size=8", "data.sampler.p=4", "data.sampler.k=2", "data.batches_per_epoch=1000",
            "model.width=8", "model.embedding_size=8192", "model.cross_rank_mining=false",
            "trainer.max_epochs=null", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0", "logging.wandb=disabled", "logging.pictures=false")
SINGLE = ("trainer.devices=1", "trainer.strategy=auto")
TWO_RANKS = ("trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu")


@dataclass
class KillReport:
    tries: int = 0
    during_write: int = 0           # kills that left a partial file: the save was under way
    steps: list[int] = field(default_factory=list)  # newest loadable checkpoint's global step after each kill
    notes: list[str] = field(default_factory=list)
    most_partials: int = 0          # the most partial files present after a kill (they must not pile up)


def fit_command(root: Path, ranks: tuple[str, ...], max_steps: int) -> list[str]:
    return [sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, *SETTINGS, *ranks, f"run.root={root}",
            "run.id=killed", "run.resume=auto", f"trainer.max_steps={max_steps}"]


def child_env(tmpdir: Path) -> dict:
    return {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted([*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")])


def partial_files(run_dir: Path, tmpdir: Path) -> list[Path]:
    """Anything a save may leave half-done: a non-.ckpt file beside the checkpoints, any file in TMPDIR."""
    folder = run_dir / "checkpoints"
    beside = [p for p in folder.iterdir() if p.suffix != ".ckpt"] if folder.is_dir() else []
    return beside + [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size >= 1 << 20]


def folder_state(run_dir: Path, tmpdir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file in the checkpoint folder and of the files of 1 MB or more in TMPDIR
    (a checkpoint written there; libraries put small files of their own in TMPDIR at start-up)."""
    state = {}
    for folder, least in ((run_dir / "checkpoints", 0), (tmpdir, 1 << 20)):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue
            if info.st_size >= least:
                state[entry.path] = (info.st_size, info.st_mtime_ns)
    return state


def save_started(before: dict, now: dict) -> bool:
    """A file appeared or changed (a file that went away is a cleanup, not a save)."""
    return any(before.get(path) != value for path, value in now.items())


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def one_try(cmd: list[str], env: dict, run_dir: Path, tmpdir: Path, delay: float, log_path: Path,
            timeout: float = 300.0) -> bool:
    """Starts a run, waits until a save is under way (seen from outside: a file appears or changes
    in the checkpoint folder or in TMPDIR), waits ``delay`` seconds and kills every process of the
    run. False when the run ended by itself first."""
    before = folder_state(run_dir, tmpdir)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no save seen within {timeout} s: {' '.join(cmd)}")
                if save_started(before, folder_state(run_dir, tmpdir)):
                    time.sleep(delay)
                    break
                time.sleep(0.002)
        finally:
            alive = proc.poll() is None
            kill_group(proc)
    return alive


def newest_step(run_dir: Path) -> int:
    newest = max(checkpoint_files(run_dir), key=lambda p: p.stat().st_mtime_ns)
    return int(torch.load(newest, map_location="cpu", weights_only=True)["global_step"])


def check_after_kill(run_dir: Path, tmpdir: Path, saved_before: bool) -> list[str]:
    """What must hold after every kill; returns the failures (empty: all held)."""
    failures = []
    files = checkpoint_files(run_dir)
    if saved_before and not files:
        failures.append("the checkpoints of earlier saves are gone")
    for path in files:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            assert "state_dict" in checkpoint
        except Exception as err:  # noqa: BLE001
            failures.append(f"{path.name} ({path.stat().st_size:,} bytes) does not load: {str(err)[:120]}")
    left_in_tmpdir = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size >= 1 << 20]
    if left_in_tmpdir:
        failures.append(f"left in TMPDIR: {[f'{p.name} ({p.stat().st_size:,} B)' for p in left_in_tmpdir]}")
    return failures


def log_tail(path: Path, lines: int = 6) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def kill_loop(root: Path, tmpdir: Path, tries: int, ranks: tuple[str, ...] = SINGLE, seed: int = 0,
              log_path: Path | None = None) -> KillReport:
    rng = random.Random(seed)
    run_dir = root / "embedder-triplet" / "killed"
    env = child_env(tmpdir)
    report = KillReport()
    log_path = log_path or root / "kill-loop.log"
    for attempt in range(tries):
        # two tries in three within the save's first 150 ms, more of them early (a save to a fast disk
        # takes tens of ms); every third try later, in the steps that follow the save
        delay = 0.15 * rng.random() ** 2 if attempt % 3 != 2 else rng.uniform(0.15, 1.5)
        saved_before = bool(checkpoint_files(run_dir))
        killed = one_try(fit_command(root, ranks, 100_000), env, run_dir, tmpdir, delay, log_path)
        if not killed:
            report.notes.append(f"try {attempt}: the run ended by itself before the kill: {log_tail(log_path)}")
            break
        partials = partial_files(run_dir, tmpdir)
        report.tries += 1
        report.during_write += bool(partials)
        report.most_partials = max(report.most_partials, len(partials))
        failures = check_after_kill(run_dir, tmpdir, saved_before)
        for path in tmpdir.rglob("*"):  # a file a kill left in TMPDIR stays there: count it once
            if path.is_file():
                path.unlink()
        if failures:
            report.notes.append(f"try {attempt} (killed {delay:.3f} s into a save): " + "; ".join(failures))
            report.steps.append(-1)
            continue
        step = newest_step(run_dir) if checkpoint_files(run_dir) else 0
        if step < max(report.steps, default=0):
            report.notes.append(f"try {attempt}: newest checkpoint went back from step {max(report.steps)} to {step}")
        report.steps.append(step)
    return report


def finish(root: Path, tmpdir: Path, ranks: tuple[str, ...] = SINGLE, extra_steps: int = 2) -> tuple[int, int, str]:
    """Resumes the killed run once more and lets it complete: (exit status, max_steps, output tail)."""
    run_dir = root / "embedder-triplet" / "killed"
    max_steps = newest_step(run_dir) + extra_steps
    done = subprocess.run(fit_command(root, ranks, max_steps), cwd=REPO, env=child_env(tmpdir), capture_output=True,
                          text=True, timeout=600, start_new_session=True)
    return done.returncode, max_steps, (done.stdout + done.stderr)[-4000:]
