"""What every source shares: a capture thread that fills one ring buffer until told to stop.

Every source has a state (:class:`SourceState`). Files go RUNNING → STOPPED (or FAILED); live
sources add CONNECTING and RECONNECTING (see :mod:`.live`). Each change is logged, counted and
handed to ``on_status`` (the pipeline publishes it as ``status/<source_id>``).

A source stops when the pipeline's ``stop`` event is set, or when it alone is removed
(:meth:`Source.remove`); :attr:`Source.halted` watches both.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ..frame import Frame, FrameFlags, now_ns
from ..priority import lower_this_thread
from ..ringbuffer import Policy, RingBuffer

__all__ = ["Source", "SourceInfo", "SourceState", "StatusEvent", "Halt"]

_logger = logging.getLogger(__name__)
_POLL_S = 0.05


class SourceState(str, enum.Enum):
    """Where a source is in its life."""

    CONNECTING = "connecting"  # opening (first time)
    RUNNING = "running"  # frames flowing
    RECONNECTING = "reconnecting"  # lost; waiting out the backoff before the next attempt
    STOPPED = "stopped"  # ended normally (stop requested, removed, or a file's last frame)
    FAILED = "failed"  # gave up (an error, or reconnect attempts exhausted)


FINAL_STATES = frozenset({SourceState.STOPPED, SourceState.FAILED})


@dataclass(slots=True)
class StatusEvent:
    """One state change of one source (published on ``status/<source_id>``)."""

    source_id: str
    state: SourceState
    previous: SourceState | None
    reason: str = ""  # why, in words (credentials redacted)
    attempt: int = 0  # consecutive failed connection attempts so far
    retry_in_s: float | None = None  # RECONNECTING: the backoff before the next attempt
    at_ns: int = field(default_factory=time.time_ns)  # wall clock, ns since the epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "state": self.state.value,
            "previous": None if self.previous is None else self.previous.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "retry_in_s": None if self.retry_in_s is None else round(self.retry_in_s, 3),
            "at_ns": self.at_ns,
        }


@dataclass(slots=True)
class SourceInfo:
    """What is known about a source once it is open (live sources: once connected; 0 = not yet)."""

    width: int
    height: int
    fps: float | None
    time_base: Fraction | None
    frames: int | None  # total frame count when known (files), else None


class Halt:
    """Set when the pipeline stops or this one source is removed; quacks like ``threading.Event``."""

    def __init__(self, source: Source):
        self._source = source

    def is_set(self) -> bool:
        return self._source.stop.is_set() or self._source.removed.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking within 50 ms of a stop; True if halted."""
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._source.removed.wait(min(left, _POLL_S))
        return True


class Source:
    """A capture thread feeding one :class:`RingBuffer`.

    Subclasses implement :meth:`open` (fail fast with :class:`~autotimm_stream.errors.SourceError`,
    called before the pipeline starts) and :meth:`_run` (the capture loop, which must return soon
    after :attr:`halted` is set). The thread is not a daemon: :meth:`join` is always called.
    """

    live = False  # True for sources that reconnect (their end is not the end of the data)

    def __init__(self, source_id: str, buffer: RingBuffer, stop: threading.Event):
        self.source_id = source_id
        self.buffer = buffer
        self.stop = stop
        self.removed = threading.Event()
        self.halted = Halt(self)
        self.info: SourceInfo | None = None
        self.error: BaseException | None = None
        self.frames_decoded = 0
        self.state: SourceState | None = None
        self.state_counts: Counter[str] = Counter()  # state -> times entered
        self.on_status: Callable[[StatusEvent], None] | None = None
        self.low_priority = False  # set by the pipeline before start (see autotimm_stream.priority)
        self._thread: threading.Thread | None = None

    def open(self) -> SourceInfo:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`open` acquired; idempotent."""

    def describe(self) -> str:
        """Where the frames come from, safe to log (no credentials)."""
        return self.source_id

    def _deliver(
        self,
        image: np.ndarray,
        pts: float | None,
        flags: FrameFlags,
        decode_ms: float,
        time_base: Fraction | None,
        pts_raw: int | None,
        index: int | None = None,
    ) -> bool:
        """Hand one decoded frame to the buffer (index: the next one by default); False when halted."""
        frame = Frame(
            source_id=self.source_id,
            index=self.frames_decoded if index is None else index,
            pts=pts,
            capture_ns=now_ns(),
            image=image,
            flags=flags,
            decode_ms=decode_ms,
            time_base=time_base,
            pts_raw=pts_raw,
        )
        self.frames_decoded += 1
        if self.buffer.put(frame, self.halted):
            return True
        self.buffer.drop("shutdown")  # decoded as the source stopped: counted, never silently lost
        return False

    def _set_state(self, state: SourceState, reason: str = "", **extra: Any) -> None:
        previous, self.state = self.state, state
        self.state_counts[state.value] += 1
        event = StatusEvent(self.source_id, state, previous, reason, **extra)
        level = logging.WARNING if state in (SourceState.RECONNECTING, SourceState.FAILED) else logging.INFO
        _logger.log(level, "source %s: %s%s", self.source_id, state.value, f" ({reason})" if reason else "")
        if self.on_status is not None:
            try:
                self.on_status(event)
            except Exception:  # a status listener must never kill the capture thread
                _logger.exception("source %s: status listener failed", self.source_id)

    def start(self) -> None:
        if self.info is None:
            self.open()
        self._thread = threading.Thread(target=self._main, name=f"source-{self.source_id}")
        self._thread.start()

    def remove(self) -> None:
        """Ask this source alone to stop (the pipeline keeps running)."""
        self.removed.set()

    @property
    def offline(self) -> bool:
        """True for a finite source read as fast as the model takes it, losing nothing."""
        b = self.buffer
        return (
            not self.live
            and not getattr(self, "realtime", False)
            and b.policy is Policy.BLOCK
            and not b.max_staleness_ns
        )

    def _main(self) -> None:
        if self.low_priority:
            lower_this_thread()
        try:
            if not self.live:
                self._set_state(SourceState.RUNNING)
            self._run()
        except BaseException as exc:  # the thread must always close its buffer
            self.error = exc
            _logger.error("source %s failed: %s", self.source_id, exc)
        finally:
            self.close()
            # the final state is announced before the buffer closes, hence before the pipeline
            # can announce this source's end of stream
            if self.state not in FINAL_STATES:
                if self.error is not None:
                    self._set_state(SourceState.FAILED, str(self.error))
                else:
                    self._set_state(SourceState.STOPPED, self._stop_reason())
            self.buffer.close()

    def _stop_reason(self) -> str:
        if self.removed.is_set():
            return "removed"
        return "stop requested" if self.stop.is_set() else "end of stream"

    def stop_wait_s(self) -> float:
        """The longest :meth:`_run` may take to return once halted (live sources wait on FFmpeg)."""
        return 0.5

    def join(self, timeout: float) -> bool:
        """Wait for the capture thread; True if it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
