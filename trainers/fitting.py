"""Training an experiment: one Lightning run, or the steps a task names (``configs/steps.py``).

``fit_experiment`` is what ``visage fit`` does after the config is checked and the run directory is
chosen: it builds the run, makes its data, loads fine-tuning weights, trains, validates, and writes
``metrics.json``; a task with steps gets one such run (or a prediction pass) per step, in folders of
its own under the run directory, and resumes at the first step that has not finished.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from configs.schema import ConfigError, to_plain
from configs.steps import Step
from trainers import stop_signals
from trainers.build import Run, build_run, write_metrics
from trainers.launched_ranks import TERMINATED_EXIT
from trainers.config import apply_overrides
from trainers.tasks import load, task

STEP_DONE = "done.json"  # a prediction step's marker (a training step has its metrics.json)


@dataclass
class FitOutcome:
    run: Run | None
    metrics: dict
    code: int = 0


def finetune_callbacks(cfg: DictConfig) -> list:
    if not cfg.finetune["freeze"]:
        return []
    from trainers.finetune import FreezeUnfreeze  # noqa: PLC0415

    return [FreezeUnfreeze(list(cfg.finetune["freeze"]), cfg.finetune["unfreeze_at_epoch"],
                           cfg.finetune["lr_factor"])]


def check_freeze_paths(cfg: DictConfig, module) -> None:
    """Every ``finetune.freeze`` path names a submodule of the built module (before any data is made)."""
    from trainers.finetune import resolve_submodule  # noqa: PLC0415

    for path in cfg.finetune["freeze"]:
        try:
            resolve_submodule(module, path)
        except AttributeError as err:
            raise ConfigError(f"finetune.freeze: {err}") from None


def load_finetune_weights(cfg: DictConfig, run: Run):
    """The ``finetune.from`` weights loaded into the module (ConfigError when too little of them fits);
    the report, or None when nothing was asked for."""
    if not cfg.finetune["from"] or run.resume_from:
        return None
    from trainers.finetune_guard import load_finetune_weights as load_checked  # noqa: PLC0415

    return load_checked(run.module, to_plain(cfg))


def write_finetune_report(run: Run, report) -> None:
    if report is not None and run.trainer.is_global_zero:
        print(report.format(), flush=True)
        (run.run_dir / "finetune_report.txt").write_text(report.format())


def once(action: Callable[[], None] | None) -> Callable[[], None]:
    """``action`` the first time the result is called, nothing after."""
    done = []

    def call() -> None:
        if action is not None and not done:
            done.append(True)
            action()
    return call


def fit_run(cfg: DictConfig, run_dir: Path, resume_from: str | None,
            prepare_dir: Callable[[], None] | None = None) -> FitOutcome:
    """Build and load the fine-tuning weights; then ``prepare_dir`` (the run directory is written only once
    the run is built, so a setting Lightning refuses or weights that do not fit leave nothing behind);
    make the data, train; then the validation metrics of the trained model in metrics.json."""
    run = build_run(cfg, run_dir, resume_from, extra_callbacks=finetune_callbacks(cfg))
    check_freeze_paths(cfg, run.module)
    report = load_finetune_weights(cfg, run)
    if prepare_dir is not None:
        prepare_dir()
    write_finetune_report(run, report)
    # synthetic data is generated here, under a file lock, before any collective could time out
    run.datamodule.prepare_data()
    try:
        run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_from)
    except stop_signals.StoppedAtStep as stop:  # SIGTERM or the requeue signal: checkpoint saved
        if run.trainer.is_global_zero:
            print(f"visage: {stop.message}", file=sys.stderr, flush=True)
        return FitOutcome(run, {}, stop.code)
    if stop_signals.REQUESTS.stopped_after_training:  # SIGTERM after the last step: no final validation
        path, step = stop_signals.REQUESTS.stopped_after_training
        if run.trainer.is_global_zero:
            print(f"visage: terminated (SIGTERM) after the last training step: saved {path} at global step {step}; "
                  "the final validation did not run (resume with run.resume=auto to run it)", file=sys.stderr)
        return FitOutcome(run, {}, TERMINATED_EXIT)
    # validate the final weights, unless fit's last validation already did (it would be logged twice)
    validated_last = run.metrics.metrics and run.metrics.step == run.trainer.global_step
    final = None
    if not validated_last:
        final = run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (final[0] if final else run.metrics.metrics).items()}
    if run.trainer.is_global_zero:
        write_metrics(run, metrics)
    return FitOutcome(run, metrics)


# -- steps -------------------------------------------------------------------------------------------
def task_steps(cfg: DictConfig) -> list[Step]:
    """The steps the task's module names for this config (none: one plain run)."""
    module = load(task(cfg.task).module)
    hook = getattr(module, "steps", None)
    return list(hook(OmegaConf.to_container(cfg, resolve=True))) if hook is not None else []


