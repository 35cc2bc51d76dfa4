"""A bounded per-source frame buffer with two fill policies and an optional staleness budget.

``block``  (files): a full buffer makes the producer wait; no frame is ever lost.
``latest`` (live):  a full buffer drops its oldest frame, counted as ``buffer_full``.

``max_staleness_ms``: a frame that has waited longer than this when the batcher comes for it is
dropped instead (counted as ``stale``), so a model slower than its streams works on recent
frames, never on a backlog.

Each buffer also keeps its producer's pace (a running mean of the gap between frames that did not
wait for space), so the batcher can tell whether a frame is due before a batch's deadline
(:meth:`RingBuffer.due_by`) instead of waiting for one that cannot come in time.

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
from .stats import Ewma

__all__ = ["RingBuffer", "Policy", "StopFlag", "DROP_REASONS"]

# Why a frame can be lost before inference: buffer_full and stale here, decode_error and
# until_keyframe in the sources, shutdown when a stop leaves frames behind.
DROP_REASONS = ("buffer_full", "stale", "decode_error", "until_keyframe", "shutdown")

_POLL_S = 0.1  # longest single wait; every loop re-checks the stop event at least this often
_PACE_ALPHA = 0.2  # weight of the newest gap in the producer's pace
_now_ns = time.monotonic_ns  # the buffer's clock (tests replace it)


class StopFlag(Protocol):
    """Anything with ``is_set()``: a ``threading.Event``, or a source's ``Halt``."""

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
        self._last_put_ns: int | None = None
        self._pace = Ewma(_PACE_ALPHA)  # ns between frames that did not wait for space; 0 = not known yet

    def __len__(self) -> int:
        return len(self._frames)

    def share_bell(self, bell: threading.Condition) -> None:
        """Ring ``bell`` (the batcher's, shared by every buffer of a pipeline) instead of this buffer's own.

        Only before the first frame: a frame put meanwhile would have rung a bell nobody waits on.
        """
        if self.frames_in:
            raise RuntimeError("a ring buffer's bell can only be shared before its first frame")
        self.bell = bell

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
        waited = False
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
                waited = True
            now = _now_ns()
            if self._last_put_ns is not None and not waited:  # a producer held back by a full buffer shows no pace
                gap: float = now - self._last_put_ns
                if self._pace.value:
                    # one gap counts at most twice the pace: an outage does not make the stream look
                    # slow for long after it, and a real change of rate still shows within ~10 frames
                    gap = min(gap, 2 * self._pace.value)
                self._pace.add(gap)
            self._last_put_ns = now
            frame.enqueued_ns = now
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

    def due_by(self, t_ns: int) -> bool:
        """Whether a new frame may arrive by ``t_ns`` (monotonic ns).

        True when a frame is waiting, while the pace is not known yet (fewer than two frames) and
        when the next frame is overdue; False once closed, or when the producer's pace puts its
        next frame after ``t_ns``.
        """
        with self._lock:
            if self._frames:
                return True
            if self._closed:
                return False
            if not self._pace.value or self._last_put_ns is None:
                return True
            return self._last_put_ns + self._pace.value <= t_ns

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
