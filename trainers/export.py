"""`visage export CHECKPOINT --out backbone.pt`: the backbone of a run as a plain state_dict.

The file holds only the backbone's parameters and buffers (no classifier, no optimizer, no config),
under the backbone's own names: for the iresnets these are insightface's names, so

    backbone = iresnet50(num_features=512, input_size=112)
    backbone.load_state_dict(torch.load("backbone.pt"), strict=True)

works here and in insightface's own ``backbones/iresnet.py`` (``get_model("r50")``) for 112x112
inputs and 512-d embeddings.
"""
from __future__ import annotations

from pathlib import Path

import torch

from configs.errors import VisageError
from trainers.tasks import TASKS, load



class ExportError(VisageError, ValueError):
    """A checkpoint that holds no backbone to export; the message says why."""


def backbone_state_dict(checkpoint: dict, prefix: str | None = None) -> tuple[dict, dict]:
    """``(state_dict, model config)`` of the backbone stored in a Lightning checkpoint dict."""
    if "state_dict" not in checkpoint:
        raise ExportError("not a Lightning checkpoint (no 'state_dict')")
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    if prefix is None:
        name = config.get("task")
        if name not in TASKS:
            raise ExportError(f"the checkpoint's task {name!r} is not one of {', '.join(TASKS)}; pass --prefix")
        prefix = getattr(load(TASKS[name].module), "export_prefix", None)  # the module says which weights export
        if prefix is None:
            raise ExportError(f"task {name!r} has no backbone to export; pass --prefix")
    state = {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}
    if not state:
        raise ExportError(f"no weights under {prefix!r} in the checkpoint")
    return state, config.get("model", {})


def describe(model: dict, image_size: int | None) -> str:
    """How to build the network that loads the exported weights."""
    backbone = model.get("backbone", "?")
    if backbone.startswith("iresnet"):
        return (f"modules.nets.iresnet.{backbone}(num_features={model.get('embedding_size')}, "
                f"input_size={image_size})")
    if backbone == "mobilefacenet":
        return (f"modules.nets.mobilefacenet.MobileFaceNet(embedding_size={model.get('embedding_size')}, "
                f"input_size={image_size})")
    return f"the {backbone!r} backbone of the run's config"


def export_backbone(checkpoint_path: str | Path, out: str | Path, prefix: str | None = None) -> Path:
    checkpoint_path, out = Path(checkpoint_path), Path(out)
    if not checkpoint_path.is_file():
        raise ExportError(f"checkpoint {checkpoint_path} does not exist")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state, model = backbone_state_dict(checkpoint, prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().clone().contiguous() for key, value in state.items()}, out)
    image_size = ((checkpoint.get("hyper_parameters") or {}).get("config") or {}).get("data", {}).get("image_size")
    print(f"backbone: {out} ({len(state)} tensors, "
          f"{sum(v.numel() for v in state.values() if v.is_floating_point()):,} numbers)\n"
          f"load it into {describe(model, image_size)} with load_state_dict(strict=True)", flush=True)
    return out


def cmd_export(args) -> int:
    try:
        export_backbone(args.checkpoint, args.out or Path(args.checkpoint).with_name("backbone.pt"), args.prefix)
    except ExportError as err:
        print(f"visage: export: {err}", flush=True)
        return 1
    return 0


def add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="write a checkpoint's backbone as a plain state_dict")
    export.add_argument("checkpoint", help="a run's checkpoint, e.g. runs/NAME/ID/checkpoints/last.ckpt")
    export.add_argument("--out", help="output file (default: backbone.pt beside the checkpoint)")
    export.add_argument("--prefix", help="state_dict prefix of the backbone (default: from the run's task)")
    export.set_defaults(func=cmd_export)
