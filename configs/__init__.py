"""The bottom layer: the YAML experiments, the shared sections of their typed schema and pure
definitions every other package may use (no torch, no Lightning)."""
