"""Errors whose message says everything a user needs, and the one-line way the tools report them.

Every entry point (``run.py``, the sweep runner, the analysis tools) reports these as one line,
``error: <Type>: <message>`` on stderr with exit status 1, instead of a traceback; any other exception is
a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Optional


def library_user_errors() -> tuple:
    """The core library's user errors (the run loop adds its own: run directories, divergence)."""
    from .backbones import BackboneError
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.base import DataError

    return ConfigError, CheckpointError, DataError, BackboneError


def find_user_error(exc: Optional[BaseException], known: tuple) -> Optional[BaseException]:
    """The user error behind ``exc`` (Hydra's ``instantiate`` wraps what a loader raises), or None."""
    while exc is not None:
        if isinstance(exc, known):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def one_line_errors(extra: tuple = ()):
    """Inside the block, a user error (``library_user_errors() + extra``) ends the process with one line."""
    try:
        yield
    except Exception as exc:
        err = find_user_error(exc, library_user_errors() + tuple(extra))
        if err is None:
            raise
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
