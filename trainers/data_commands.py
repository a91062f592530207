"""`visage data ...`: write, convert and inspect shards."""
from __future__ import annotations

import argparse
from pathlib import Path

from trainers.tasks import TASKS


def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="write, convert and inspect webdataset shards")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    synth = data_sub.add_parser("synth", help="render synthetic data")
    synth_sub = synth.add_subparsers(dest="synth_kind", required=True)
    faces = synth_sub.add_parser("faces", help="synthetic face crops with identities, landmarks, attributes")
    faces.add_argument("--out", required=True, help="dataset folder (gets train/ and val/ splits)")
    faces.add_argument("--identities", type=int, default=1000, help="training identities")
    faces.add_argument("--val-identities", type=int, default=200, help="held-out identities (val split)")
    faces.add_argument("--per-identity", type=int, default=10)
    faces.add_argument("--size", type=int, default=112)
    faces.add_argument("--difficulty", type=float, default=0.5)
    faces.add_argument("--seed", type=int, default=0)
    faces.add_argument("--shard-size", type=int, default=1000)
    faces.set_defaults(func=run)

    scenes = synth_sub.add_parser("scenes", help="synthetic detection scenes: faces with boxes, 5 landmarks, WIDER "
                                                 "flags and an easy / medium / hard setting")
    scenes.add_argument("--out", required=True, help="dataset folder (gets train/ and val/ splits)")
    scenes.add_argument("--train-scenes", type=int, default=600)
    scenes.add_argument("--val-scenes", type=int, default=120)
    scenes.add_argument("--width", type=int, nargs=2, default=[320, 640], metavar=("LOW", "HIGH"))
    scenes.add_argument("--height", type=int, nargs=2, default=[240, 480], metavar=("LOW", "HIGH"))
    scenes.add_argument("--max-faces", type=int, default=15)
    scenes.add_argument("--face-height", type=float, nargs=2, default=[10.0, 300.0], metavar=("LOW", "HIGH"))
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--shard-size", type=int, default=200)
    scenes.set_defaults(func=run)

    convert = data_sub.add_parser("convert", help="convert an official dataset format to shards")
    convert.add_argument("format", choices=("recordio", "folders", "wider", "celeba-landmarks"),
                         help="recordio: insightface train.rec + train.idx; folders: root/<identity>/*.jpg; "
                              "wider: WIDER FACE wider_face_<split>_bbx_gt.txt (--images: its images/ folder, "
                              "--ground-truth: the folder of wider_{easy,medium,hard}_val.mat); celeba-landmarks: "
                              "list_landmarks_align_celeba.txt (--images, --partition, --boxes)")
    convert.add_argument("source", help="folder holding train.rec/train.idx, a .rec path, the folder tree, or the "
                                        "annotation file (wider, celeba-landmarks)")
    convert.add_argument("--images", help="wider, celeba-landmarks: the images folder")
    convert.add_argument("--ground-truth", help="wider: the folder of the official easy/medium/hard .mat files")
    convert.add_argument("--partition", help="celeba-landmarks: list_eval_partition.txt")
    convert.add_argument("--boxes", help="celeba-landmarks: list_bbox_celeba.txt (in-the-wild images)")
    convert.add_argument("--out", required=True, help="dataset folder (the split goes in OUT/SPLIT)")
    convert.add_argument("--split", default="train")
    convert.add_argument("--shard-size", type=int, default=1000)
    convert.set_defaults(func=run)

    pairs = data_sub.add_parser("pairs", help="write an insightface .bin verification set from a split")
    pairs.add_argument("split", help="a split folder holding index.json")
    pairs.add_argument("--out", required=True, help="the .bin file to write")
    pairs.add_argument("--pairs", type=int, default=6000)
    pairs.add_argument("--seed", type=int, default=0)
    pairs.set_defaults(func=run)

    mine = data_sub.add_parser("mine", help="mine R-Net or O-Net training crops with the trained earlier stages "
                                            "(every rank its chunks of scenes; resumes)")
    mine.add_argument("config", help="a detector experiment, e.g. configs/detector/mtcnn.yaml")
    mine.add_argument("overrides", nargs="*", help="key=value, e.g. model.stage=rnet model.weights.pnet=CKPT")
    mine.add_argument("--out", required=True, help="the crop folder (its train/ split is what the stage trains on)")
    mine.set_defaults(func=run)

    inspect = data_sub.add_parser("inspect", help="summarise a split and count bad samples")
    inspect.add_argument("split", help="a split folder holding index.json")
    inspect.add_argument("--task", choices=sorted(TASKS),
                         help="check the fields this task needs, as its training does (default: the whole schema)")
    inspect.add_argument("--verify", action="store_true",
                         help="compare every sample with the checksum written into index.json with it")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth" and args.synth_kind == "scenes":
        from datamodules.synthetic_scenes import ensure_synthetic_scenes  # noqa: PLC0415

        spec = {"train_scenes": args.train_scenes, "val_scenes": args.val_scenes, "width": args.width,
                "height": args.height, "max_faces": args.max_faces, "face_height": args.face_height,
                "seed": args.seed, "shard_size": args.shard_size}
        root = ensure_synthetic_scenes(Path(args.out), spec)
        print(f"wrote {root}/train and {root}/val")
        return 0
    if args.data_command == "synth":
        from datamodules.synthetic_faces import ensure_synthetic_faces  # noqa: PLC0415

        spec = {"identities": args.identities, "val_identities": args.val_identities,
                "per_identity": args.per_identity, "size": args.size, "difficulty": args.difficulty,
                "seed": args.seed, "shard_size": args.shard_size}
        root = ensure_synthetic_faces(Path(args.out), spec)
        print(f"wrote {root}/train and {root}/val")
        return 0
    if args.data_command == "convert" and args.format == "wider":
        from datamodules.converters.wider_face import convert_wider_face  # noqa: PLC0415

        index = convert_wider_face(args.source, args.images, args.out, args.split, ground_truth=args.ground_truth,
                                   max_samples=args.shard_size)
        print(f"wrote {index}")
        return 0
    if args.data_command == "convert" and args.format == "celeba-landmarks":
        from datamodules.converters.celeba_landmarks import convert_celeba_landmarks  # noqa: PLC0415

        indexes = convert_celeba_landmarks(args.source, args.images, args.out, partition=args.partition,
                                           boxes=args.boxes, max_samples=args.shard_size)
        print("wrote " + ", ".join(str(i) for i in indexes.values()))
        return 0
    if args.data_command == "mine":
        return mine_crops(args)
    if args.data_command == "convert":
        if args.format == "recordio":
            from datamodules.converters.recordio import convert_recordio as convert  # noqa: PLC0415
        else:
            from datamodules.converters.folders import convert_folders as convert  # noqa: PLC0415
        index = convert(args.source, args.out, split=args.split, max_samples=args.shard_size, split_on="identity")
        print(f"wrote {index}")
        return 0
    if args.data_command == "pairs":
        from datamodules.converters.verification_bin import verification_pairs_from_split  # noqa: PLC0415

        verification_pairs_from_split(args.split, args.pairs, seed=args.seed, out_path=args.out)
        print(f"wrote {args.out}")
        return 0
    if args.data_command == "inspect":
        from trainers.data_inspect import inspect_split  # noqa: PLC0415

        return inspect_split(Path(args.split), args.task, args.verify)
    raise AssertionError(args.data_command)


def mine_crops(args: argparse.Namespace) -> int:
    """The mining step of a detector experiment alone: ``model.stage`` (rnet or onet) decides which
    earlier stages propose the windows; the crops go to ``--out`` (the Lightning run beside them)."""
    from trainers.config import load_config  # noqa: PLC0415
    from trainers.fitting import predict_step  # noqa: PLC0415

    out = Path(args.out).resolve()
    cfg = load_config(args.config, [*args.overrides, "data.predict_on=mining", f"data.train_crops={out}"])
    predict_step(cfg, out / "run")
    return 0


