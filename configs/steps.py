"""A run made of steps: a task whose training is several Lightning runs in a row (the MTCNN cascade:
P-Net, mining, R-Net, mining, O-Net) names them with its module's ``steps(config)`` hook, and
``trainers/steps.py`` runs them in one run directory, each step in a folder of its own, resuming at
the first step that has not finished."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """``name``: the step's folder in the run directory; ``kind``: "fit" (train and validate) or
    "predict" (e.g. mining); ``overrides``: ``key=value`` on the experiment for this step, where
    ``{other}`` is an earlier step's folder and ``{other_ckpt}`` the checkpoint that step hands on."""
    name: str
    kind: str
    overrides: tuple[str, ...] = ()
