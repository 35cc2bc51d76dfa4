"""Writes one JSON line per result.

Lines reach the file at most about ``_FLUSH_S`` after they were written, whether results keep
coming or not (:meth:`JsonlSink.tick` flushes a quiet stream's last lines), so a killed engine
loses at most about that much; :meth:`JsonlSink.close` also syncs a regular file to disk.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import IO, Any

from ..errors import SinkError
from ..messages import Result
from .base import Sink

__all__ = ["JsonlSink"]

_FLUSH_S = 1.0  # a crash loses at most about this much


class JsonlSink(Sink):
    """One JSON object per line per result, in ``path`` (a regular file, a FIFO or ``/dev/stdout``)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._fh: IO[str] | None = None
        self._last_flush = 0.0
        self._unflushed = False  # lines written since the last flush
        self.lines = 0

    def open(self) -> None:
        try:
            self._fh = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(
                f"sinks.jsonl: cannot write {self.path!r} ({exc.strerror}); pick a writable output_dir"
            ) from None

    def write(self, results: list[Result]) -> None:
        assert self._fh is not None
        try:
            for r in results:
                # a full buffer is flushed inside write(): a full disk can fail here, not only in flush
                self._fh.write(json.dumps(r.to_json(), separators=(",", ":")))
                self._fh.write("\n")
        except OSError as exc:
            raise self._write_error(exc) from None
        self.lines += len(results)
        self._unflushed = self._unflushed or bool(results)
        self._flush_if_due()

    def tick(self) -> None:
        # results may stop arriving (a quiet camera, a paused file): their last lines must not wait
        # in Python's buffer for a write that may never come
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if self._fh is None or not self._unflushed:
            return
        now = time.monotonic()
        if now - self._last_flush >= _FLUSH_S:
            try:
                self._fh.flush()
            except OSError as exc:
                raise self._write_error(exc) from None
            self._last_flush = now
            self._unflushed = False

    def _write_error(self, exc: OSError) -> SinkError:
        return SinkError(
            f"sinks.jsonl: cannot write to {self.path!r} ({exc.strerror or exc}); lines not yet written are lost; "
            "expected a file with room to grow (free some space, pick another output_dir, or keep a pipe's reader open)"
        )

    def close(self) -> None:
        fh, self._fh = self._fh, None  # forgotten first: a failed close is not retried on a broken file
        if fh is None:
            return
        try:
            try:
                fh.flush()
                # only a regular file can be synced: fsync on a FIFO, a pipe or a terminal (path
                # /dev/stdout) fails with EINVAL although every line was delivered
                if stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    os.fsync(fh.fileno())
            finally:
                fh.close()  # releases the descriptor even when the flush failed (it raises again)
        except OSError as exc:
            raise SinkError(
                f"sinks.jsonl: cannot finish {self.path!r} ({exc.strerror}); its last lines may be missing; "
                "expected a file system with free space (free some, or pick another output_dir)"
            ) from None

    def stats(self) -> dict[str, Any]:
        return {"lines": self.lines, "path": self.path}

    def summary_lines(self) -> list[str]:
        return [f"jsonl: {self.path}"]