def handed_checkpoint(step_dir: Path) -> Path:
    """The checkpoint a finished training step hands on: its best, else its last."""
    best = sorted((step_dir / "checkpoints").glob("best-*.ckpt"))
    return best[-1] if best else step_dir / "checkpoints" / "last.ckpt"


def step_resume_point(step_dir: Path) -> str | None:
    """Where an unfinished training step continues: its newest checkpoint that loads (a SLURM one
    included), else from the start."""
    from trainers.checkpoint_choice import checkpoint_to_resume  # noqa: PLC0415

    found = checkpoint_to_resume(step_dir) if step_dir.is_dir() else None
    return str(found) if found is not None else None


def step_finished(step: Step, step_dir: Path) -> bool:
    return (step_dir / ("metrics.json" if step.kind == "fit" else STEP_DONE)).is_file()


def run_steps(cfg: DictConfig, steps: list[Step], run_dir: Path,
              prepare_dir: Callable[[], None] | None = None) -> FitOutcome:
    """Every step in order, each in ``run_dir/<step>``; finished steps are skipped (their outputs kept).
    ``prepare_dir`` runs once the first step to run is built."""
    prepare_dir = once(prepare_dir)
    folders: dict[str, str] = {}
    outcome = FitOutcome(None, {})
    for step in steps:
        step_dir = run_dir / step.name
        folders[step.name] = str(step_dir)
        step_cfg = apply_overrides(cfg, [o.format(**folders) for o in step.overrides])
        if step_finished(step, step_dir):
            if step.kind == "fit":
                folders[f"{step.name}_ckpt"] = str(handed_checkpoint(step_dir))
                outcome = FitOutcome(None, json.loads((step_dir / "metrics.json").read_text())["metrics"])
            continue
        def prepare_step(step_dir=step_dir, step_cfg=step_cfg) -> None:
            prepare_dir()
            step_dir.mkdir(parents=True, exist_ok=True)
            (step_dir / "config.yaml").write_text(OmegaConf.to_yaml(step_cfg, resolve=True))

        if step.kind == "fit":
            outcome = fit_run(step_cfg, step_dir, step_resume_point(step_dir), prepare_dir=prepare_step)
            if outcome.code:
                return outcome
            handed = handed_checkpoint(step_dir)
            if not handed.is_file():  # a run that wrote none (fast_dev_run): the next steps need its weights
                outcome.run.trainer.save_checkpoint(handed)
            folders[f"{step.name}_ckpt"] = str(handed)
        else:
            predict_step(step_cfg, step_dir, prepare_dir=prepare_step)
    return outcome


def predict_step(cfg: DictConfig, step_dir: Path, prepare_dir: Callable[[], None] | None = None) -> None:
    run = build_run(cfg, step_dir)
    if prepare_dir is not None:
        prepare_dir()
    run.datamodule.prepare_data()
    run.trainer.predict(run.module, datamodule=run.datamodule, return_predictions=False)
    if run.trainer.is_global_zero:
        print(run.module.save_predictions(step_dir / "predictions.pt"), flush=True)
        (step_dir / STEP_DONE).write_text(json.dumps({"step": step_dir.name}))


def fit_experiment(cfg: DictConfig, run_dir: Path, resume_from: str | None,
                   prepare_dir: Callable[[], None] | None = None) -> FitOutcome:
    """The whole training of an experiment: its steps, or one run (``prepare_dir``: see ``fit_run``)."""
    steps = task_steps(cfg)
    if not steps:
        return fit_run(cfg, run_dir, resume_from, prepare_dir=prepare_dir)
    outcome = run_steps(cfg, steps, run_dir, prepare_dir)
    if not outcome.code and outcome.run is not None and outcome.run.trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(
            {"metrics": outcome.metrics, "steps": [s.name for s in steps]}, indent=1, sort_keys=True))
    return outcome
