"""The pieces behind the logs and dashboards, each against values worked out by hand: the progress
callbacks Lightning is given (also when ``rich`` is installed), the prediction grid, the ROC chart's
points and legend, the CSV log read back, the curves picture and ``visage compare``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from modules.charts import line_chart, nice_ticks
from modules.embedding_pictures import EmbeddingPictures, _one_per_random_identity, roc_on_log_grid
from modules.embedding_eval import PairSet
from modules.pictures import RIGHT_COLOUR, WRONG_COLOUR, sample_grid
from trainers.cli import main as visage
from trainers.config import load_config
from trainers.csv_log import read_metrics
from trainers.curves import curves_picture, running_mean
from trainers.progress import batch_size, format_duration
from trainers.tasks import TASKS


def build(tmp_path, *extra):
    from trainers.build import build_run  # noqa: PLC0415

    cfg = load_config("configs/embedder/triplet.yaml", [*TASKS["embedder"].tiny, "trainer.devices=1",
                      "trainer.strategy=auto", "logging.wandb=disabled", f"run.root={tmp_path}", *extra])
    return build_run(cfg, tmp_path / "run")


def test_rich_installed_changes_neither_the_bar_nor_the_summary(tmp_path, monkeypatch):
    """With rich importable Lightning would pick its Rich bar and Rich summary table by itself."""
    from pytorch_lightning.callbacks import ModelSummary  # noqa: PLC0415
    from pytorch_lightning.trainer.connectors import callback_connector  # noqa: PLC0415

    from trainers import progress  # noqa: PLC0415

    monkeypatch.setattr(callback_connector, "_RICH_AVAILABLE", True)
    piped = build(tmp_path).trainer  # pytest's captured stdout is no terminal
    assert piped.progress_bar_callback is None
    summaries = [c for c in piped.callbacks if isinstance(c, ModelSummary)]
    assert [type(c) for c in summaries] == [ModelSummary]
    monkeypatch.setattr(progress, "stdout_is_terminal", lambda: True)
    assert type(build(tmp_path).trainer.progress_bar_callback) is progress.TerminalBar
    assert build(tmp_path, "trainer.enable_progress_bar=false").trainer.progress_bar_callback is None


def test_small_formatting_helpers():
    assert format_duration(3725.4) == "1:02:05" and format_duration(float("inf")) == "?"
    assert batch_size({"image": np.zeros(3), "label": [1]}) == 0  # numpy is no tensor
    import torch  # noqa: PLC0415

    assert batch_size({"key": ["a"], "image": torch.zeros(5, 3), "label": torch.zeros(5)}) == 5
    assert batch_size([torch.zeros(()), (torch.zeros(7, 2),)]) == 1


def test_the_prediction_grid_frames_right_green_and_wrong_red():
    tile = np.full((32, 32, 3), (90, 40, 160), dtype=np.uint8)
    grid = sample_grid([tile] * 4, captions=["id 1", "nearest: id 1", "id 2", "nearest: id 3"],
                       frames=[None, RIGHT_COLOUR, None, WRONG_COLOUR], cols=4, tile_size=64)
    cell = 64 + 6  # tile + gap
    frames = [grid[6 + 1, 6 + k * cell + 32] for k in range(4)]  # the top edge of each tile
    assert tuple(frames[1]) == RIGHT_COLOUR and tuple(frames[3]) == WRONG_COLOUR
    assert tuple(frames[0]) == tuple(frames[2]) == (90, 40, 160)
    captions = grid[6 + 64:, :].astype(int)  # anti-aliased text: its darkest pixels show the colour
    red, green, blue = captions[..., 0], captions[..., 1], captions[..., 2]
    greenish = (green > red + 60) & (green > blue + 60)
    reddish = (red > green + 60) & (red > blue + 60)
    centres = [6 + k * cell + 32 for k in range(4)]  # each caption is centred under its tile
    assert [greenish[:, c - 8:c + 8].any() for c in centres] == [False, True, False, False]
    assert [reddish[:, c - 8:c + 8].any() for c in centres] == [False, False, False, True]
    with pytest.raises(ValueError, match="captions"):
        sample_grid([tile] * 2, captions=["one"])


def test_samples_come_from_many_identities_and_change_with_the_draw():
    labels = np.repeat(np.arange(40), 5)  # the first identities fill the split's start
    one = _one_per_random_identity(labels, 8, np.random.default_rng([0, 4, 0]))
    two = _one_per_random_identity(labels, 8, np.random.default_rng([0, 8, 1]))
    assert len(set(labels[one])) == 8 and len(set(labels[two])) == 8
    assert set(one) != set(two)
    assert len(_one_per_random_identity(labels[:10], 8, np.random.default_rng(0))) == 2


def test_roc_on_a_log_grid_takes_the_best_tar_not_above_each_far():
    fpr = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    tpr = np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    log_far, tar = roc_on_log_grid(fpr, tpr, negatives=1000, points=7)  # FAR 1e-3, 1e-2.5, ..., 1
    np.testing.assert_allclose(log_far, [-3, -2.5, -2, -1.5, -1, -0.5, 0])
    np.testing.assert_allclose(tar, [0.3, 0.3, 0.6, 0.6, 0.6, 0.6, 1.0])  # 10^-0.5 = 0.32 < 0.5


class _Split:
    def decoded(self, index):
        return type("Decoded", (), {"image": np.full((16, 16, 3), 100 + index % 50, np.uint8)})


def test_the_roc_legend_holds_each_sets_auc():
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.5
    distances = np.where(same, rng.normal(1.0, 0.4, 200), rng.normal(1.6, 0.4, 200))
    pair_set = PairSet("val", 0, np.arange(200) % 20, (np.arange(200) + 1) % 20, same, distances)
    from modules import pictures  # noqa: PLC0415

    images, chart = EmbeddingPictures()._pair_pictures(pictures, [pair_set], None, _Split())
    (name,) = chart
    assert name == f"val (AUC {roc_auc_score(same, -distances):.4f})"
    assert images["roc"].shape == (540, 720, 3) and "hardest-pairs-val" in images


def write_run(run_dir: Path, rows_by_folder: dict[str, list[dict]]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"task": "embedder"}))
    for folder, rows in rows_by_folder.items():
        (run_dir / folder).mkdir()
        keys = sorted({k for row in rows for k in row})
        with open(run_dir / folder / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(rows)
    return run_dir


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "runs" / "embedder-triplet" / "local-0", {
        "csv": [{"step": 0, "train/loss": 2.0}, {"step": 1, "train/loss": 1.5}, {"step": 3, "val/accuracy": 0.70},
                {"step": 3, "train/loss": 1.2, "epoch": 0}],
        # resumed after step 3: step 3 logged again (its later value counts), then two validations
        "csv-1": [{"step": 3, "val/accuracy": 0.72}, {"step": 7, "val/accuracy": 0.81}, {"step": 11, "val/accuracy": 0.78}],
    })
    b = write_run(tmp_path / "runs" / "embedder-triplet" / "local-1", {
        "csv": [{"step": 3, "val/accuracy": 0.60}, {"step": 7, "val/accuracy": 0.66}]})
    return a, b


def test_the_csv_log_reads_back_across_resumptions(two_runs):
    metrics = read_metrics(two_runs[0])
    steps, values = metrics["val/accuracy"]
    assert steps.tolist() == [3, 7, 11] and values.tolist() == [0.72, 0.81, 0.78]
    assert metrics["train/loss"][0].tolist() == [0, 1, 3]


def test_compare_prints_and_plots_the_monitored_metric_of_each_run(two_runs, tmp_path, capsys):
    out = tmp_path / "chart.png"
    assert visage(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "val/accuracy (higher is better)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  embedder")}
    assert rows["embedder-triplet/local-0"] == ["0.8100", "7", "0.7800", "11", "3"]
    assert rows["embedder-triplet/local-1"] == ["0.6600", "7", "0.6600", "7", "2"]
    import cv2  # noqa: PLC0415

    chart = cv2.imread(str(out))
    assert chart is not None and chart.shape[1] >= 700
    assert visage(["compare", str(two_runs[0]), str(two_runs[1]), "--metric", "train/loss:min",
                   "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train/loss (lower is better)" in text and "(not logged)" in text
    assert "1.2000" in text.split("local-0")[1].split("\n")[0]  # lowest loss, at step 3


def test_compare_names_a_folder_that_is_not_a_run(two_runs, tmp_path, capsys):
    assert visage(["compare", str(two_runs[0]), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "no csv/metrics.csv" in err
    assert visage(["compare", str(two_runs[0]), "--metric", "val/accuracy:best"]) == 2


def test_the_curves_picture_draws_loss_and_monitored_metric(two_runs):
    picture = curves_picture(two_runs[0], "val/accuracy")
    assert picture.shape == (420, 1280, 3)
    from modules.pictures import CURVE_COLOURS  # noqa: PLC0415

    first = np.all(picture == CURVE_COLOURS[0], axis=-1)
    assert first[:, :640].sum() > 50 and first[:, 640:].sum() > 50  # a curve in each chart
    np.testing.assert_allclose(running_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])


def test_chart_ticks_and_an_empty_chart():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    empty = line_chart({}, title="nothing")
    assert empty.shape == (420, 640, 3)


class _SlowData:
    """A map-style dataset whose every item takes ``delay`` seconds to load."""

    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int):
        import time  # noqa: PLC0415
        import torch  # noqa: PLC0415

        time.sleep(self.delay)
        return {"image": torch.zeros(4), "label": index}


def progress_of(tmp_path, load_s: float, step_s: float) -> list[str]:
    """The progress lines of 12 steps of 4 samples, loading taking load_s per sample, a step step_s."""
    import time  # noqa: PLC0415

    import pytorch_lightning as pl  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from trainers.callbacks import ValidationMetricsToDict  # noqa: PLC0415
    from trainers.progress import ProgressLines  # noqa: PLC0415

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(step_s)
            loss = self.layer(batch["image"]).pow(2).mean() + 1.0
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    log = tmp_path / f"train-{load_s}-{step_s}.log"
    lines = ProgressLines(log, 4, ValidationMetricsToDict(("val/x", "max")), to_stdout=False)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[lines], accelerator="cpu")
    loader = torch.utils.data.DataLoader(_SlowData(load_s), batch_size=4)
    trainer.fit(Module(), train_dataloaders=loader)
    return log.read_text().splitlines()


def field(line: str, name: str) -> str:
    return line.split(f" {name}=")[1].split()[0]


def test_data_wait_and_samples_per_second_measure_the_loader_and_the_step(tmp_path):
    """Loading 4 samples takes 0.2 s and a step 0.02 s: most of the time is waiting for data; the
    other way round little is. Either way about 4 samples per 0.22 s."""
    waiting = progress_of(tmp_path, load_s=0.05, step_s=0.02)
    working = progress_of(tmp_path, load_s=0.005, step_s=0.2)
    for lines in (waiting, working):
        assert [field(line, "step") for line in lines[1:]] == ["4/12", "8/12", "12/12"]
        assert float(field(lines[-1], "train/loss")) >= 1.0 and field(lines[-1], "lr") == "5.00e-01"
        # generous bounds: a loaded machine only slows things down
        assert 4 / 0.22 / 3 < float(field(lines[-1], "samples/s")) < 4 / 0.22 * 1.2
    assert all(int(field(line, "data_wait").rstrip("%")) >= 60 for line in waiting[2:])
    assert all(int(field(line, "data_wait").rstrip("%")) <= 30 for line in working[2:])
    assert field(waiting[-1], "eta") == "0:00:00"
