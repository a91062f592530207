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

    convert = data_sub.add_parser("convert", help="convert an official dataset format to shards")
    convert.add_argument("format", choices=("recordio", "folders"),
                         help="recordio: insightface train.rec + train.idx; folders: root/<identity>/*.jpg")
    convert.add_argument("source", help="folder holding train.rec/train.idx, a .rec path, or the folder tree")
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

    inspect = data_sub.add_parser("inspect", help="summarise a split and count bad samples")
    inspect.add_argument("split", help="a split folder holding index.json")
    inspect.add_argument("--task", choices=sorted(TASKS),
                         help="check the fields this task needs, as its training does (default: the whole schema)")
    inspect.add_argument("--verify", action="store_true",
                         help="compare every sample with the checksum written into index.json with it")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from datamodules.synthetic_faces import ensure_synthetic_faces  # noqa: PLC0415

        spec = {"identities": args.identities, "val_identities": args.val_identities,
                "per_identity": args.per_identity, "size": args.size, "difficulty": args.difficulty,
                "seed": args.seed, "shard_size": args.shard_size}
        root = ensure_synthetic_faces(Path(args.out), spec)
        print(f"wrote {root}/train and {root}/val")
        return 0
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

