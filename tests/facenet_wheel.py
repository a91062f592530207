"""facenet-pytorch 2.6.0, as a reference for tests and benchmarks only: its pretrained MTCNN weight files,
and its own MTCNN code loaded from the downloaded wheel (never installed, never copied into Visage).

``pip download --no-deps facenet-pytorch==2.6.0`` fetches the wheel (seconds); it is unzipped into a cache
folder. Its ``detect_face`` imports torchvision, which cannot work here: a stub ``torchvision`` module
gives it ``ops.boxes.batched_nms`` (backed by Visage's NMS, identical in result to torchvision's) and an
empty ``transforms.functional`` (used only by ``extract_face``, which nothing here calls). The stub is put
into ``sys.modules`` only while their modules are imported, and removed afterwards.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

VERSION = "2.6.0"
WHEEL = f"facenet_pytorch-{VERSION}-py3-none-any.whl"


class WheelUnavailable(RuntimeError):
    """The wheel could not be downloaded (no package registry reachable)."""


def default_cache() -> Path:
    root = os.environ.get("VISAGE_CACHE") or Path.home() / ".cache" / "visage"
    return Path(root) / f"facenet-pytorch-{VERSION}"


def unpacked_wheel(cache: Path | None = None) -> Path:
    """The folder holding the unzipped wheel (``facenet_pytorch/`` inside), downloading it once."""
    cache = Path(cache or default_cache())
    root = cache / "unpacked"
    if (root / "facenet_pytorch" / "data" / "onet.pt").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.is_file():
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                 f"facenet-pytorch=={VERSION}", "-d", str(cache)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not wheel.is_file():
            raise WheelUnavailable(f"pip download facenet-pytorch=={VERSION} failed: "
                                   f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    partial = cache / f"unpacked.{os.getpid()}"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(partial)
    try:
        partial.rename(root)  # atomic: a concurrent process sees the whole folder or none
    except OSError:  # another process got there first
        shutil.rmtree(partial, ignore_errors=True)
    return root


def weights_dir(cache: Path | None = None) -> Path:
    """The folder holding facenet-pytorch's ``pnet.pt``, ``rnet.pt``, ``onet.pt``."""
    return unpacked_wheel(cache) / "facenet_pytorch" / "data"


def _torchvision_stub() -> dict[str, types.ModuleType]:
    from modules.detection.nms import batched_nms  # noqa: PLC0415

    def torchvision_batched_nms(boxes, scores, idxs, iou_threshold):
        return batched_nms(boxes, scores, idxs, iou_threshold, mode="union")

    modules = {name: types.ModuleType(name) for name in
               ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
                "torchvision.transforms.functional")}
    modules["torchvision.ops.boxes"].batched_nms = torchvision_batched_nms
    modules["torchvision"].ops, modules["torchvision"].transforms = modules["torchvision.ops"], modules[
        "torchvision.transforms"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    return modules


def facenet_mtcnn_module(cache: Path | None = None) -> types.ModuleType:
    """facenet-pytorch's ``facenet_pytorch.models.mtcnn`` module (``MTCNN``, ``PNet`` ...), loaded from the
    unzipped wheel without running the package's ``__init__`` (which imports more of torchvision)."""
    if "facenet_pytorch.models.mtcnn" in sys.modules:
        return sys.modules["facenet_pytorch.models.mtcnn"]
    root = unpacked_wheel(cache)
    package = types.ModuleType("facenet_pytorch")
    package.__path__ = [str(root / "facenet_pytorch")]
    stub = _torchvision_stub()
    saved = {name: sys.modules.get(name) for name in stub}
    sys.modules["facenet_pytorch"] = package
    sys.modules.update(stub)
    try:
        return importlib.import_module("facenet_pytorch.models.mtcnn")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def facenet_detector(device: str = "cpu", cache: Path | None = None):
    """facenet-pytorch's ``MTCNN`` with its defaults (min face 20, thresholds 0.6/0.7/0.7, factor 0.709),
    keeping every face: ``.detect(image, landmarks=True)`` -> boxes, probabilities, points."""
    import torch  # noqa: PLC0415

    return facenet_mtcnn_module(cache).MTCNN(keep_all=True, device=torch.device(device))
