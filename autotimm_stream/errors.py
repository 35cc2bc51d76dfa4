"""Exception hierarchy.

Every error a user can cause derives from :class:`StreamError` and also from the matching builtin
(PyAV's habit), so callers may catch either ``SourceError`` or ``OSError``. Messages say what was
expected, what came, and how to fix it: the CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations

__all__ = ["StreamError", "ConfigError", "SourceError", "ModelError", "SinkError", "first_line"]


class StreamError(Exception):
    """Base class of every error autotimm-stream raises on purpose."""


class ConfigError(StreamError, ValueError):
    """The configuration (YAML file, ``--set`` override or API argument) is invalid."""


class SourceError(StreamError, OSError):
    """A source cannot be opened or read (missing file, not a video, unreachable stream)."""


class ModelError(StreamError, ValueError):
    """A model bundle is missing, unreadable, or lacks the metadata the engine needs."""


class SinkError(StreamError, OSError):
    """An output cannot be created or written (unwritable folder, address already in use)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
