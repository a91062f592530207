"""The one base class of the errors the `visage` command reports as one line (no traceback).

Each error keeps its built-in base too (``ValueError``, ``FileNotFoundError`` ...), so code that
catches those keeps working; the command line catches ``VisageError`` alone.
"""
from __future__ import annotations


class VisageError(Exception):
    """An error whose message says what is wrong and where (file, key, sample) and what to do."""

    exit_code = 1  # what the command returns; config errors return 2


class ParameterError(ValueError):
    """A component's rule broken by one of its parameters (``parameter`` names it): a config check
    reports it under that parameter's key."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
