"""Images/s of Visage's MTCNN cascade with the real pretrained weights, against facenet-pytorch's MTCNN (the
same weights, its own code loaded from its wheel) and OpenCV's Haar cascade, on the same 640x480 images.

    python benchmarks/bench_detector.py                      # CPU, one thread, 6 images, 5 repeats
    python benchmarks/bench_detector.py --device cuda        # + the cascade on the GPU (one by one, batched)
    python benchmarks/bench_detector.py --images 2 --repeats 1 --weights DIR   # smoke run

Images: the astronaut photo scaled into a 640x480 frame, and composites of real faces (the astronaut's
head at 50-190 px and LFW faces upscaled to 60-110 px, 5 per image) on the coffee photo
(``tests/face_images.py``). Every row runs in this process on the same images, one image per call unless
it says "batch"; the time of a row is the median over ``--repeats`` passes over all images (after one
untimed pass), divided by the number of images. Torch and OpenCV run on ONE thread for every CPU row
(``--threads`` adds rows with more). "faces" is the number found over all images (each composite
holds 5). The per-stage split of Visage's cascade (P-Net with its pyramid and NMS; R-Net with its
crops, NMS and calibration; O-Net) comes from ``MTCNNDetector.detect(profile=...)`` on the same passes.

Baselines: facenet-pytorch 2.6.0's ``MTCNN(keep_all=True).detect`` (min face 20, thresholds
0.6/0.7/0.7, factor 0.709, as ours), from the downloaded wheel with a stub torchvision whose
``batched_nms`` is Visage's (``tests/facenet_wheel.py``); OpenCV's ``haarcascade_frontalface_default.xml``
``detectMultiScale`` (scale 1.1, 5 neighbours, min size 20) on the grey image. Mining rows: scenes/s of
hard-example mining for R-Net and O-Net on synthetic scenes, against cutting P-Net's random crops of the
same scenes. Goal: Visage's CPU
images/s >= facenet-pytorch's on the same images with the same weights (ratio >= 1.0).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load_line, median, print_table, single_threaded, spread  # noqa: E402
from modules.detection.cascade import MTCNNDetector  # noqa: E402
from modules.detection.haar import HaarCascadeMissing, HaarFaceDetector  # noqa: E402
from modules.nets.mtcnn_pretrained import load_facenet_mtcnn  # noqa: E402
from tests import facenet_wheel  # noqa: E402
from tests.face_images import astronaut, astronaut_640x480, face_composite  # noqa: E402


def haar_cascade():
    """OpenCV's frontal-face Haar cascade (modules.detection.haar), or None where this OpenCV lacks it."""
    try:
        return HaarFaceDetector(min_face=20, min_neighbors=5)
    except HaarCascadeMissing:
        return None


def mining_rows(detector: MTCNNDetector, scenes: int, repeats: int, rows: list, ratios: list) -> None:
    """Scenes/s of hard-example mining (the stage's crops from the earlier stages' windows, plus random
    positive/part/landmark crops) for R-Net and O-Net, against cutting P-Net's random crops of the same
    synthetic scenes (the baseline: no net runs)."""
    from datamodules.decoding import DecodedSample
    from datamodules.stage_crops import random_crops
    from datamodules.synth.scenes import generate_scenes
    from modules.detection.mining import mined_crops

    samples = [DecodedSample(key, image, ann) for key, image, ann in
               generate_scenes(scenes, seed=0, width=(320, 480), height=(240, 360), max_faces=8,
                               face_height=(12.0, 160.0))]
    random_of = random_crops(12, 0, per_face=4)
    base = median(timed_passes(lambda: [random_of(i, s) for i, s in enumerate(samples)], repeats)) / scenes
    rows.append(row("P-Net crops (random, no net) per scene", [base * scenes], scenes, 0))
    for stage in ("rnet", "onet"):
        mine = mined_crops(detector, stage, max_windows=48, seed=0, per_face=4)
        seconds = median(timed_passes(lambda: [mine(i, s) for i, s in enumerate(samples)], repeats)) / scenes
        rows.append(row(f"{stage} crops mined, CPU 1 thread, per scene", [seconds * scenes], scenes, 0))
        ratios.append(f"mining {stage} crops: {1 / seconds:.1f} scenes/s, {seconds / base:.1f}x the time of "
                      "random P-Net crops")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N: adds GPU rows")
    parser.add_argument("--images", type=int, default=6, help="the astronaut frame + this many - 1 composites")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="*", default=[], help="extra CPU rows with these thread counts")
    parser.add_argument("--weights", help="folder holding facenet-pytorch's pnet.pt, rnet.pt, onet.pt "
                                          "(default: download the wheel into the cache)")
    parser.add_argument("--facenet-cache", help="where facenet-pytorch's wheel is (or goes) unzipped")
    parser.add_argument("--skip-facenet", action="store_true", help="no facenet-pytorch row")
    parser.add_argument("--gpu-only", action="store_true", help="only the --device cuda rows (no CPU rows)")
    parser.add_argument("--mining-scenes", type=int, default=16, help="synthetic scenes for the mining rows (0: none)")
    return parser.parse_args(argv)


def timed_passes(run_pass, repeats: int, sync=lambda: None, after_warmup=lambda: None) -> list[float]:
    run_pass()
    sync()
    after_warmup()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_pass()
        sync()
        times.append(time.perf_counter() - start)
    return times


