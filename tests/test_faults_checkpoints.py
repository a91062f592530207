"""Checkpoints that are never half-written, and resumes that pass over the broken ones.

The unit tests check the pieces (the atomic write, the clean-up of leftovers, what "loads" means,
which checkpoint a resume takes and what it says); the slow ones SIGKILL real `visage fit` runs
around their saves with TMPDIR on another filesystem than the run directory (tests/kill_during_save.py).
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from configs.schema import ConfigError
from tests import kill_during_save as kds
from tests.conftest import REPO
from trainers.checkpoint_choice import CheckpointChoiceError, checkpoint_problem
from trainers.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, is_partial_save, remove_partial_saves
from trainers.requeue import next_hpc_checkpoint

EXPERIMENT = "configs/embedder/triplet.yaml"


def lightning_like(step: int) -> dict:
    return {"state_dict": {"w": torch.full((4,), float(step))}, "global_step": step}


def write_checkpoint(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lightning_like(step), path)
    os.utime(path, (mtime, mtime))
    return path


def break_file(path: Path, how: str) -> None:
    data = path.read_bytes()
    mtime = path.stat().st_mtime
    path.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "text": b"not a checkpoint\n"}[how])
    os.utime(path, (mtime, mtime))


# -- the write itself -------------------------------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("this object refuses to be saved")


def test_a_failed_save_leaves_the_previous_checkpoint_whole_and_no_partial_file(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save(lightning_like(1), target)
    before = target.read_bytes()
    with pytest.raises(pickle.PicklingError):
        atomic_torch_save({"state_dict": {"w": torch.zeros(100_000)}, "bad": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    AtomicCheckpointIO().save_checkpoint(lightning_like(2), str(target))
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_an_interrupted_save_leaves_only_its_temporary_file_which_the_next_start_removes(tmp_path, clean_env):
    """A save killed between writing and renaming: the target keeps the previous checkpoint, the partial
    file is neither a resume candidate nor left after the next run starts in that directory."""
    from trainers.build import prepare_run_dir
    run_dir = tmp_path / "run"
    target = run_dir / "checkpoints" / "last.ckpt"
    atomic_torch_save(lightning_like(1), target)
    script = ("import os, sys, torch\n"
              "os.replace = lambda *a: os.kill(os.getpid(), 9)  # killed right before the rename\n"
              "from trainers.checkpoint_io import atomic_torch_save\n"
              "atomic_torch_save({'state_dict': {'w': torch.zeros(1000)}, 'global_step': 2}, sys.argv[1])\n")
    killed = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, timeout=120)
    assert killed.returncode == -9
    partial = [p for p in target.parent.iterdir() if p != target]
    assert len(partial) == 1 and is_partial_save(partial[0]) and not partial[0].name.endswith(".ckpt")
    assert "hpc_ckpt_" not in partial[0].name  # Lightning's SLURM resume would parse it for a version
    assert torch.load(target, weights_only=True)["global_step"] == 1
    (run_dir / ".saving-1-abc.tmp").write_bytes(b"x")
    (run_dir / "notes.tmp").write_bytes(b"mine")  # not a partial save: kept
    prepare_run_dir(OmegaConf.create({"run": {}}), run_dir)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert not (run_dir / ".saving-1-abc.tmp").exists() and (run_dir / "notes.tmp").exists()
    assert remove_partial_saves(run_dir, run_dir / "checkpoints", tmp_path / "absent") == []


class TinyRegressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordingIO(AtomicCheckpointIO):
    def __init__(self):
        super().__init__()
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saved.append(Path(path).name)
        super().save_checkpoint(checkpoint, path, storage_options)


def test_every_checkpoint_lightning_writes_goes_through_the_atomic_writer(tmp_path):
    """ModelCheckpoint's best and last files, trainer.save_checkpoint and the hpc_ckpt files of a
    requeue (trainers/requeue.py saves them with trainer.save_checkpoint, as Lightning's own SLURM
    handler does) all reach the Trainer's CheckpointIO plugin."""
    io = RecordingIO()
    data = DataLoader(torch.randn(16, 8), batch_size=4)
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-step{step:06d}", monitor="val/loss",
                           save_top_k=1, auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=4, val_check_interval=2, default_root_dir=tmp_path,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, plugins=[io],
                         callbacks=[best, last], num_sanity_val_steps=0)
    trainer.fit(TinyRegressor(), train_dataloaders=data, val_dataloaders=data)
    trainer.save_checkpoint(next_hpc_checkpoint(tmp_path))
    assert trainer.strategy.checkpoint_io is io
    assert "last.ckpt" in io.saved and any(n.startswith("best-step") for n in io.saved) and "hpc_ckpt_1.ckpt" in io.saved
    on_disk = sorted(p.name for p in [*(tmp_path / "checkpoints").iterdir(), *tmp_path.glob("*.ckpt")])
    assert set(on_disk) <= set(io.saved)  # nothing was written around it


