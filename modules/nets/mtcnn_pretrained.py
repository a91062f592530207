"""Real pretrained MTCNN weights: facenet-pytorch's ``pnet.pt``, ``rnet.pt``, ``onet.pt`` into these nets.

The files (shipped in the facenet-pytorch 2.6.0 wheel under ``facenet_pytorch/data/``; the package itself
is never installed or imported) are plain state_dicts converted from the original Caffe/MATLAB models.
Three things differ from ``modules.nets.mtcnn``, and the import below undoes each:

- names: ``conv1`` / ``prelu1`` ... / ``conv4_1`` / ``dense5_2`` ... -> ours, by an explicit table;
- the first FC layer (R-Net ``dense4``, O-Net ``dense5``) reads its input flattened in MATLAB's column
  order, (width, height, channel), where ours flattens PyTorch's (channel, height, width): its weight's
  columns are permuted;
- O-Net's landmarks come as x1..x5, y1..y5, ours as pairs x1, y1, x2, y2, ...: ``dense6_3``'s rows are
  permuted. Softmax is inside their nets, outside ours: same probabilities, raw logits here.

Their P-Net and R-Net have no landmark head: ours keep their fresh initialisation, and the import says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from configs.errors import VisageError
from modules.nets.mtcnn import STAGES, build_stage_net

FACENET_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}

# facenet-pytorch name -> ours (each maps weight and bias alike; PReLU has a weight only)
FACENET_NAMES = {
    "pnet": {"conv1": "features.0.0", "prelu1": "features.0.1", "conv2": "features.2.0", "prelu2": "features.2.1",
             "conv3": "features.3.0", "prelu3": "features.3.1", "conv4_1": "face", "conv4_2": "box"},
    "rnet": {"conv1": "features.0.0", "prelu1": "features.0.1", "conv2": "features.2.0", "prelu2": "features.2.1",
             "conv3": "features.4.0", "prelu3": "features.4.1", "dense4": "fc.1", "prelu4": "fc.2",
             "dense5_1": "face", "dense5_2": "box"},
    "onet": {"conv1": "features.0.0", "prelu1": "features.0.1", "conv2": "features.2.0", "prelu2": "features.2.1",
             "conv3": "features.4.0", "prelu3": "features.4.1", "conv4": "features.6.0", "prelu4": "features.6.1",
             "dense5": "fc.1", "prelu5": "fc.2", "dense6_1": "face", "dense6_2": "box", "dense6_3": "landmarks"},
}
# the first FC layer and the (channels, height, width) of the map it reads
FIRST_FC = {"rnet": ("dense4", (64, 3, 3)), "onet": ("dense5", (128, 3, 3))}
LANDMARK_LAYER = {"onet": "dense6_3"}


class WeightsError(VisageError, ValueError):
    """A pretrained-weights file that is missing, unreadable or not the expected net."""


@dataclass
class FacenetImport:
    """The three nets with facenet-pytorch's weights, and the names of ours each file did not fill."""

    nets: dict[str, nn.Module]
    left_initialised: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        notes = [f"{stage}: {', '.join(names)} kept initialised (not in facenet-pytorch's file)"
                 for stage, names in self.left_initialised.items() if names]
        return "; ".join(notes) or "every parameter loaded"


def column_major_to_row_major(weight: torch.Tensor, chw: tuple[int, int, int]) -> torch.Tensor:
    """An FC weight whose columns index a (C, H, W) map flattened as (W, H, C) -> columns flattened as
    (C, H, W), so that ``weight @ x.flatten(1)`` gives the same outputs on PyTorch's flattening."""
    c, h, w = chw
    return weight.reshape(weight.shape[0], w, h, c).permute(0, 3, 2, 1).reshape(weight.shape[0], c * h * w)


def xs_then_ys_to_pairs(rows: torch.Tensor) -> torch.Tensor:
    """Rows ordered x1..x5, y1..y5 -> x1, y1, ..., x5, y5 (first dimension)."""
    half = rows.shape[0] // 2
    return torch.stack([rows[:half], rows[half:]], dim=1).reshape(rows.shape)


def convert_facenet_state_dict(stage: str, theirs: dict, source: str = "") -> dict[str, torch.Tensor]:
    """facenet-pytorch's state_dict of ``stage`` -> the corresponding entries of ours (a partial state_dict).
    ``source`` names the file in errors."""
    where = source or f"{stage} state_dict"
    if not isinstance(theirs, dict) or not all(isinstance(v, torch.Tensor) for v in theirs.values()):
        raise WeightsError(f"{where}: not a state_dict of tensors")
    names = FACENET_NAMES[stage]
    expected = {f"{name}.{part}" for name in names for part in ("weight", "bias") if not name.startswith("prelu")}
    expected |= {f"{name}.weight" for name in names if name.startswith("prelu")}
    missing, extra = sorted(expected - set(theirs)), sorted(set(theirs) - expected)
    if missing or extra:
        problem = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
        raise WeightsError(f"{where}: {problem}: not facenet-pytorch's {FACENET_FILES[stage]}")
    converted = {}
    for key, value in theirs.items():
        name, part = key.split(".")
        if stage in FIRST_FC and name == FIRST_FC[stage][0] and part == "weight":
            value = column_major_to_row_major(value, FIRST_FC[stage][1])
        if LANDMARK_LAYER.get(stage) == name:
            value = xs_then_ys_to_pairs(value)
        converted[f"{names[name]}.{part}"] = value
    return converted


def load_facenet_stage(path: str | Path, stage: str) -> tuple[nn.Module, list[str]]:
    """A ``stage`` net holding the weights of facenet-pytorch's file at ``path``, and the names of our
    parameters the file has no value for (P-Net's and R-Net's landmark head)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (facenet-pytorch's {FACENET_FILES[stage]} expected)")
    try:
        theirs = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise WeightsError(f"{path}: not a readable torch file ({type(err).__name__})") from None
    net = build_stage_net(stage)
    ours = net.state_dict()
    converted = convert_facenet_state_dict(stage, theirs, str(path))
    for key, value in converted.items():
        if ours[key].shape != value.shape:
            raise WeightsError(f"{path}: {key!r} has shape {tuple(value.shape)}, the {stage} needs "
                               f"{tuple(ours[key].shape)}")
    net.load_state_dict(converted, strict=False)
    return net.eval(), sorted(set(ours) - set(converted))


def load_facenet_mtcnn(folder: str | Path) -> FacenetImport:
    """P-Net, R-Net and O-Net from a folder holding facenet-pytorch's ``pnet.pt``, ``rnet.pt``, ``onet.pt``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder (one holding facenet-pytorch's pnet.pt, rnet.pt, onet.pt)")
    nets, left = {}, {}
    for stage in STAGES:
        nets[stage], left[stage] = load_facenet_stage(folder / FACENET_FILES[stage], stage)
    return FacenetImport(nets, left)