def row(name: str, times: list[float], count: int, faces: int, extra: str = "") -> list[str]:
    per_image = median(times) / count
    return [name, f"{1 / per_image:.2f}", f"{1000 * per_image:.0f}", spread(times), str(faces), extra]


def visage_rows(detector: MTCNNDetector, images, repeats: int, label: str, sync) -> tuple[list[list[str]], float]:
    profile: dict[str, float] = {}
    found = []

    def one_by_one():
        found.clear()
        found.extend(detector.detect([image], profile=profile)[0]["boxes"].shape[0] for image in images)

    times = timed_passes(one_by_one, repeats, sync, after_warmup=profile.clear)
    split = " / ".join(f"{1000 * profile[s] / repeats / len(images):.0f}" for s in ("pnet", "rnet", "onet"))
    rows = [row(f"visage MTCNN {label}", times, len(images), sum(found), f"P/R/O ms {split}")]
    batch_found = []

    def batched():
        batch_found[:] = [r["boxes"].shape[0] for r in detector.detect(images)]

    batch_times = timed_passes(batched, repeats, sync)
    rows.append(row(f"visage MTCNN {label}, batch of {len(images)}", batch_times, len(images), sum(batch_found)))
    return rows, median(times) / len(images)


def cpu_rows(args, nets, images, cache, rows: list, ratios: list) -> float:
    """Visage, facenet-pytorch and Haar on the CPU (adds to ``rows`` and ``ratios``); Visage's s/image."""
    detector = MTCNNDetector(nets["pnet"], nets["rnet"], nets["onet"])
    visage, ours = visage_rows(detector, images, args.repeats, "CPU 1 thread", lambda: None)
    rows += visage

    if not args.skip_facenet:
        theirs_detector = facenet_wheel.facenet_detector("cpu", cache)
        found = []

        def facenet_pass():
            found.clear()
            for image in images:
                boxes = theirs_detector.detect(image)[0]
                found.append(0 if boxes is None else len(boxes))

        times = timed_passes(facenet_pass, args.repeats)
        rows.append(row("facenet-pytorch MTCNN CPU 1 thread", times, len(images), sum(found)))
        theirs = median(times) / len(images)
        ratios.append(f"visage / facenet-pytorch (CPU, 1 thread, one image per call): {theirs / ours:.2f}x "
                      "images/s [goal >= 1.0]")
        astro = astronaut()
        ours_512 = median(timed_passes(lambda: detector.detect([astro]), args.repeats))
        theirs_512 = median(timed_passes(lambda: theirs_detector.detect(astro), args.repeats))
        ratios.append(f"512x512 astronaut photo, 1 thread: visage {1000 * ours_512:.0f} ms, facenet-pytorch "
                      f"{1000 * theirs_512:.0f} ms ({theirs_512 / ours_512:.2f}x)")

    haar = haar_cascade()
    if haar is None:
        ratios.append(f"OpenCV Haar cascade: unavailable (OpenCV {cv2.__version__} has no CascadeClassifier or no "
                      "haarcascade_frontalface_default.xml; OpenCV 4.x has both)")
    else:
        haar_found = []

        def haar_pass():
            haar_found.clear()
            for image in images:
                haar_found.append(len(haar.detect(image)["boxes"]))

        haar_times = timed_passes(haar_pass, args.repeats)
        rows.append(row("OpenCV Haar cascade CPU 1 thread", haar_times, len(images), sum(haar_found)))
        ratios.append(f"visage / Haar (CPU, 1 thread): {median(haar_times) / len(images) / ours:.2f}x images/s")

    if args.mining_scenes:
        mining_rows(detector, args.mining_scenes, args.repeats, rows, ratios)
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += visage_rows(detector, images, args.repeats, f"CPU {threads} threads", lambda: None)[0]
    torch.set_num_threads(1)
    return ours


def main(argv=None) -> int:
    args = parse_args(argv)
    single_threaded()
    cache = Path(args.facenet_cache) if args.facenet_cache else None
    weights = Path(args.weights) if args.weights else facenet_wheel.weights_dir(cache)
    nets = load_facenet_mtcnn(weights).nets
    images = [astronaut_640x480()] + [face_composite(seed)[0] for seed in range(max(0, args.images - 1))]
    print(f"{len(images)} images of 640x480; {load_line()}; torch {torch.__version__}, OpenCV {cv2.__version__}")

    rows, ratios = [], []
    cpu_time = None if args.gpu_only else cpu_rows(args, nets, images, cache, rows, ratios)
    if args.device.startswith("cuda"):
        device = torch.device(args.device)
        gpu = MTCNNDetector(*(nets[stage].to(device) for stage in ("pnet", "rnet", "onet")))
        gpu_rows, gpu_time = visage_rows(gpu, images, args.repeats, f"{args.device}",
                                         lambda: torch.cuda.synchronize(device))
        rows += gpu_rows
        ratios.append(f"visage on {torch.cuda.get_device_name(device)}"
                      + (f": {cpu_time / gpu_time:.1f}x CPU 1 thread (one image per call)" if cpu_time else ""))

    print_table(["detector", "images/s", "ms/image", "spread", "faces", ""], rows)
    print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
