"""The ``trainer`` section: every keyword of ``pytorch_lightning.Trainer`` (2.6) with its type, and its
checks, without importing torch or Lightning (config errors answer in about a second).

The keywords are written out here because loading a config must not import Lightning;
``tests/test_trainer_settings.py`` compares them with ``inspect.signature(pl.Trainer.__init__)``, so a
Lightning upgrade that adds or removes a keyword fails that test until this file follows it.

A few keywords are Visage's to set (``VISAGE_SETS``): a config naming one is an error that says why.
``ddp_timeout_s`` is Visage's own setting (it builds the DDP strategy), not a Lightning keyword.
Defaults are Lightning's, except where a comment says why Visage differs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Union

from configs.errors import ParameterError

# the keywords a config cannot set, and why: Visage sets them for every run
VISAGE_SETS = {
    "logger": "Visage sets the loggers (CSV in the run directory, and wandb: see the logging section)",
    "callbacks": "Visage sets the callbacks (checkpoints, requeue, bad-data report; a task adds its own in "
                 "its module's configure_callbacks)",
    "plugins": "Visage chooses the cluster environment and checkpoint I/O itself",
    "default_root_dir": "the run directory is run.root/run.name/run.id",
    "enable_checkpointing": "Visage always writes best and last checkpoints (resume and evaluation need them); "
                            "use trainer.fast_dev_run for a throw-away run",
    "use_distributed_sampler": "Visage's shard streams give every rank its own samples already",
    "barebones": "it turns off the logging, checkpoints and callbacks every Visage run relies on",
}
VISAGE_ONLY = ("ddp_timeout_s",)  # Visage's settings in the section that Lightning does not know
STRATEGIES = ("auto", "ddp", "ddp_spawn")  # Visage builds the DDPStrategy (gloo on CPU, ddp_timeout_s)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64", "16", "bf16")
PROFILERS = ("simple", "advanced", "pytorch")
CLIP_ALGORITHMS = ("norm", "value")
TIME_UNITS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"           # cpu | gpu | cuda | auto (the GPUs of a GPU node, else the CPU)
    strategy: str = "auto"              # auto | ddp | ddp_spawn
    devices: Any = 1                    # int, list of GPU ids or "auto" (Lightning: auto; Visage: one process)
    num_nodes: int = 1
    precision: Optional[str] = "32-true"  # 32-true | bf16-mixed | 16-mixed | ...
    fast_dev_run: Union[int, bool] = False  # True or N: run N training and validation batches, no checkpoints
    max_epochs: Optional[int] = 10      # (Lightning: 1000 when max_steps is unset)
    min_epochs: Optional[int] = None
    max_steps: int = -1
    min_steps: Optional[int] = None
    max_time: Any = None                # "DD:HH:MM:SS" or {days: D, hours: H, ...}: stop (and checkpoint) after it
    limit_train_batches: Optional[Union[int, float]] = None  # an int is batches, a float a fraction
    limit_val_batches: Optional[Union[int, float]] = None
    limit_test_batches: Optional[Union[int, float]] = None
    limit_predict_batches: Optional[Union[int, float]] = None
    overfit_batches: Union[int, float] = 0.0
    val_check_interval: Any = None      # N training batches, a fraction of an epoch, or a time ("DD:HH:MM:SS")
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: Optional[int] = 0  # (Lightning: 2) the first validation comes after training
    log_every_n_steps: Optional[int] = 10    # (Lightning: 50) short runs still draw a curve
    enable_progress_bar: Optional[bool] = True  # in a terminal; a piped stdout gets plain lines instead
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None  # norm | value
    deterministic: Optional[Union[bool, str]] = False  # true | false | warn (Lightning: null, leave torch as is)
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    profiler: Optional[str] = None      # simple | advanced | pytorch: a report at the end of the run
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    enable_autolog_hparams: bool = True
    model_registry: Optional[str] = None
    ddp_timeout_s: int = 600            # Visage: a hung collective becomes an error after this long


LIGHTNING_KEYWORDS = tuple(f.name for f in fields(TrainerConfig) if f.name not in VISAGE_ONLY)


def lightning_settings(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The section's Lightning keywords for ``pl.Trainer(**...)`` (``trainer``: the plain section,
    ``to_plain(cfg)["trainer"]``); the strategy is left out: Visage builds it from ``strategy``,
    ``devices`` and ``ddp_timeout_s``."""
    return {key: trainer[key] for key in LIGHTNING_KEYWORDS if key != "strategy"}


