"""Every task of the table: every bundled config of it loads, builds its module and datamodule, and
runs one training and one validation batch on tiny synthetic data (Lightning's fast_dev_run).

A new task gets this test by adding its line to ``trainers.tasks.TASKS`` (with ``tiny`` overrides)
and its configs under ``configs/<task>/``."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainers.config import CONFIG_DIR, load_config
from trainers.tasks import TASKS

CONFIGS = [(name, path) for name in TASKS for path in sorted((CONFIG_DIR / name).glob("*.yaml"))]


def test_every_task_has_configs():
    for name in TASKS:
        assert list((CONFIG_DIR / name).glob("*.yaml")), f"configs/{name}/ holds no config"


@pytest.mark.parametrize("name, path", CONFIGS, ids=[f"{n}/{p.stem}" for n, p in CONFIGS])
def test_every_config_runs_one_training_and_one_validation_batch(name, path, tmp_path):
    from trainers.fitting import fit_experiment

    # on the task's tiny synthetic data, also for a recipe that names a real dataset (data.root)
    overrides = [*TASKS[name].tiny, "data.root=null", "trainer.devices=1",
                 "trainer.strategy=auto", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "trainer.fast_dev_run=1", "logging.wandb=disabled", f"run.root={tmp_path}"]
    cfg = load_config(str(path), overrides)
    assert cfg.task == name
    outcome = fit_experiment(cfg, tmp_path / "run", None)  # a task's steps, each for one batch, or one run
    run = outcome.run
    assert outcome.code == 0 and run.trainer.global_step == 1
    logged = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    metric, direction = run.module.monitor
    assert direction in ("min", "max")
    assert metric in logged and math.isfinite(logged[metric]), (metric, sorted(logged))


def test_a_config_without_a_task_is_an_error_naming_the_key(tmp_path):
    from configs.schema import ConfigError

    path = tmp_path / "no_task.yaml"
    path.write_text("data:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match="^task: missing"):
        load_config(str(path))


def test_configs_build_on_each_other_and_a_circle_is_an_error(tmp_path):
    from configs.schema import ConfigError

    cosface = load_config("recognizer/cosface.yaml")
    arcface = load_config("recognizer/arcface.yaml")
    assert cosface.model.margin.kind == "cosface" and cosface.model.margin.m3 == 0.35
    assert cosface.data == arcface.data and cosface.optim == arcface.optim  # inherited
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntask: embedder\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="^base: .* circle"):
        load_config(str(tmp_path / "a.yaml"))


def test_config_loading_imports_neither_torch_nor_lightning():
    import subprocess
    import sys

    probe = ("import sys; from trainers.config import load_config; from trainers.tasks import TASKS\n"
             "for name in TASKS: load_config(f'{name}/' + sorted(__import__('os').listdir(f'configs/{name}'))[0])\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
