"""`visage compare RUN_DIR...`: the monitored metrics of several runs side by side, from their CSV logs.

For each metric (the task's monitored metric of every run, or those named with ``--metric``) a
table: one row per run with its best value and step, its last value and step, and how many times
it was logged; and one chart with a curve per run, all charts side by side in one PNG (``--out``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from configs.schema import ConfigError
from trainers.csv_log import csv_files, read_metrics


def add_compare_parser(sub) -> None:
    parser = sub.add_parser("compare", help="print and plot the monitored metrics of several runs side by side")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=Path,
                        help="run directories (runs/<name>/<id>), each with its csv/metrics.csv")
    parser.add_argument("--metric", action="append", default=[], metavar="NAME[:max|min]",
                        help="a metric to compare instead of the monitored ones (repeat for more), e.g. val/auc or "
                             "train/loss:min; best means highest unless :min")
    parser.add_argument("--out", type=Path, default=Path("compare.png"), help="the chart (default: compare.png)")
    parser.set_defaults(func=run_compare)


def monitored_metric(run_dir: Path) -> tuple[str, str]:
    """(metric, "max" | "min") of the run's task, from the config.yaml it was trained with."""
    from trainers.tasks import load, task  # noqa: PLC0415 (imports the task's module: torch)

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; pass run directories (runs/<name>/<id>) or name --metric")
    config = yaml.safe_load(config_path.read_text()) or {}
    return tuple(load(task(config.get("task")).module).monitor)


def run_label(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def summary_rows(runs: dict[str, dict], metric: str, direction: str) -> list[str]:
    """The table of one metric: run, best (step), last (step), number of values."""
    width = max(len(label) for label in runs) + 2
    lines = [f"{metric} ({'higher' if direction == 'max' else 'lower'} is better)",
             f"  {'run':<{width}}{'best':>10} {'at step':>8} {'last':>10} {'at step':>8} {'values':>7}"]
    for label, metrics in runs.items():
        if metric not in metrics:
            lines.append(f"  {label:<{width}}{'(not logged)':>10}")
            continue
        steps, values = metrics[metric]
        finite = np.isfinite(values)
        if finite.any():
            pick = np.nanargmax if direction == "max" else np.nanargmin
            best = int(pick(np.where(finite, values, np.nan)))
            best_text = f"{values[best]:>10.4f} {steps[best]:>8d}"
        else:
            best_text = f"{'nan':>10} {'':>8}"
        lines.append(f"  {label:<{width}}{best_text} {values[-1]:>10.4f} {steps[-1]:>8d} {len(values):>7d}")
    return lines


def run_compare(args: argparse.Namespace) -> int:
    from modules import pictures  # noqa: PLC0415
    from modules.charts import line_chart, side_by_side  # noqa: PLC0415

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not csv_files(run_dir):
            raise ConfigError(f"{run_dir}: no csv/metrics.csv; pass run directories (runs/<name>/<id>) of runs "
                              "that have logged something")
    runs = {run_label(d): read_metrics(d) for d in run_dirs}
    if len(runs) < len(run_dirs):  # two runs of the same name/id under different roots
        runs = {str(d): read_metrics(d) for d in run_dirs}
    directions = {}
    for entry in args.metric:
        metric, _, direction = entry.partition(":")
        if direction not in ("", "max", "min"):
            raise ConfigError(f"--metric {entry}: expected NAME, NAME:max or NAME:min")
        directions[metric] = direction or "max"
    if not args.metric:
        for run_dir in run_dirs:
            metric, direction = monitored_metric(run_dir)
            directions.setdefault(metric, direction)
    charts = []
    for metric, direction in directions.items():
        print("\n".join(summary_rows(runs, metric, direction)) + "\n")
        charts.append(line_chart({label: metrics[metric] for label, metrics in runs.items() if metric in metrics},
                                 title=metric, y_label=metric, size=(720, 460)))
    path = pictures.save_png(args.out, side_by_side(charts))
    print(f"chart: {path}")
    return 0
