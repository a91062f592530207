"""Exact resume from epoch-end checkpoints (issue 12, part 1).

A run stopped right after an epoch-end checkpoint and resumed with ``run.resume=auto`` must log the
same loss at every step and end with the same weights as a run that never stopped, whatever moment
Lightning saved that checkpoint at and whichever bound (``max_steps`` / ``max_epochs``) ended the
first part. The mid-epoch case is tests/test_fit_embedder.py::test_resume_mid_epoch_....

The reference is one uninterrupted run, shared by every case: the settings that differ between the
cases (which bound, when validation runs) decide when checkpoints are written, not what is trained
(a difference there would make a case fail, never pass).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_fit_embedder import EXPERIMENT, csv_rows, single
from trainers.cli import main as visage

STEPS_PER_EPOCH, EPOCHS = 4, 3
# a schedule that does not depend on max_steps (which differs between the two parts of a run)
COMMON = ["optim.scheduler=none", "optim.warmup_steps=10", "logging.pictures=false"]


def fit(root: Path, *overrides: str) -> None:
    assert visage(["fit", EXPERIMENT, *single(root), *COMMON, *overrides]) == 0


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss over the run's CSV logs (the resumed part after the first)."""
    return {int(r["step"]): float(r["train/loss"]) for r in csv_rows(run_dir) if r.get("train/loss")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    fit(root, "trainer.max_epochs=null", f"trainer.max_steps={STEPS_PER_EPOCH * EPOCHS}", "run.id=straight")
    return root / "embedder-triplet" / "straight"


# (first part, the whole run): each stops the first part right after the end of epoch 1
CASES = {
    # ModelCheckpoint saves in on_train_epoch_end (validation once per epoch); Lightning resumes a
    # max_steps run by replaying that epoch end (the bug: the loader skipped all of epoch 2)
    "max_steps, saved at the end of the training epoch": (
        ["trainer.max_epochs=null", "trainer.max_steps=8"], ["trainer.max_epochs=null", "trainer.max_steps=12"]),
    "max_epochs, saved at the end of the training epoch": (
        ["trainer.max_epochs=2"], ["trainer.max_epochs=3"]),
    # validation every 4 batches: the checkpoint is saved by the validation that ends the epoch
    "max_steps, saved by the validation at the end of the epoch": (
        ["trainer.max_epochs=null", "trainer.max_steps=8", "trainer.val_check_interval=4"],
        ["trainer.max_epochs=null", "trainer.max_steps=12", "trainer.val_check_interval=4"]),
    # no validation: Lightning's restart asks the loader once more for the finished epoch
    "max_steps, no validation": (
        ["trainer.max_epochs=null", "trainer.max_steps=8", "trainer.limit_val_batches=0"],
        ["trainer.max_epochs=null", "trainer.max_steps=12", "trainer.limit_val_batches=0"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_an_epoch_end_checkpoint_reproduces_the_uninterrupted_run(case, straight, tmp_path):
    first, whole = CASES[case]
    fit(tmp_path, *first, "run.id=resumed")
    run_dir = tmp_path / "embedder-triplet" / "resumed"
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == 2 * STEPS_PER_EPOCH
    fit_loop = stopped["loops"]["fit_loop"]
    assert fit_loop["epoch_loop.batch_progress"]["current"]["completed"] == STEPS_PER_EPOCH  # epoch 1 is done

    fit(tmp_path, *whole, "run.resume=auto")
    assert (run_dir / "csv-1" / "metrics.csv").is_file(), "the second part did not resume into the same run"
    reference, resumed = losses(straight), losses(run_dir)
    assert sorted(reference) == list(range(STEPS_PER_EPOCH * EPOCHS))
    assert sorted(resumed) == sorted(reference), "logged steps differ (a gap, a repeat or a skipped epoch)"
    for step, loss in reference.items():
        assert abs(resumed[step] - loss) < 1e-5, f"step {step}: {resumed[step]} != {loss} uninterrupted"
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == STEPS_PER_EPOCH * EPOCHS
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # where the training stream stood in the first part's checkpoint: the first batch of epoch 2,
    # however Lightning saved it
    assert fit_loop["state_dict"].get("combined_loader") == [
        {"epoch": 2, "batch": 0, "batches_per_epoch": STEPS_PER_EPOCH}]
