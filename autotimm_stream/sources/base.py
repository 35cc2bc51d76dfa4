"""What every source shares: a capture thread that fills one ring buffer until told to stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fractions import Fraction

from ..ringbuffer import RingBuffer

__all__ = ["Source", "SourceInfo"]

_logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SourceInfo:
    """What is known about a source once it is open."""

    width: int
    height: int
    fps: float | None
    time_base: Fraction | None
    frames: int | None  # total frame count when known (files), else None


class Source:
    """A capture thread feeding one :class:`RingBuffer`.

    Subclasses implement :meth:`open` (fail fast with :class:`~autotimm_stream.errors.SourceError`,
    called before the pipeline starts) and :meth:`_run` (the capture loop, which must return soon
    after ``self.stop`` is set). The thread is not a daemon: :meth:`join` is always called.
    """

    def __init__(self, source_id: str, buffer: RingBuffer, stop: threading.Event):
        self.source_id = source_id
        self.buffer = buffer
        self.stop = stop
        self.info: SourceInfo | None = None
        self.error: BaseException | None = None
        self.frames_decoded = 0
        self._thread: threading.Thread | None = None

    def open(self) -> SourceInfo:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`open` acquired; idempotent."""

    def start(self) -> None:
        if self.info is None:
            self.open()
        self._thread = threading.Thread(target=self._main, name=f"source-{self.source_id}")
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the thread must always close its buffer
            self.error = exc
            _logger.error("source %s failed: %s", self.source_id, exc)
        finally:
            self.close()
            self.buffer.close()

    def join(self, timeout: float) -> bool:
        """Wait for the capture thread; True if it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
