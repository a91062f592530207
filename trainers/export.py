"""`visage export CHECKPOINT --format state_dict|torchscript|onnx`: a run's embedding network alone.

Which network a task exports is its module's ``exportable()`` hook (``modules/exportable.py``): the
network is rebuilt from the checkpoint's own config, loaded strictly with the checkpoint's weights,
and written as

- ``state_dict``: a plain dict of its tensors under the network's own names (no classifier, no
  optimizer, no config); for the iresnets these are insightface's names, so
  ``iresnet50(num_features=512, input_size=112).load_state_dict(torch.load(PATH))`` works here and
  in insightface's ``backbones/iresnet.py``. ``finetune.from=PATH`` fine-tunes any task from it;
- ``torchscript``: ``torch.jit.trace`` of the network, for ``torch.jit.load(PATH)`` without Visage;
- ``onnx``: ``torch.onnx.export`` (input ``images``, output ``embeddings``, any batch size); needs the
  ``onnx`` package (``pip install 'visage[onnx]'``).

Every format is read back and run on the hook's example batch (ONNX through onnxruntime when it is
installed); its outputs must equal the checkpoint's network's. The default ``--out`` is the run
directory's ``export/`` folder (``runs/NAME/ID/export/backbone.pt`` for ``last.ckpt``). What the
export fits (``model.backbone``, ``data.image_size``, ...) and the ``visage fit`` command lines that
fine-tune each task from it are printed.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from omegaconf import OmegaConf

from configs.errors import VisageError
from configs.schema import to_plain
from modules.nets.state_dicts import read_lightning_checkpoint, under_prefix
from trainers.finetune import resolve_submodule
from trainers.tasks import TASKS, load

FORMATS = {"state_dict": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
TOLERANCE = 1e-4  # largest difference from the checkpoint's outputs, relative to their largest value


class ExportError(VisageError, ValueError):
    """A checkpoint or option that cannot be exported; the message says why and what to do."""

    exit_code = 2


class ExportFailed(VisageError, RuntimeError):
    """The network could not be written in the format, or the file does not reproduce its outputs."""


def read_checkpoint(path: Path) -> dict:
    checkpoint = read_lightning_checkpoint(path, "checkpoint", ExportError,
                                           "; export a run's checkpoints/last.ckpt or best-*.ckpt")
    config = (checkpoint.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict) or config.get("task") not in TASKS:
        raise ExportError(f"{path} holds no Visage config with a known task (hyper_parameters.config.task "
                          f"is {(config or {}).get('task')!r}; tasks: {', '.join(TASKS)})")
    return checkpoint


def with_current_defaults(config: dict) -> dict:
    """The checkpoint's config on its task's current schema: keys added since it was saved get defaults."""
    try:
        return to_plain(OmegaConf.merge(OmegaConf.structured(load(TASKS[config["task"]].schema)), config))
    except Exception:  # noqa: BLE001 (a key the schema has dropped since: the config as it was saved)
        return config


def checkpoint_network(config: dict, state_dict: dict, path: Path):
    """``(network in eval mode, Exportable)``: the task's embedding network with the checkpoint's weights."""
    module = load(TASKS[config["task"]].module)(config)
    if not callable(getattr(module, "exportable", None)):
        raise ExportError(f"task {config['task']!r} has no network to export (its module has no exportable() hook)")
    spec = module.exportable()
    network = resolve_submodule(module, spec.attribute)
    prefix = f"{spec.attribute}."
    state = under_prefix(state_dict, prefix)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected or not state:
        raise ExportError(f"{path}: the weights under {prefix!r} do not fit the {spec.attribute} its config builds "
                          f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. "
                          f"{unexpected[:2]})")
    return network.eval(), spec


def default_out(checkpoint_path: Path, fmt: str) -> Path:
    """``<run>/export/backbone<ext>`` for ``<run>/checkpoints/last.ckpt``; other checkpoints add their name."""
    folder = checkpoint_path.parent
    run_dir = folder.parent if folder.name == "checkpoints" else folder
    name = "backbone" if checkpoint_path.stem == "last" else f"backbone-{checkpoint_path.stem}"
    return run_dir / "export" / f"{name}{FORMATS[fmt]}"


def write(network: torch.nn.Module, example: torch.Tensor, fmt: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ExportError("--format onnx needs the onnx package: pip install 'visage[onnx]' (or pip install onnx)")
    try:
        _write(network, example, fmt, out)
    except Exception as err:  # an operator the tracer or the ONNX exporter cannot take
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportFailed(f"writing {out} as {fmt} failed: {first}") from None


def _write(network: torch.nn.Module, example: torch.Tensor, fmt: str, out: Path) -> None:
    if fmt == "state_dict":
        torch.save({key: value.detach().clone().contiguous() for key, value in network.state_dict().items()}, out)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shape checks in forward become constants: the size is fixed anyway
            traced = torch.jit.trace(network, example)
        torch.jit.save(traced, str(out))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its successor
            torch.onnx.export(network, (example,), str(out), dynamo=False, input_names=["images"],
                              output_names=["embeddings"], opset_version=17,
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})


def read_back(network: torch.nn.Module, example: torch.Tensor, fmt: str, out: Path) -> torch.Tensor | None:
    """The written file's outputs on ``example`` (None for ONNX without onnxruntime)."""
    if fmt == "state_dict":
        import copy  # noqa: PLC0415

        fresh = copy.deepcopy(network)
        fresh.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
        return fresh(example)
    if fmt == "torchscript":
        return torch.jit.load(str(out), map_location="cpu")(example)
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime  # noqa: PLC0415

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["embeddings"], {"images": example.numpy()})[0])


def export(checkpoint_path: str | Path, fmt: str = "state_dict", out: str | Path | None = None) -> Path:
    """Write the checkpoint's embedding network as ``fmt``; check it, print what it fits. Returns the path."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path)
    config = with_current_defaults(checkpoint["hyper_parameters"]["config"])
    network, spec = checkpoint_network(config, checkpoint["state_dict"], checkpoint_path)
    out = Path(out) if out else default_out(checkpoint_path, fmt)
    with torch.no_grad():
        reference = network(spec.example)
        write(network, spec.example, fmt, out)
        exported = read_back(network, spec.example, fmt, out)
    checked = "not run back (pip install onnxruntime to check it)"
    if exported is not None:
        difference = float((exported - reference).abs().max())
        if difference > TOLERANCE * max(1.0, float(reference.abs().max())):
            raise ExportFailed(f"{out}: the exported network's outputs differ from the checkpoint's by {difference:.3g}")
        checked = f"outputs equal the checkpoint's on a batch of {len(spec.example)} (max difference {difference:.1e})"
    tensors = network.state_dict().values()
    print(f"exported {spec.attribute} ({config['model'].get('backbone', '?')}) of {checkpoint_path} "
          f"(task {config['task']}, step {checkpoint.get('global_step', '?')}) as {fmt}: {out.resolve()}\n"
          f"  {len(tensors)} tensors, {sum(t.numel() for t in tensors if t.is_floating_point()):,} numbers; "
          f"{checked}\n  {spec.signature}\n  fits {' '.join(spec.overrides)}", flush=True)
    if fmt == "state_dict":
        from trainers.export_commands import print_finetune_commands  # noqa: PLC0415

        print_finetune_commands(out.resolve(), spec.overrides)
    return out


def cmd_export(args) -> int:
    export(args.checkpoint, args.format, args.out)
    return 0
