"""A bounded per-source frame buffer with two fill policies and an optional staleness budget.

``block``  (files): a full buffer makes the producer wait; no frame is ever lost.
``latest`` (live):  a full buffer drops its oldest frame, counted as ``buffer_full``.

``max_staleness_ms``: a frame that has waited longer than this when the batcher comes for it is
dropped instead (counted as ``stale``), so a model slower than its streams works on recent
frames, never on a backlog.

Producers and the batching worker never wait without a timeout; every wait also watches the
pipeline's stop event. Buffers share one :class:`threading.Condition` (the *bell*) so one worker
can sleep until any of many sources has a frame.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections import Counter
from typing import Protocol

from .frame import Frame

__all__ = ["RingBuffer", "Policy"]

_POLL_S = 0.1  # longest single wait; every loop re-checks the stop event at least this often


class StopFlag(Protocol):
    """Anything with ``is_set()``: a ``threading.Event``, or a source's :class:`~.sources.base.Halt`."""

    def is_set(self) -> bool: ...


class Policy(str, enum.Enum):
    """What a full buffer does with a new frame."""

    BLOCK = "block"
    LATEST = "latest"


class RingBuffer:
    """Bounded FIFO of :class:`Frame` for one source."""

    def __init__(
        self,
        capacity: int,
        policy: Policy | str = Policy.BLOCK,
        bell: threading.Condition | None = None,
        max_staleness_ms: float | None = None,
    ):
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1, got {capacity}")
        if max_staleness_ms is not None and max_staleness_ms <= 0:
            raise ValueError(f"max_staleness_ms must be > 0 (or None for no budget), got {max_staleness_ms}")
        self.capacity = capacity
        self.policy = Policy(policy)
        self.max_staleness_ns = None if max_staleness_ms is None else int(max_staleness_ms * 1e6)
        self.bell = bell if bell is not None else threading.Condition()
        self._frames: collections.deque[Frame] = collections.deque()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._closed = False
        self.drops: Counter[str] = Counter()  # reason -> frames dropped
        self.frames_in = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        """True once the producer said no more frames will come."""
        return self._closed

    @property
    def exhausted(self) -> bool:
        """True when closed and empty: this source will deliver nothing more."""
        return self._closed and not self._frames

    def put(self, frame: Frame, stop: StopFlag, timeout: float | None = None) -> bool:
        """Add a frame; return False if it was not added (stop requested, buffer closed, timed out).

        Under ``block`` this waits for space (checking ``stop`` every 0.1 s, at most ``timeout``
        seconds when given); under ``latest`` it never waits and evicts the oldest frame instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed or stop.is_set():
                    return False
                if len(self._frames) < self.capacity:
                    break
                if self.policy is Policy.LATEST:
                    self._frames.popleft()
                    self.drops["buffer_full"] += 1
                    break
                wait = _POLL_S
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return False
                self._space.wait(wait)
            frame.enqueued_ns = time.monotonic_ns()
            self._frames.append(frame)
            self.frames_in += 1
        with self.bell:
            self.bell.notify_all()
        return True

    def pop(self, n: int) -> list[Frame]:
        """Remove and return up to ``n`` frames, oldest first (never waits); stale frames are dropped."""
        with self._lock:
            before = len(self._frames)
            if self.max_staleness_ns is not None:
                oldest = time.monotonic_ns() - self.max_staleness_ns
                while self._frames and self._frames[0].enqueued_ns < oldest:
                    self._frames.popleft()
                    self.drops["stale"] += 1
            k = min(n, len(self._frames))
            out = [self._frames.popleft() for _ in range(k)]
            if len(self._frames) < before:
                self._space.notify_all()
        return out

    def peek_enqueued_ns(self) -> int | None:
        """When the oldest waiting frame entered the buffer, or None if empty."""
        with self._lock:
            return self._frames[0].enqueued_ns if self._frames else None

    def drop(self, reason: str, n: int = 1) -> None:
        """Count frames lost on this source for ``reason`` (e.g. frames discarded at shutdown)."""
        with self._lock:
            self.drops[reason] += n

    def close(self) -> None:
        """Mark the end of this source; waiting producers return and the worker is woken."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
        with self.bell:
            self.bell.notify_all()
