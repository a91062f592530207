"""`visage detect IMAGE... (--ckpt C | --weights DIR) --out DIR`: faces, their scores and 5 landmarks per image.

For each image OUT/<name>.json holds the image's size and its faces, best first:

    {"image": "photo.jpg", "width": 640, "height": 480,
     "faces": [{"box": [x0, y0, x1, y1], "score": 0.998, "landmarks": [[x, y], ...5]}]}

(continuous pixel coordinates; landmarks: image-left eye, image-right eye, nose, image-left and
image-right mouth corners), and OUT/<name>.png the image with boxes, scores and landmarks drawn.

Weights: ``--weights DIR``, a folder holding facenet-pytorch's ``pnet.pt``, ``rnet.pt``, ``onet.pt``, or
``--ckpt C``, a Lightning checkpoint whose ``state_dict`` holds the nets under ``pnet.``, ``rnet.``,
``onet.``. An image that cannot be read is reported on one line and skipped; the others are still
processed, and the command then exits 1 (0 when every image was processed).
Also runs alone: ``python -m trainers.detect IMAGE... --weights DIR --out DIR``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from configs.errors import VisageError
from modules.detection.cascade_config import CascadeConfig
from modules.nets.mtcnn_stages import STAGES

# torch, OpenCV and the nets are imported where they are used: registering the subcommand (every
# `visage` command does) stays light

DEFAULTS = CascadeConfig()


class DetectorCheckpointError(VisageError, ValueError):
    """A checkpoint that does not hold the three MTCNN nets."""


class DetectUsageError(VisageError, ValueError):
    exit_code = 2


def nets_from_checkpoint(path: str | Path) -> dict:
    """P-Net, R-Net, O-Net from a Lightning checkpoint holding them under ``pnet.``, ``rnet.``, ``onet.``."""
    from modules.nets.mtcnn import build_stage_net  # noqa: PLC0415
    from modules.nets.state_dicts import read_lightning_checkpoint, under_prefix  # noqa: PLC0415

    state = read_lightning_checkpoint(path, "--ckpt", DetectorCheckpointError)["state_dict"]
    per_stage = {stage: under_prefix(state, f"{stage}.") for stage in STAGES}
    missing = [stage for stage in STAGES if not per_stage[stage]]
    if missing:
        found = [stage for stage in STAGES if per_stage[stage]] or ["none"]
        raise DetectorCheckpointError(f"--ckpt: {path}: no weights for {', '.join(missing)} (found: {', '.join(found)}); "
                                      "detection needs all three stages: a checkpoint of the whole cascade, "
                                      "or --weights DIR")
    nets = {}
    for stage in STAGES:
        net = build_stage_net(stage)
        result = net.load_state_dict(per_stage[stage], strict=False)
        problems = [f"missing {stage}.{key}" for key in result.missing_keys] + \
                   [f"unexpected {stage}.{key}" for key in result.unexpected_keys]
        if problems:
            raise DetectorCheckpointError(f"--ckpt: {path}: {problems[0]} ({len(problems)} key problems)")
        nets[stage] = net
    return nets


def build_detector(args: argparse.Namespace):
    import torch  # noqa: PLC0415

    from modules.detection.cascade import MTCNNDetector  # noqa: PLC0415
    from modules.nets.mtcnn_pretrained import load_facenet_mtcnn  # noqa: PLC0415

    nets = load_facenet_mtcnn(args.weights).nets if args.weights else nets_from_checkpoint(args.ckpt)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    config = CascadeConfig(min_face=args.min_face, factor=args.factor, thresholds=tuple(args.thresholds),
                           nms_per_scale=args.nms_per_scale, nms_across_scales=args.nms_across_scales,
                           nms_rnet=args.nms_rnet, nms_onet=args.nms_onet)
    return MTCNNDetector(*(nets[stage].to(device) for stage in STAGES), config)


def read_rgb(path: Path):
    """The image at ``path`` as H x W x 3 uint8 RGB, or None when it cannot be read."""
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def faces_record(path: Path, image, found: dict) -> dict:
    boxes, scores, landmarks = (found[key].detach().cpu() for key in ("boxes", "scores", "landmarks"))
    faces = [{"box": [round(v, 2) for v in box.tolist()], "score": round(float(score), 5),
              "landmarks": [[round(x, 2), round(y, 2)] for x, y in points.tolist()]}
             for box, score, points in zip(boxes, scores, landmarks)]
    return {"image": str(path), "width": image.shape[1], "height": image.shape[0], "faces": faces}


def draw_faces(image, record: dict):
    """BGR picture of ``image`` with each face's box (green), score and landmarks (eyes blue, nose red,
    mouth yellow)."""
    import cv2  # noqa: PLC0415

    picture = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    colours = [(255, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 255), (0, 255, 255)]
    for face in record["faces"]:
        x0, y0, x1, y1 = (round(v) for v in face["box"])
        cv2.rectangle(picture, (x0, y0), (x1, y1), (0, 255, 0), thickness)
        cv2.putText(picture, f"{face['score']:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, (0, 255, 0), thickness)
        for (x, y), colour in zip(face["landmarks"], colours):
            cv2.circle(picture, (round(x), round(y)), 2 * thickness, colour, -1)
    return picture


def write_png(path: Path, bgr) -> None:
    import cv2  # noqa: PLC0415

    cv2.imwrite(str(path), bgr)


def output_names(paths: list[Path]) -> list[str]:
    """File stems, made unique by a suffix where two images share one (a/x.jpg, b/x.jpg -> x, x_2)."""
    names, seen = [], {}
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return names


def save_weights(detector, path: Path) -> None:
    """The three nets as one plain state_dict under ``pnet.``, ``rnet.``, ``onet.`` (the detector module's
    names): ``finetune.from=PATH`` starts a detector run from them."""
    import torch  # noqa: PLC0415

    state = {f"{stage}.{key}": value.detach().cpu().clone()
             for stage, net in zip(STAGES, (detector.pnet, detector.rnet, detector.onet))
             for key, value in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    print(f"weights: {path} ({len(state)} tensors of P-Net, R-Net, O-Net); fine-tune with "
          f"`visage fit configs/detector/mtcnn.yaml finetune.from={path}`", flush=True)


def cmd_detect(args: argparse.Namespace) -> int:
    detector = build_detector(args)
    if args.save_weights:
        save_weights(detector, Path(args.save_weights))
    if not args.images:
        return 0
    if not args.out:
        raise DetectUsageError("--out: a folder for the results is needed when images are given")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.images]
    skipped, total_faces = [], 0
    for path, name in zip(paths, output_names(paths)):
        image = read_rgb(path)
        if image is None:
            print(f"visage: detect: cannot read image {path}; skipped", file=sys.stderr, flush=True)
            skipped.append(path)
            continue
        record = faces_record(path, image, detector.detect([image])[0])
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        write_png(out / f"{name}.png", draw_faces(image, record))
        total_faces += len(record["faces"])
        print(f"{path}: {len(record['faces'])} face(s) -> {out / name}.json, .png", flush=True)
    print(f"detect: {len(paths) - len(skipped)} image(s), {total_faces} face(s) in {out}"
          + (f"; {len(skipped)} unreadable image(s) skipped" if skipped else ""), flush=True)
    return 1 if skipped else 0


def add_detect_parser(subparsers) -> argparse.ArgumentParser:
    detect = subparsers.add_parser("detect", help="find faces and 5 landmarks with the MTCNN cascade")
    detect.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format OpenCV reads)")
    weights = detect.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="Lightning checkpoint holding pnet., rnet., onet. weights")
    weights.add_argument("--weights", help="folder holding facenet-pytorch's pnet.pt, rnet.pt, onet.pt")
    detect.add_argument("--out", help="folder for one .json and one .png per image")
    detect.add_argument("--save-weights", metavar="PATH",
                        help="also write the three nets as one state_dict (for finetune.from)")
    detect.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    detect.add_argument("--min-face", type=float, default=DEFAULTS.min_face, help="smallest face searched, pixels")
    detect.add_argument("--factor", type=float, default=DEFAULTS.factor, help="image pyramid step")
    detect.add_argument("--thresholds", type=float, nargs=3, default=list(DEFAULTS.thresholds),
                        metavar=("P", "R", "O"), help="face probability each stage keeps")
    detect.add_argument("--nms-per-scale", type=float, default=DEFAULTS.nms_per_scale, help="IoU, P-Net per scale")
    detect.add_argument("--nms-across-scales", type=float, default=DEFAULTS.nms_across_scales,
                        help="IoU, P-Net across scales")
    detect.add_argument("--nms-rnet", type=float, default=DEFAULTS.nms_rnet, help="IoU after R-Net")
    detect.add_argument("--nms-onet", type=float, default=DEFAULTS.nms_onet,
                        help="intersection over the smaller box, after O-Net")
    detect.set_defaults(func=cmd_detect)
    return detect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visage")
    add_detect_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["detect", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except VisageError as err:
        print(f"visage: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