# -- checks: each raises ParameterError(keyword, message) ------------------------------------------
def _fail(key: str, message: str):
    raise ParameterError(key, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(t: Mapping, key: str, choices: tuple, why: str = "") -> None:
    if t[key] is not None and t[key] not in choices:
        _fail(key, f"{t[key]!r} is not one of {', '.join(map(str, choices))}{why}")


def _at_least(t: Mapping, key: str, low: int, what: str = "") -> None:
    if t[key] is not None and t[key] < low:
        _fail(key, f"must be {what or f'>= {low}'}, got {t[key]}")


def _duration(key: str, value: Any, example: str) -> None:
    """A time: "DD:HH:MM:SS" (Lightning's format) or a mapping of timedelta units."""
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d+:\d+:\d+:\d+\s*", value):
            _fail(key, f"{value!r} is not a time in the form DD:HH:MM:SS, e.g. {example}")
    elif isinstance(value, Mapping):
        unknown = [unit for unit in value if unit not in TIME_UNITS]
        if unknown or not value or not all(_is_number(v) and v >= 0 for v in value.values()):
            _fail(key, f"{dict(value)!r}: give non-negative numbers of {', '.join(TIME_UNITS)}, e.g. {{hours: 4}}")
    else:
        _fail(key, f"{value!r} is not a time: give 'DD:HH:MM:SS' in quotes (YAML reads 1:00 as a number), "
                   f"e.g. {example}, or {{hours: 4}}")


def _batches(t: Mapping, key: str) -> None:
    """limit_*_batches / overfit_batches: an int is a count of batches (>= 0), a float a fraction in [0, 1]."""
    value = t[key]
    if value is None:
        return
    if (_is_int(value) and value < 0) or (isinstance(value, float) and not 0.0 <= value <= 1.0):
        _fail(key, f"must be a number of batches (an int >= 0) or a fraction in [0.0, 1.0], got {value}")


def check_trainer_settings(t: Mapping[str, Any]) -> None:
    """The checks Lightning would make when the Trainer is built (and some it does not make, which fail
    later or silently), made at config time. The GPU count of the machine is checked when the Trainer
    is built (trainers/lightning_trainer.py), still before any data is made."""
    _choice(t, "accelerator", ACCELERATORS)
    _choice(t, "strategy", STRATEGIES, " (Visage builds the DDP strategy itself: gloo on CPU, ddp_timeout_s)")
    _choice(t, "precision", PRECISIONS)
    _choice(t, "profiler", PROFILERS)
    _choice(t, "gradient_clip_algorithm", CLIP_ALGORITHMS)
    if t["deterministic"] not in (None, True, False, "warn"):
        _fail("deterministic", f"must be true, false or warn, got {t['deterministic']!r}")
    devices = t["devices"]
    if not (devices == "auto" or (_is_int(devices) and devices > 0) or isinstance(devices, (list, tuple))):
        _fail("devices", f"expected a positive integer, a list of GPU ids or 'auto', got {devices!r}")
    if isinstance(devices, (list, tuple)) and t["accelerator"] == "cpu":
        _fail("devices", f"{list(devices)} is a list of GPU ids; on accelerator=cpu give the number of "
                         "processes, e.g. trainer.devices=2")
    for key in ("num_nodes", "accumulate_grad_batches", "ddp_timeout_s"):
        _at_least(t, key, 1, "> 0")
    for key in ("check_val_every_n_epoch", "log_every_n_steps"):
        _at_least(t, key, 1, ">= 1 (or null)")
    for key in ("max_epochs", "max_steps"):
        _at_least(t, key, -1, ">= 0, or -1 for no limit")
    for key in ("min_epochs", "min_steps", "reload_dataloaders_every_n_epochs"):
        _at_least(t, key, 0)
    _at_least(t, "num_sanity_val_steps", -1, ">= 0, or -1 for the whole validation set")
    if _is_int(t["fast_dev_run"]) and t["fast_dev_run"] < 0:
        _fail("fast_dev_run", f"must be true, false or a number of batches >= 0, got {t['fast_dev_run']}")
    if t["gradient_clip_val"] is not None and t["gradient_clip_val"] < 0:
        _fail("gradient_clip_val", f"must be >= 0 (or null: no clipping), got {t['gradient_clip_val']}")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches"):
        _batches(t, key)
    if t["max_time"] is not None:
        _duration("max_time", t["max_time"], "'00:12:00:00' for 12 hours")
    interval = t["val_check_interval"]
    if interval is not None and not isinstance(interval, (str, Mapping)):
        if not _is_number(interval) or interval <= 0 or (isinstance(interval, float) and interval > 1.0):
            _fail("val_check_interval", f"must be a number of training batches (an int >= 1), a fraction of an "
                                        f"epoch in (0.0, 1.0] or a time 'DD:HH:MM:SS', got {interval!r}")
    elif interval is not None:
        _duration("val_check_interval", interval, "'00:00:30:00' for every 30 minutes")
    if t["max_epochs"] is None and t["max_steps"] < 0:
        _fail("max_steps", "set max_steps or max_epochs, or training never ends")
