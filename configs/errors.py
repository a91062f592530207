"""The one base class of the errors the `visage` command reports as one line (no traceback).

Each error keeps its built-in base too (``ValueError``, ``FileNotFoundError`` ...), so code that
catches those keeps working; the command line catches ``VisageError`` alone.
"""
from __future__ import annotations


class VisageError(Exception):
    """An error whose message says what is wrong and where (file, key, sample) and what to do."""

    exit_code = 1  # what the command returns; config errors return 2
