"""Small helpers shared by the benchmarks: pinning threads, the load average, medians, a text table."""
from __future__ import annotations

import os
import statistics

import cv2
import torch


def single_threaded() -> None:
    """One torch thread and one OpenCV thread, for every pipeline alike (steadier on a shared machine)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min-max of the repetitions, as a percentage of their median."""
    mid = statistics.median(values)
    return f"{100 * (min(values) / mid - 1):+.0f}/{100 * (max(values) / mid - 1):+.0f}%"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
