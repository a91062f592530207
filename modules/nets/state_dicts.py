"""A submodule's weights taken out of a whole module's state_dict."""
from __future__ import annotations


def under_prefix(state: dict, prefix: str) -> dict:
    """The entries of ``state`` whose key starts with ``prefix`` (e.g. ``"pnet."``), without it: the
    state_dict of the submodule at that path."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
