"""Evaluation uses what was trained: ``visage validate | test | predict [CONFIG] --ckpt C`` takes the data
and the model from the checkpoint's config, reports where CONFIG differs, writes into its own folder
beside the run, and refuses a checkpoint that does not fit the model in one line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from trainers.cli import main
from trainers.tasks import TASKS

EXPERIMENT = "configs/embedder/triplet.yaml"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The README's scenario: a fit of the bundled config with overrides (tiny data, one process)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["fit", EXPERIMENT, *TASKS["embedder"].tiny, "trainer.devices=1", "trainer.strategy=auto",
                 "trainer.max_epochs=2", f"run.root={root}", "logging.wandb=disabled", "logging.pictures=false"]) == 0
    run_dir = root / "embedder-triplet" / "local-0"
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


def evaluation_folder(stdout: str):
    from pathlib import Path

    return Path(re.search(r"^evaluation folder: (.+)$", stdout, re.M).group(1))


def cache_folders() -> set[str]:
    cache = os.environ["VISAGE_CACHE"]
    return {p for p in os.listdir(cache) if not p.startswith(".")}


def test_validate_with_the_checkpoint_and_the_original_file_uses_the_fits_data(fitted):
    """`visage validate configs/embedder/triplet.yaml --ckpt last.ckpt`, nothing else: the file asks for
    1000 identities of 64 px and a width-32 net, the checkpoint was trained on 8 identities of 32 px
    with width 8. The evaluation runs on the fit's data (nothing new rendered) with the file's trainer
    settings (2 processes), prints each difference, and reports what the fit reported."""
    run_dir, ckpt = fitted
    before = cache_folders()
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "validate", EXPERIMENT, "--ckpt", str(ckpt)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for line in ("data.synthetic.identities: file 1000, checkpoint 8: using the checkpoint's",
                 "data.image_size: file 64, checkpoint 32: using the checkpoint's",
                 "model.width: file 32, checkpoint 8: using the checkpoint's"):
        assert line in result.stderr, result.stderr[-3000:]
    assert cache_folders() == before  # the fit's dataset, not a new one
    folder = evaluation_folder(result.stdout)
    assert folder.parent == run_dir and re.fullmatch(r"validate-\d+", folder.name)
    record = json.loads((folder / "metrics.json").read_text())
    fit = json.loads((run_dir / "metrics.json").read_text())
    fit_config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert record["checkpoint"] == str(ckpt.resolve()) and record["world_size"] == 2
    assert record["data"]["synthetic"] == fit_config["data"]["synthetic"] and record["data"]["split"] == "val"
    assert record["metrics"].keys() == fit["metrics"].keys()
    for name, value in fit["metrics"].items():
        assert record["metrics"][name] == pytest.approx(value, abs=1e-6), name
    used = yaml.safe_load((folder / "config.yaml").read_text())
    assert used["trainer"]["devices"] == 2 and used["model"]["width"] == 8  # the file's trainer, the fit's model


def run_main(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_two_validations_write_into_their_own_folders(fitted, capsys):
    run_dir, ckpt = fitted
    code, out, err = run_main(["validate", "--ckpt", str(ckpt)], capsys)  # no CONFIG: the checkpoint's own
    assert code == 0, err[-3000:]
    first = evaluation_folder(out)
    files = {name: (first / name).read_bytes() for name in ("config.yaml", "metrics.json", "csv/metrics.csv")}
    code, out, err = run_main(["validate", "--ckpt", str(ckpt)], capsys)
    assert code == 0, err[-3000:]
    second = evaluation_folder(out)
    assert second != first and second.parent == first.parent == run_dir
    assert {name: (first / name).read_bytes() for name in files} == files  # nothing of the first overwritten
    assert (second / "csv" / "metrics.csv").is_file() and (second / "config.yaml").is_file()
    one, two = (json.loads((f / "metrics.json").read_text()) for f in (first, second))
    assert one["metrics"] == two["metrics"] and one["checkpoint"] == two["checkpoint"] == str(ckpt.resolve())
    # a named evaluation folder is never reused
    assert run_main(["validate", "--ckpt", str(ckpt), "run.id=named", "--print-config"], capsys)[0] == 0
    code, out, err = run_main(["validate", "--ckpt", str(ckpt), "run.id=named"], capsys)
    assert code == 0 and evaluation_folder(out) == run_dir / "named", err[-2000:]
    code, _, err = run_main(["validate", "--ckpt", str(ckpt), "run.id=named"], capsys)
    assert code == 2 and "config error: run.id:" in err and "exists already" in err


def test_a_checkpoint_that_does_not_fit_the_model_is_one_clear_message(fitted, tmp_path, capsys):
    run_dir, ckpt = fitted
    before = sorted(p.name for p in run_dir.iterdir())
    code, _, err = run_main(["validate", "--ckpt", str(ckpt), "model.embedding_size=64"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("visage: config error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"visage: config error: --ckpt: {ckpt} does not fit the model the config builds: ")
    assert "of another shape" in lines[0] and "checkpoint 128x" in lines[0] and "model 64x" in lines[0]
    assert "the command line changes model.embedding_size" in lines[0]
    assert "model.embedding_size: command line 64, checkpoint 128: using the command line's" in err
    # weights of another network (its tensors under other names)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"] = {f"other.{k}": v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "other.ckpt")
    code, _, err = run_main(["validate", "--ckpt", str(tmp_path / "other.ckpt")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "of the model's tensor(s) missing" in err and "trained with another model" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no evaluation folder left behind
    assert not any(tmp_path.glob("validate-*"))


def test_predict_writes_where_out_says(fitted, tmp_path, capsys):
    run_dir, ckpt = fitted
    out = tmp_path / "embeddings" / "val.pt"
    code, stdout, err = run_main(["predict", "--ckpt", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err[-3000:]
    predictions = torch.load(out, weights_only=True)
    val = 4 * 4  # tiny: 4 held-out identities x 4 images
    assert predictions["embedding"].shape == (val, 128) and len(predictions["key"]) == val
    folder = evaluation_folder(stdout)
    assert folder.parent == run_dir and folder.name.startswith("predict-") and not (folder / "predictions.pt").exists()
    record = json.loads((folder / "metrics.json").read_text())
    assert record["predictions"] == str(out.resolve()) and record["checkpoint"] == str(ckpt.resolve())


def test_print_config_of_an_evaluation_is_the_checkpoints_data_and_model(fitted, capsys):
    _, ckpt = fitted
    code, out, _ = run_main(["test", EXPERIMENT, "--ckpt", str(ckpt), "--print-config", "data.val_split=train"],
                            capsys)
    printed = yaml.safe_load(out)
    assert code == 0 and printed["data"]["synthetic"]["identities"] == 8 and printed["model"]["width"] == 8
    assert printed["data"]["val_split"] == "train" and printed["trainer"]["devices"] == 2  # override; the file's
    assert printed["run"]["id"] is None and printed["finetune"]["from"] is None


def test_every_rank_of_a_slurm_job_names_the_same_evaluation_folder(tmp_path, monkeypatch):
    """Under srun every rank computes the folder itself (no launcher hands it down): it is named after
    the job, not after the next free number, which a rank would see change once rank 0 made it."""
    from trainers.config import load_config
    from trainers.evaluation_config import evaluation_dir
    from trainers.run_dir import RUN_DIR_ENV

    run = tmp_path / "runs" / "x" / "local-0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "validate-0").mkdir()
    cfg = load_config(EXPERIMENT)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    assert evaluation_dir("validate", cfg, str(run / "checkpoints" / "last.ckpt"), None) == run / "validate-1"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    first = evaluation_dir("validate", cfg, str(run / "checkpoints" / "last.ckpt"), None)
    first.mkdir()
    assert first == run / "validate-slurm-77"
    assert evaluation_dir("validate", cfg, str(run / "checkpoints" / "last.ckpt"), None) == first
