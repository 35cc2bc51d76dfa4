"""Files that appear whole or not at all: written under a temporary name beside the target, then
renamed over it (``os.replace`` is atomic within a file system), so a reader, a crash or a full
disk never leaves a half-written report, summary, snapshot or bundle under the real name."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["unused_path", "write_atomic", "write_bytes_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None], suffix: str = "") -> None:
    """Have ``write(tmp)`` create a temporary file beside ``path``, then rename it to ``path``.

    ``suffix`` ends the temporary name, for writers that choose a format by extension (``.mp4``).
    The temporary file is removed if ``write`` or the rename fails; the error propagates.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(path, write)


def unused_path(path: str, used: set[str]) -> str:
    """``path``, or ``root_N.ext`` (N = 2, 3...) when ``used`` already holds it: a sink's files
    never replace one another (a source added again under the same id restarts its names)."""
    root, ext = os.path.splitext(path)
    candidate, n = path, 1
    while candidate in used:
        n += 1
        candidate = f"{root}_{n}{ext}"
    return candidate
