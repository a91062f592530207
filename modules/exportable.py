"""What a task's module hands to ``visage export`` and to fine-tuning: its embedding network.

A LightningModule that has a network worth exporting defines ``exportable() -> Exportable``: the
dotted attribute path of the network inside the module (its weights are the state_dict entries under
``<attribute>.``, the part ``finetune.freeze=[<attribute>]`` freezes and ``finetune.min_loaded``
counts), an input batch it takes (traced for TorchScript and ONNX), the config overrides that build a
network these weights fit, and one line saying what goes in and what comes out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from modules.embedder_config import face_backbone_overrides


@dataclass(frozen=True)
class Exportable:
    attribute: str               # "backbone", "net": the network in the LightningModule
    example: torch.Tensor        # an input batch the network takes
    overrides: tuple[str, ...]   # key=value that build a network these weights fit
    signature: str               # what goes in and comes out, for people


def face_exportable(config: dict, attribute: str, note: str = "") -> Exportable:
    """A face embedding network: (N, 3, S, S) RGB faces normalised as (x - 127.5) / 128 -> (N, D)."""
    size, dim = config["data"]["image_size"], config["model"]["embedding_size"]
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    signature = (f"takes (N, 3, {size}, {size}) RGB faces as (pixel - 127.5) / 128, gives (N, {dim}) "
                 f"embeddings{note}")
    return Exportable(attribute, example, face_backbone_overrides(config), signature)
