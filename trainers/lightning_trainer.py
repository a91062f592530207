"""Building ``pl.Trainer`` from the config's ``trainer`` section, with Lightning's refusals as config errors.

Most settings are checked when the config is loaded (configs/trainer_settings.py). What only the
machine can answer (``accelerator=gpu`` without a GPU, more GPUs than the node has, a list of GPU ids
with ``accelerator=auto`` on a CPU machine, a SLURM allocation that does not match) is refused by
Lightning when the Trainer is built: that happens before any data is made or any file is written,
and the refusal becomes a one-line ConfigError naming the key.
"""
from __future__ import annotations

import re
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from configs.schema import ConfigError
from configs.trainer_settings import LIGHTNING_KEYWORDS, lightning_settings

# Lightning messages that do not name the keyword they refuse
PHRASES = (("gpu backend", "accelerator"), ("accelerator", "accelerator"), ("cuda", "accelerator"),
           ("device", "devices"), ("precision", "precision"), ("ntasks", "devices"), ("timer", "max_time"))


def refused_key(message: str, settings: dict[str, Any]) -> str:
    """The ``trainer.*`` key a Lightning refusal is about: a keyword the message names (the longest
    first, so ``max_epochs`` before ``max_epoch``), else a known phrase, else the section."""
    for keyword in sorted(LIGHTNING_KEYWORDS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z_]){keyword}(?![A-Za-z_])", message):
            return f"trainer.{keyword}"
    lower = message.lower()
    for phrase, keyword in PHRASES:
        if phrase in lower:
            return f"trainer.{keyword}"
    return "trainer"


def make_trainer(trainer: dict[str, Any], **visage_sets: Any) -> pl.Trainer:
    """``pl.Trainer`` from the plain ``trainer`` section and the keywords Visage sets itself (strategy,
    loggers, callbacks, run directory); Lightning's refusal of a setting raises ConfigError."""
    settings = lightning_settings(trainer)
    try:
        return pl.Trainer(**settings, **visage_sets)
    except (MisconfigurationException, ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        key = refused_key(message, settings)
        shown = f" ({key.partition('.')[2]}={trainer[key.partition('.')[2]]!r})" if "." in key else ""
        raise ConfigError(f"{key}: Lightning refuses the setting{shown} on this machine: {message}") from None