@pytest.mark.parametrize("ranks", [("trainer.devices=1", "trainer.strategy=auto"),
                                   ("trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu")])
def test_visage_runs_use_the_atomic_writer(tmp_path, ranks):
    from trainers.build import build_run
    from trainers.config import load_config
    cfg = load_config(EXPERIMENT, [*kds.SETTINGS, *ranks, f"run.root={tmp_path}", "model.embedding_size=16",
                                     "trainer.max_steps=10"])
    run = build_run(cfg, tmp_path / "run")
    assert isinstance(run.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# -- what loads, what a resume takes ----------------------------------------------------------------
def test_checkpoint_problem_names_what_is_wrong(tmp_path):
    good = write_checkpoint(tmp_path / "good.ckpt", 3, 1000)
    assert checkpoint_problem(good) is None
    for how, words in (("empty", "is empty (0 bytes)"), ("truncated", "is truncated or not a torch checkpoint"),
                       ("text", "is truncated or not a torch checkpoint")):
        path = write_checkpoint(tmp_path / f"{how}.ckpt", 3, 1000)
        break_file(path, how)
        assert checkpoint_problem(path).startswith(words), how
    pickled = tmp_path / "object.ckpt"
    torch.save({"state_dict": {}, "callback": Path("x")}, pickled)  # a class outside the weights-only allowlist
    assert checkpoint_problem(pickled).startswith("holds objects a weights-only load refuses")
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert "not a Lightning checkpoint" in checkpoint_problem(plain)
    assert "cannot be read" in checkpoint_problem(tmp_path / "missing.ckpt")


def resume_config(root: Path, resume, run_id=None):
    return OmegaConf.create({"run": {"root": str(root), "name": "exp", "id": run_id, "resume": resume}})


@pytest.fixture
def clean_env(monkeypatch):
    from trainers.run_dir import RUN_DIR_ENV
    monkeypatch.setenv(RUN_DIR_ENV, "")  # restored when the test ends (prepare_run_dir sets it)
    for key in [k for k in os.environ if k.startswith("SLURM_")] + [RUN_DIR_ENV]:
        monkeypatch.delenv(key, raising=False)


def test_resume_auto_passes_over_broken_checkpoints_naming_each(tmp_path, caplog, clean_env):
    from trainers.build import choose_run_dir_and_checkpoint
    run = tmp_path / "exp" / "local-0"
    best = write_checkpoint(run / "checkpoints" / "best-step000004.ckpt", 4, 1000)
    last = write_checkpoint(run / "checkpoints" / "last.ckpt", 6, 2000)
    write_checkpoint(tmp_path / "exp" / "local-1" / "checkpoints" / "last.ckpt", 2, 500)  # an older run
    (run / "checkpoints" / ".saving-77-deadbeef.tmp").write_bytes(b"\0" * 4096)  # never a candidate
    assert choose_run_dir_and_checkpoint(resume_config(tmp_path, "auto")) == (run, str(last))
    break_file(last, "empty")
    with caplog.at_level(logging.WARNING, logger="visage"):
        assert choose_run_dir_and_checkpoint(resume_config(tmp_path, "auto")) == (run, str(best))
    lines = [r.getMessage() for r in caplog.records]
    assert any(str(last) in line and "is empty (0 bytes)" in line and "\n" not in line for line in lines), lines
    assert any(f"resuming from {best}" in line for line in lines), lines
    break_file(best, "truncated")
    older = tmp_path / "exp" / "local-1"
    assert choose_run_dir_and_checkpoint(resume_config(tmp_path, "auto")) == (older, str(older / "checkpoints" /
                                                                                         "last.ckpt"))
    # with a run id: only that run's checkpoints; none loads: start afresh
    assert choose_run_dir_and_checkpoint(resume_config(tmp_path, "auto", "local-0")) == (run, None)


def test_a_requeued_job_resumes_from_the_newest_hpc_checkpoint_that_loads(tmp_path, clean_env, monkeypatch):
    from trainers.build import choose_run_dir_and_checkpoint
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    run = tmp_path / "exp" / "slurm-77"
    write_checkpoint(run / "checkpoints" / "last.ckpt", 4, 1000)
    first = write_checkpoint(run / "hpc_ckpt_1.ckpt", 5, 2000)
    second = write_checkpoint(run / "hpc_ckpt_2.ckpt", 9, 3000)
    # run.resume unset: Lightning would resume from the newest hpc_ckpt by itself, broken or not
    assert choose_run_dir_and_checkpoint(resume_config(tmp_path, None)) == (run, str(second))
    break_file(second, "truncated")
    assert choose_run_dir_and_checkpoint(resume_config(tmp_path, None)) == (run, str(first))
    break_file(first, "empty")
    break_file(run / "checkpoints" / "last.ckpt", "text")
    with pytest.raises(CheckpointChoiceError, match="hpc_ckpt_1.ckpt, hpc_ckpt_2.ckpt but no checkpoint"):
        choose_run_dir_and_checkpoint(resume_config(tmp_path, None))


def test_resume_from_a_broken_file_is_a_one_line_error_naming_it(tmp_path, clean_env):
    from trainers.build import choose_run_dir_and_checkpoint
    broken = write_checkpoint(tmp_path / "runs" / "x" / "checkpoints" / "last.ckpt", 3, 1000)
    break_file(broken, "truncated")
    with pytest.raises(ConfigError, match=f"run.resume: checkpoint {broken} is truncated"):
        choose_run_dir_and_checkpoint(resume_config(tmp_path, str(broken)))
    cmd = [sys.executable, "-m", "trainers.cli", "fit", EXPERIMENT, *kds.SETTINGS, f"run.root={tmp_path / 'runs'}",
           "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=10", f"run.resume={broken}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("visage:")]
    assert len(error_lines) == 1 and str(broken) in error_lines[0] and "truncated" in error_lines[0]
    assert "Traceback" not in result.stderr and "EOFError" not in result.stderr


# -- SIGKILL around real saves ----------------------------------------------------------------------
def other_filesystem_tmpdir(run_root: Path) -> Path:
    """A TMPDIR on another filesystem than ``run_root`` (tmpfs /dev/shm), or a skip saying why not."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm for a TMPDIR on another filesystem")
    tmpdir = shm / f"visage-kill-{uuid.uuid4().hex[:8]}"
    tmpdir.mkdir()
    if tmpdir.stat().st_dev == run_root.stat().st_dev:
        shutil.rmtree(tmpdir)
        pytest.skip(f"/dev/shm and {run_root} are one filesystem here: the cross-filesystem case cannot be made")
    return tmpdir


def run_kill_loop(tmp_path: Path, tries: int, ranks: tuple[str, ...]) -> kds.KillReport:
    root = tmp_path / "runs"
    root.mkdir()
    tmpdir = other_filesystem_tmpdir(root)
    try:
        report = kds.kill_loop(root, tmpdir, tries, ranks, seed=tries)
        print(f"\nkill loop: {report.tries} kills, {report.during_write} during a write "
              f"({report.during_write / max(report.tries, 1):.0%}), newest steps {report.steps}")
        assert not report.notes, "\n".join(report.notes)
        assert report.tries == tries
        # measured here: 15 of 20 (1 process), 3 of 4 (2 ranks); a fast disk makes saves shorter
        assert report.during_write >= max(1, tries // 10), "too few kills landed inside a save to prove anything"
        assert report.most_partials <= 2  # each start removes what the kill before left
        status, max_steps, tail = kds.finish(root, tmpdir, ranks)
        assert status == 0, tail
        run_dir = root / "embedder-triplet" / "killed"
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == max_steps
        assert (run_dir / "metrics.json").is_file()
        assert kds.partial_files(run_dir, tmpdir) == [] and not [p for p in run_dir.iterdir() if is_partial_save(p)]
        assert not [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size >= 1 << 20]
        return report
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.slow
def test_sigkill_around_saves_never_leaves_a_broken_checkpoint(tmp_path):
    run_kill_loop(tmp_path, 20, kds.SINGLE)


@pytest.mark.slow
@pytest.mark.ddp
def test_sigkill_of_two_ranks_around_saves_never_leaves_a_broken_checkpoint(tmp_path):
    run_kill_loop(tmp_path, 4, kds.TWO_RANKS)
