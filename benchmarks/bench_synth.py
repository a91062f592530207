"""Throughput of the synthetic face engine on ONE CPU core, against a bare baseline and the goal.

    python benchmarks/bench_synth.py [--faces 2000] [--size 112]

Pins itself to one core and one OpenCV thread (torch is not imported). Rows: full face generation
(background, face, nuisance, JPEG) with 10 images per identity, with 1 image per identity (every
image pays for a new identity and its shape template), and at 64 px (the embedder config's size).
The baseline, run in the same process, only fills a 112 px image with a colour and JPEG-encodes and
decodes it.

Columns: faces/s from wall time; cpu f/s from this process's CPU time; "x baseline" = CPU rate over
the baseline's CPU rate; "x goal" = rate over the 500 faces/s goal. On a machine shared with other
jobs both clocks run slow; the "best-of" line times each step several times and keeps the fastest
(as timeit does), which is what a quiet core gives.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from datamodules.synth.draw import identity_template, paint_program
from datamodules.synth.faces import generate_faces, render_face
from datamodules.synth.identity import image_rng, sample_identity
from datamodules.synth.nuisance import jpeg_roundtrip

GOAL_FACES_PER_S = 500.0


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    return core


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def baseline_once(size: int, grey: int) -> None:
    image = np.empty((size, size, 3), np.uint8)
    image[:] = grey
    jpeg_roundtrip(image, 90)


def baseline(count: int, size: int) -> None:
    for k in range(count):
        baseline_once(size, k % 256)


def faces(count: int, size: int, per_identity: int, first: int) -> None:
    for _ in generate_faces(identities=count // per_identity, per_identity=per_identity, size=size, seed=1,
                            first_identity=first):
        pass


def best_of(fn, repeats: int = 9) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def best_of_rate(size: int, per_identity: int, identities: int = 20, images: int = 5) -> tuple[float, float]:
    """Faces/s and baseline img/s from the fastest of several timings of every step: the cost of a new
    identity (parameters, shape template, paint program) spread over ``per_identity`` images, plus
    the cost of one image."""
    identity_cost, image_cost = [], []
    for identity in range(10_000, 10_000 + identities):
        def new_identity(identity=identity):
            params = sample_identity(identity, 1)
            identity_template.__wrapped__(params)
            paint_program.__wrapped__(params)
        identity_cost.append(best_of(new_identity))
        params = sample_identity(identity, 1)
        for index in range(images):
            image_cost.append(best_of(lambda: render_face(params, image_rng(identity, index, 1), size)))
    per_face = np.mean(image_cost) + np.mean(identity_cost) / per_identity
    base = best_of(lambda: baseline_once(size, 128), repeats=200)
    return 1.0 / per_face, 1.0 / base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    core = pin_to_one_core()
    faces(50, args.size, 10, 900_000)  # warm-up (imports, noise bank)
    baseline(200, args.size)
    n = args.faces
    base_wall, base_cpu = timed(lambda: baseline(n, args.size))
    rows = [
        (f"faces {args.size}px, 10 per identity", timed(lambda: faces(n, args.size, 10, 0))),
        (f"faces {args.size}px, 1 per identity", timed(lambda: faces(n, args.size, 1, 100_000))),
        ("faces 64px, 10 per identity", timed(lambda: faces(n, 64, 10, 200_000))),
    ]
    print(f"core {core}, OpenCV threads {cv2.getNumThreads()}, load average {os.getloadavg()[0]:.2f}, "
          f"{n} images per row")
    print(f"{'row':36s} {'faces/s':>8s} {'cpu f/s':>8s} {'x baseline':>11s} {'x goal':>7s} {'cpu x goal':>11s}")
    print(f"{'baseline: fill + JPEG round trip':36s} {n / base_wall:8.0f} {n / base_cpu:8.0f} {1.0:11.3f}")
    for name, (wall, cpu) in rows:
        rate, cpu_rate = n / wall, n / cpu
        print(f"{name:36s} {rate:8.0f} {cpu_rate:8.0f} {cpu_rate / (n / base_cpu):11.3f} "
              f"{rate / GOAL_FACES_PER_S:7.2f} {cpu_rate / GOAL_FACES_PER_S:11.2f}")
    rate, base_rate = best_of_rate(args.size, per_identity=10)
    print(f"best-of timings, {args.size}px, 10 per identity: {rate:.0f} faces/s, baseline {base_rate:.0f} img/s, "
          f"x baseline {rate / base_rate:.3f}, x goal {rate / GOAL_FACES_PER_S:.2f}")


if __name__ == "__main__":
    main()
