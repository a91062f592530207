"""The ``visage fit`` command lines that fine-tune each task from an exported state_dict.

Each line is checked before it is printed: its config loads (the task takes this backbone at this
size), the task's module is built from it, and every tensor of its embedding network loads from the
exported file. A task that refuses says why instead.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from configs.schema import ConfigError, to_plain
from trainers.config import CONFIG_DIR, load_config
from trainers.finetune import load_pretrained
from trainers.tasks import TASKS, load


def bundled_config(name: str) -> str | None:
    """A bundled config of task ``name`` as ``visage fit`` finds it from anywhere (``recognizer/arcface.yaml``)."""
    configs = sorted((CONFIG_DIR / name).glob("*.yaml"))
    return f"{name}/{configs[0].name}" if configs else None


def finetune_command(config: str, weights: Path, overrides: tuple[str, ...]) -> str:
    """The checked command line; ConfigError saying why the task cannot take the weights."""
    tuned = [*overrides, f"finetune.from={weights}"]
    plain = to_plain(load_config(config, tuned))
    module = load(TASKS[plain["task"]].module)(plain)
    if not callable(getattr(module, "exportable", None)):
        raise ConfigError("its module has no embedding network to fine-tune (no exportable() hook)")
    attribute = module.exportable().attribute
    expected = {key for key in module.state_dict() if key.startswith(f"{attribute}.")}
    report = load_pretrained(module, weights)
    if not expected <= set(report.loaded):
        raise ConfigError(f"its {attribute} takes {len(expected & set(report.loaded))} of its {len(expected)} "
                          f"tensors from the file ({len(report.mismatched)} of other shapes)")
    return shlex.join(["visage", "fit", config, *tuned, f"finetune.freeze=[{attribute}]", "finetune.unfreeze_at_epoch=1"])


def print_finetune_commands(weights: Path, overrides: tuple[str, ...]) -> None:
    lines = ["fine-tune from it (frozen for the first epoch, then trained at finetune.lr_factor x the lr; drop "
             "finetune.freeze and finetune.unfreeze_at_epoch to train it from the start):"]
    for name in TASKS:
        config = bundled_config(name)
        if config is None:
            continue
        try:
            lines.append(f"  {finetune_command(config, weights, overrides)}")
        except ConfigError as err:
            lines.append(f"  not for the {name}: {err}")
    print("\n".join(lines), flush=True)
