"""Lightning checkpoint files and the state_dicts inside them."""
from __future__ import annotations

from pathlib import Path

import torch


def under_prefix(state: dict, prefix: str) -> dict:
    """The entries of ``state`` whose key starts with ``prefix`` (e.g. ``"pnet."``), without it: the
    state_dict of the submodule at that path."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def read_lightning_checkpoint(path: str | Path, key: str, error: type[Exception], hint: str = "",
                              mmap: bool = False) -> dict:
    """The dict of a Lightning checkpoint (it holds a ``state_dict``), read weights-only on the CPU.

    A missing, unreadable or non-Lightning file raises ``error`` with one line that starts with ``key``
    (the option or config key that named the file) and the path; ``hint`` ends the last of these lines.
    ``mmap`` maps the tensors instead of reading them (a large classifier is not read twice)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{key}: checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - a truncated file, not a zip, pickled objects: one error for the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise error(f"{key}: {path} cannot be read as a checkpoint: {first}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise error(f"{key}: {path} is not a Lightning checkpoint (no 'state_dict'){hint}")
    return checkpoint
