"""trainers.requeue.StopAtStepBoundary in one process, with SLURM's environment faked (or absent).

The reference is an uninterrupted run: a run stopped by the requeue signal (or SIGTERM) and resumed
from its hpc checkpoint must end with the same weights and optimizer state, step for step. Every
batch is the same tensor, so the data order after a restart cannot hide a lost or repeated step.
"""
from __future__ import annotations

import csv
import os
import signal
import stat
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from trainers.requeue import StopAtStepBoundary, next_hpc_checkpoint
from trainers.stop_signals import requeue_target

MAX_STEPS = 6


class SameBatch(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, 8) * (1 + index % 2)


class TinyRegressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self.layer(batch) - 1.0).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SameBatch(), batch_size=2)  # [x, 2x]: the same batch every step


class SendSignal(pl.Callback):
    """Sends ``signum`` to this process when batch ``at`` starts (a preemption arriving mid-step)."""

    def __init__(self, signum: int, at: int):
        self.signum, self.at = signum, at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A one-task SLURM job environment and an ``scontrol`` that records its arguments."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    env = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "unit", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol-calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield record
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def fit(root: Path, *callbacks: pl.Callback, accumulate: int = 1) -> tuple[pl.Trainer, TinyRegressor]:
    pl.seed_everything(3, verbose=False)
    model = TinyRegressor()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=MAX_STEPS, default_root_dir=str(root),
                         logger=CSVLogger(str(root), name="", version="csv"), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, callbacks=[StopAtStepBoundary(), *callbacks])
    trainer.fit(model)
    return trainer, model


def logged_steps(root: Path) -> list[int]:
    with open(root / "csv" / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def adam_steps(checkpoint: dict) -> set[float]:
    return {float(state["step"]) for state in checkpoint["optimizer_states"][0]["state"].values()}


def reference_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    _, model = fit(tmp_path / "uninterrupted")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_requeue_signal_saves_at_the_step_boundary_requeues_and_resumes_exactly(fake_slurm, tmp_path):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        fit(root, SendSignal(signal.SIGUSR1, at=2))
    assert stopped.value.code == 0
    assert fake_slurm.read_text().split() == ["requeue", "4242"]
    checkpoint = torch.load(root / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3  # the step that was running when the signal came, finished
    assert adam_steps(checkpoint) == {3.0}
    assert logged_steps(root) == [0, 1, 2]

    trainer, model = fit(root)  # the requeued job: Lightning resumes from the newest hpc_ckpt
    assert trainer.global_step == MAX_STEPS
    assert logged_steps(root) == [3, 4, 5]  # continues the step axis: no gap, no repeat
    reference = reference_weights(tmp_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-7)


def test_sigterm_leaves_a_checkpoint_that_resumes_exactly(fake_slurm, tmp_path):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        fit(root, SendSignal(signal.SIGTERM, at=2))
    assert stopped.value.code == 143, "a terminated run must not exit 0"
    assert not fake_slurm.exists(), "SIGTERM must not requeue by itself (SLURM decides)"
    checkpoint = torch.load(root / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and adam_steps(checkpoint) == {3.0}
    _, model = fit(root)
    reference = reference_weights(tmp_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-7)


def test_sigterm_outside_slurm_leaves_last_ckpt_that_resumes_exactly(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    root = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            fit(root, SendSignal(signal.SIGTERM, at=2))
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert stopped.value.code == 143
    assert not list(root.glob("hpc_ckpt_*"))
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and adam_steps(checkpoint) == {3.0}
    assert logged_steps(root) == [0, 1, 2]
    pl.seed_everything(3, verbose=False)
    model = TinyRegressor()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=MAX_STEPS, default_root_dir=str(root),
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StopAtStepBoundary()])
    trainer.fit(model, ckpt_path=str(last))
    assert trainer.global_step == MAX_STEPS
    reference = reference_weights(tmp_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-7)


def test_with_gradient_accumulation_the_checkpoint_waits_for_the_optimizer_step(fake_slurm, tmp_path):
    """Signalled at the first of two accumulated batches: saved after the second (where the optimizer
    stepped), not between them (the first batch's gradients would be lost), and resumed exactly."""
    root = tmp_path / "run"
    with pytest.raises(SystemExit):
        fit(root, SendSignal(signal.SIGTERM, at=1), accumulate=2)
    checkpoint = torch.load(root / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2 and adam_steps(checkpoint) == {2.0}
    _, model = fit(root, accumulate=2)
    _, reference = fit(tmp_path / "uninterrupted", accumulate=2)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], rtol=0, atol=1e-7)


def test_inactive_outside_slurm(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    before = signal.getsignal(signal.SIGUSR1)
    trainer, _ = fit(tmp_path / "plain")
    assert trainer.global_step == MAX_STEPS
    callback = next(c for c in trainer.callbacks if isinstance(c, StopAtStepBoundary))
    assert not callback.requeue_active and signal.getsignal(signal.SIGUSR1) == before
    assert not list((tmp_path / "plain").glob("hpc_ckpt_*"))


def test_checkpoint_names_and_requeue_targets(tmp_path):
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_1.ckpt", "hpc_ckpt_12.ckpt", "hpc_ckpt_x.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_13.ckpt"
    assert requeue_target({"SLURM_JOB_ID": "90"}) == "90"
    assert requeue_target({"SLURM_JOB_ID": "91", "SLURM_ARRAY_JOB_ID": "88", "SLURM_ARRAY_TASK_ID": "3"}) == "88_3"
