"""Writes one JSON line per result."""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

from ..errors import SinkError
from ..frame import Result
from .base import Sink

__all__ = ["JsonlSink"]

_FLUSH_S = 1.0  # a crash loses at most about this much


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._fh: IO[str] | None = None
        self._last_flush = 0.0
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
        for r in results:
            self._fh.write(json.dumps(r.to_json(), separators=(",", ":")))
            self._fh.write("\n")
        self.lines += len(results)
        now = time.monotonic()
        if now - self._last_flush >= _FLUSH_S:
            self._fh.flush()
            self._last_flush = now

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def stats(self) -> dict[str, Any]:
        return {"lines": self.lines, "path": self.path}
