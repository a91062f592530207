"""The benchmark scripts still run (a smoke run of each on CPU with tiny sizes; no timing is checked)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_gpu_throughput_benchmark_runs_on_cpu():
    out = _run("bench_gpu_throughput.py", "--device", "cpu", "--steps", "1", "--batch", "2",
               "--arch", "iresnet_tiny", "--size", "32")
    assert "train" in out and "forward" in out and "bf16" in out


def test_partial_fc_benchmark_runs_on_two_ranks():
    out = _run("bench_partial_fc.py", "--classes", "2000", "--steps", "1")
    rows = [line for line in out.splitlines() if line.strip().startswith("2000")]
    assert [row.split()[1:3] for row in rows] == [["full", "softmax"], ["PartialFC", "1.0"], ["PartialFC", "0.1"]]


def test_data_benchmark_runs_every_row_with_and_without_workers():
    out = _run("bench_data.py", "--samples", "128", "--batch", "32", "--repeats", "1", "--workers", "0", "1")
    names = ["bare resize", "bare augment", "visage plain, no augment", "visage plain + augment",
             "visage pk + augment", "folder loader + augment"]
    rows = {(name, workers) for line in out.splitlines() for name in [*names, "bare augment ceiling"]
            for workers in ("0", "1") if line.startswith(name) and line[len(name):].split()[:1] == [workers]}
    assert rows == {(name, workers) for name in names for workers in ("0", "1")} | {("bare augment ceiling", "1")}
    assert "x folder loader [goal >= 1.0]" in out


def test_synthetic_faces_benchmark_runs():
    out = _run("bench_synth.py", "--faces", "20")
    rows = [line.split()[0:3] for line in out.splitlines() if line.startswith(("baseline", "faces"))]
    assert [r[0] for r in rows] == ["baseline:", "faces", "faces", "faces"] and "x goal" in out


def test_training_overhead_benchmark_runs_both_loops():
    out = _run("bench_training_overhead.py", "--steps", "3", "--warmup", "1", "--repeats", "1", "--p", "2", "--k", "2",
               "--distinct", "2", "--override", "model.width=8")
    rows = [line.split() for line in out.splitlines() if line.startswith(("raw ", "lightning "))]
    assert [row[0] for row in rows if row[1][0].isdigit()] == ["raw", "lightning"]  # the table's two rows
    assert "lightning / raw (goal <= 1.05)" in out


def test_detector_benchmark_runs_against_facenet_pytorch(mtcnn_weights, facenet_cache):
    out = _run("bench_detector.py", "--images", "1", "--repeats", "1", "--weights", str(mtcnn_weights),
               "--facenet-cache", str(facenet_cache), "--mining-scenes", "2")
    rows = [line.split("  ")[0] for line in out.splitlines() if line.startswith(("visage MTCNN", "facenet-pytorch"))]
    assert rows == ["visage MTCNN CPU 1 thread", "visage MTCNN CPU 1 thread, batch of 1", "facenet-pytorch MTCNN CPU 1 thread"]
    assert "P/R/O ms" in out and "visage / facenet-pytorch (CPU, 1 thread, one image per call)" in out
    assert "OpenCV Haar cascade" in out  # a row, or the line saying this OpenCV lacks it
    assert "mining rnet crops:" in out and "mining onet crops:" in out


def test_metrics_against_torchmetrics_benchmark_runs():
    out = _run("bench_metrics_vs_torchmetrics.py", "--pairs", "2000", "--queries", "60", "--repeats", "1")
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("ROC ", "AUC ", "retrieval "))]
    assert rows == ["ROC", "AUC", "retrieval"] and out.count("x ") >= 3
