"""Training and inference throughput of the iresnet50 face backbone, fp32 against bf16 autocast.

    python benchmarks/bench_gpu_throughput.py                      # CUDA, batch 128, 112x112
    python benchmarks/bench_gpu_throughput.py --channels-last      # NHWC memory format as well
    python benchmarks/bench_gpu_throughput.py --device cpu --steps 2 --batch 4   # smoke test, no GPU

A training step is forward + backward + SGD (momentum 0.9, weight decay 5e-4) through the backbone
and a 1000-class linear head with the loss in fp32; forward-only runs under ``torch.no_grad`` in
eval mode. Images/s are measured over ``--steps`` timed steps after ``--warmup`` untimed ones, with
the device synchronised around the timed loop. Every configuration runs in the same process, and
the bf16 figures are printed as ratios against the fp32 figures of that run. On CUDA, "fp32" means
PyTorch's defaults (TF32 convolutions on Ampere and later); ``--no-tf32`` makes it strict fp32.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets import iresnet

ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet_tiny")
NUM_CLASSES = 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--arch", default="iresnet50", choices=ARCHS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (10 on CUDA, 0 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="also measure channels_last (NHWC)")
    parser.add_argument("--no-tf32", action="store_true", help="strict fp32 convolutions and matmuls on CUDA")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(arch: str, size: int, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    backbone = getattr(iresnet, arch)(input_size=size).to(device)
    head = nn.Linear(backbone.num_features, NUM_CLASSES).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    return backbone, head


def images_per_second(args, device: torch.device, mode: str, bf16: bool, channels_last: bool) -> tuple[float, float]:
    """(images/s, peak GPU memory in GiB or nan) for one configuration."""
    backbone, head = build(args.arch, args.size, device, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    if mode == "train":
        backbone.train()
        parameters = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                embeddings = backbone(images)
            loss = F.cross_entropy(head(embeddings.float()), labels)  # loss in fp32
            loss.backward()
            optimizer.step()
    else:
        backbone.eval()

        def step():
            with torch.no_grad(), autocast:
                backbone(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del backbone, head, images
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return args.batch * args.steps / elapsed, peak


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_gpu_throughput: no CUDA device is available (torch {torch.__version__}, "
                 f"built with CUDA {torch.version.cuda}); run on a GPU machine, or use "
                 "--device cpu --steps 2 --batch 4 for a smoke test")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU"
    if args.warmup is None:
        args.warmup = 10 if device.type == "cuda" else 0
    print(f"{args.arch} {args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, device {name}, torch {torch.__version__}"
          + (f", TF32 {'off' if args.no_tf32 else 'on (default)'}" if device.type == "cuda" else ""))

    layouts = [False, True] if args.channels_last else [False]
    results = {}
    header = f"{'mode':8s} {'layout':14s} {'precision':10s} {'images/s':>10s} {'vs fp32':>8s} {'peak GiB':>9s}"
    print(header + "\n" + "-" * len(header))
    for mode in ("train", "forward"):
        for channels_last in layouts:
            for bf16 in (False, True):
                rate, peak = images_per_second(args, device, mode, bf16, channels_last)
                results[mode, channels_last, bf16] = rate
                baseline = results[mode, False, False]  # fp32, contiguous, same run
                layout = "channels_last" if channels_last else "contiguous"
                print(f"{mode:8s} {layout:14s} {'bf16' if bf16 else 'fp32':10s} {rate:10.1f} "
                      f"{rate / baseline:7.2f}x {peak:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
