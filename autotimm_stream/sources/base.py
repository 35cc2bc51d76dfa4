"""What every source shares: a capture thread that fills one ring buffer until told to stop.

Every source has a state (:class:`~autotimm_stream.messages.SourceState`). Files go RUNNING →
STOPPED (or FAILED); live sources add CONNECTING and RECONNECTING (see :mod:`.live`). Each change
is logged, counted and handed to the listener given by :meth:`Source.bind` (the pipeline
publishes it as ``status/<source_id>``).

A source stops when the stop event it was bound to is set, or when it alone is removed
(:meth:`Source.remove`); :attr:`Source.halted` watches both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..frame import Frame, FrameFlags, now_ns
from ..messages import FINAL_STATES, SourceState, StatusEvent
from ..priority import lower_this_thread
from ..ringbuffer import Policy, RingBuffer, StopFlag
from ..stats import LiveStats

__all__ = ["Source", "SourceInfo", "Halt"]

_logger = logging.getLogger(__name__)
_POLL_S = 0.05


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
    realtime = False  # True for sources paced at their own speed (live ones, or a file played in real time)

    def __init__(self, source_id: str, buffer: RingBuffer):
        self.source_id = source_id
        self.buffer = buffer
        self.stop: StopFlag = threading.Event()  # its own until bound to a pipeline's
        self.removed = threading.Event()
        self.halted = Halt(self)
        self.info: SourceInfo | None = None
        self.error: BaseException | None = None
        self.frames_decoded = 0
        self.state: SourceState | None = None
        self.state_counts: Counter[str] = Counter()  # state -> times entered
        self._on_status: Callable[[StatusEvent], None] | None = None
        self._bound = False
        self._thread: threading.Thread | None = None

    def bind(
        self,
        stop: StopFlag,
        on_status: Callable[[StatusEvent], None] | None = None,
        bell: threading.Condition | None = None,
    ) -> None:
        """Give the source its collaborators, once, before it starts: the stop event it obeys, the
        listener of its state changes and the bell its buffer rings (shared with the batcher)."""
        if self._bound or self._thread is not None:
            raise RuntimeError(f"source {self.source_id!r} is already bound or started; build a new source")
        self._bound = True
        self.stop = stop
        self._on_status = on_status
        if bell is not None:
            self.buffer.share_bell(bell)

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
        if self._on_status is not None:
            try:
                self._on_status(event)
            except Exception:  # a status listener must never kill the capture thread
                _logger.exception("source %s: status listener failed", self.source_id)

    def start(self, low_priority: bool = False) -> None:
        """Open if needed and start the capture thread (at the lowest CPU priority when asked)."""
        if self.info is None:
            self.open()
        self._thread = threading.Thread(target=self._main, args=(low_priority,), name=f"source-{self.source_id}")
        self._thread.start()

    def remove(self) -> None:
        """Ask this source alone to stop (the pipeline keeps running)."""
        self.removed.set()

    @property
    def offline(self) -> bool:
        """True for a finite source read as fast as the model takes it, losing nothing."""
        b = self.buffer
        return not self.live and not self.realtime and b.policy is Policy.BLOCK and not b.max_staleness_ns

    def live_stats(self) -> LiveStats | None:
        """Sessions, reconnects and failed attempts of a reconnecting source (None for others)."""
        return None

    def _main(self, low_priority: bool) -> None:
        if low_priority:
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
