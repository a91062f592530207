"""``visage validate | test | predict [CONFIG] --ckpt C [key=value ...]``: evaluate what was trained.

The config is the checkpoint's own for the data and the model (trainers/evaluation_config.py). The
evaluation writes into a new folder inside the checkpoint's run (``<run>/validate-N``): its
config.yaml, its CSV log, its dashboard run and a metrics.json that records the checkpoint and the
data it used. A checkpoint that does not fit the model is one ConfigError, found before any data
is made or any file is written.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from configs.schema import ConfigError
from modules.nets.state_dicts import read_lightning_checkpoint
from trainers.build import build_run, is_launcher_or_rank_zero, prepare_run_dir
from trainers.evaluation_config import (Difference, evaluation_config, evaluation_dir, override_keys,
                                        split_arguments)
from trainers.run_dir import slurm_run_suffix

EXAMPLES = 3  # tensors named in a mismatch message
RESTORE = "_restore_modules_and_callbacks"  # Lightning's step that loads a checkpoint into the model


def read_checkpoint(path: str) -> dict:
    """The checkpoint's dict, its tensors memory-mapped (a large classifier is not read twice)."""
    return read_lightning_checkpoint(path, "--ckpt", ConfigError, "; `visage export` files hold a backbone for "
                                     "finetune.from, not a model to evaluate", mmap=True)


def _shape(tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def check_weights_fit(module, state: dict, ckpt: str, differences: list[Difference]) -> None:
    """Every tensor of the model is in the checkpoint with the same shape (a part the module builds
    later, such as the recognizer's classifier, is checked by Lightning's strict load)."""
    model = module.state_dict()
    missing = [key for key in model if key not in state]
    mismatched = [f"{key}: checkpoint {_shape(state[key])}, model {_shape(value)}" for key, value in model.items()
                  if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if not missing and not mismatched:
        return
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) of another shape ({'; '.join(mismatched[:EXAMPLES])})")
    if missing:
        parts.append(f"{len(missing)} of the model's tensor(s) missing ({', '.join(missing[:EXAMPLES])})")
    raise ConfigError(f"--ckpt: {ckpt} does not fit the model the config builds: {', '.join(parts)}; "
                      f"{_cause(differences)}")


def _cause(differences: list[Difference]) -> str:
    changed = [d.key for d in differences if d.used == "command line" and d.key.startswith(("model.", "data.image"))]
    return (f"the command line changes {', '.join(changed)} from the checkpoint's value: drop those overrides"
            if changed else "it was trained with another model (task, backbone or size)")


def restore_error(err: Exception, ckpt: str, differences: list[Difference]) -> ConfigError | None:
    """A ConfigError for an exception raised while Lightning restored the checkpoint into the model
    (its strict load, or the module's on_load_checkpoint), None for any other."""
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(err.__traceback__)]
    if RESTORE not in frames:
        return None
    details = " ".join(str(err).split())
    return ConfigError(f"--ckpt: {ckpt} does not fit the model the config builds: {details[:400]}; "
                       f"{_cause(differences)}")


def data_record(cfg: DictConfig, datamodule) -> dict:
    """Which data an evaluation used: the dataset folder, its synthetic spec or root, the split."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    record = {"dataset": str(getattr(datamodule, "root", None) or ""), "split": data.get("val_split"),
              "root": data.get("root"), "synthetic": data.get("synthetic")}
    if data.get("verification"):
        record["verification"] = data["verification"]
    return record


def evaluate(args, check_cluster: Callable[[DictConfig], None]) -> int:
    """Run ``args.command`` (validate | test | predict); returns the exit code."""
    config, overrides = split_arguments(args.config, list(args.overrides))
    if config is None and args.ckpt is None:
        raise ConfigError("config: give an experiment config, or --ckpt to evaluate a checkpoint with its own")
    checkpoint = read_checkpoint(args.ckpt) if args.ckpt else None
    saved = (checkpoint.get("hyper_parameters") or {}).get("config") if checkpoint else None
    cfg, differences = evaluation_config(config, overrides, saved, args.ckpt)
    talk = is_launcher_or_rank_zero()
    if talk and differences:
        print(f"visage: {'the config file' if config else 'the command line'} and the checkpoint's config differ "
              "in the data or the model; an evaluation uses the checkpoint's unless the command line sets it:",
              file=sys.stderr)
        for difference in differences:
            print(f"visage:   {difference.line()}", file=sys.stderr)
    if getattr(args, "print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    check_cluster(cfg)
    run_id = cfg.run.id if "run.id" in override_keys(overrides) else None  # a training run's id is not ours
    folder = evaluation_dir(args.command, cfg, args.ckpt, run_id)
    # Lightning's refusals of the trainer settings are ConfigErrors here
    run = build_run(cfg, folder, args.ckpt, stage=args.command)
    if checkpoint is not None:
        check_weights_fit(run.module, checkpoint["state_dict"], args.ckpt, differences)
    if talk:
        try:
            folder.mkdir(parents=True, exist_ok=slurm_run_suffix(os.environ) is not None)  # a requeued job: its own
        except FileExistsError:
            raise ConfigError(f"{'run.id' if run_id else 'evaluation folder'}: {folder} was taken by another "
                              "evaluation started at the same time; run the command again") from None
    prepare_run_dir(cfg, folder)
    run.datamodule.prepare_data()
    trainer = run.trainer
    record = {"command": args.command, "checkpoint": str(Path(args.ckpt).resolve()) if args.ckpt else None,
              "checkpoint_global_step": checkpoint.get("global_step") if checkpoint else None}
    try:
        if args.command == "predict":
            trainer.predict(run.module, datamodule=run.datamodule, ckpt_path=args.ckpt, return_predictions=False)
        else:
            method = trainer.validate if args.command == "validate" else trainer.test
            results = method(run.module, datamodule=run.datamodule, ckpt_path=args.ckpt, verbose=False)
    except Exception as err:  # noqa: BLE001 (only a failure inside Lightning's restore is translated)
        translated = restore_error(err, args.ckpt, differences) if args.ckpt else None
        if translated is None:
            raise
        raise translated from None
    if not trainer.is_global_zero:
        return 0
    record["data"] = data_record(cfg, run.datamodule)
    record["world_size"] = trainer.world_size
    if args.command == "predict":
        out = Path(args.out) if getattr(args, "out", None) else folder / "predictions.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        print(run.module.save_predictions(out), flush=True)
        record.update(metrics={}, predictions=str(out.resolve()))
    else:
        record["metrics"] = {k: float(v) for k, v in results[0].items()} if results else {}
        print(f"\n{run.module.summary(record['metrics'])}\n", flush=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"evaluation folder: {folder}\nmetrics:           {path}\ncsv log:           {folder / 'csv' / 'metrics.csv'}",
          flush=True)
    return 0
