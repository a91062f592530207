"""A run's CSV log read back: every metric as (steps, values), resumptions included.

Lightning's CSV logger writes ``<run>/csv/metrics.csv``; each resumption writes ``csv-1``,
``csv-2``, ... (trainers/build.csv_version), and the curve is their concatenation. A step logged
again after a resumption keeps its latest value.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np


def csv_files(run_dir: Path) -> list[Path]:
    """The run's metrics.csv files in the order they were written."""
    def order(folder: Path) -> int:
        match = re.fullmatch(r"csv-(\d+)", folder.name)
        return int(match.group(1)) if match else 0

    folders = [p for p in Path(run_dir).glob("csv*") if p.name == "csv" or re.fullmatch(r"csv-\d+", p.name)]
    return [folder / "metrics.csv" for folder in sorted(folders, key=order) if (folder / "metrics.csv").is_file()]


def read_metrics(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (steps ascending, values) of every numeric column but ``step``."""
    by_metric: dict[str, dict[int, float]] = {}
    for path in csv_files(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                step = int(float(row["step"]))
                for key, text in row.items():
                    if key in ("step", None) or text in ("", None):
                        continue
                    try:
                        by_metric.setdefault(key, {})[step] = float(text)
                    except ValueError:
                        continue
    result = {}
    for key, values in by_metric.items():
        steps = np.array(sorted(values), dtype=np.int64)
        result[key] = (steps, np.array([values[s] for s in steps], dtype=np.float64))
    return result
