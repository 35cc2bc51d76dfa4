"""Forms batches from many ring buffers.

A batch leaves when ``max_batch`` frames are in it or ``max_wait_ms`` after its first frame
entered its ring buffer (Triton's ``max_queue_delay``: a frame that already waited while the
model was busy does not wait again), and at once when no source is due to deliver a frame before
that deadline (each buffer knows its producer's pace: one 25-fps camera, 40 ms between frames,
never makes a frame wait 20 ms for company that comes after 40). Sources are visited
round-robin, starting one further each batch, and no source gives more than
``max_frames_per_source`` frames to one batch while another source has a frame waiting, so a
busy stream cannot starve a quiet one, a silent stream never holds a batch back, and a lone busy
stream still fills the batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .config import BatchPolicy
from .frame import Frame
from .ringbuffer import RingBuffer

__all__ = ["Batcher"]

_POLL_S = 0.1
_LINGER_POLL_S = 0.005  # past the deadline, how often ``linger`` is asked again


class Batcher:
    """Takes frames from ``buffers`` (all sharing one bell) and groups them into batches."""

    def __init__(
        self,
        buffers: list[RingBuffer],
        bell: threading.Condition,
        policy: BatchPolicy,
        keep_open: threading.Event | None = None,
    ):
        self.buffers = list(buffers)  # replaced, never mutated: readers keep a consistent snapshot
        self.bell = bell
        self.policy = policy
        # set while more sources may still be added: running out of sources is then not the end
        self.keep_open = keep_open
        self._cap = policy.max_frames_per_source or policy.max_batch  # one source's share of a batch
        self._start = 0

    def set_buffers(self, buffers: list[RingBuffer]) -> None:
        """Replace the set of buffers (sources added or removed at run time)."""
        self.buffers = list(buffers)
        with self.bell:
            self.bell.notify_all()

    def _available(self) -> bool:
        return any(len(b) for b in self.buffers)

    def finished(self) -> bool:
        """True when every source has ended, every buffer is empty and no source can be added."""
        if self.keep_open is not None and self.keep_open.is_set():
            return False
        return all(b.exhausted for b in self.buffers)

    def _take(self, batch: list[Frame], taken: dict[int, int], buffers: list[RingBuffer], limit: int = 0) -> None:
        # Every source gets its share first; if the batch is still short and no source under its
        # share has a frame, sources over it fill the rest. The share protects sources with frames
        # waiting, it must not leave the model half-used (one 25-fps camera with a share of 2 would
        # cap the engine at 2 frames per forward pass and drop frames it had time for).
        n = len(buffers)
        limit = limit or self.policy.max_batch
        for capped in (True, False):
            progress = True
            while progress and len(batch) < limit:
                progress = False
                for k in range(n):
                    i = (self._start + k) % n
                    if capped and taken.get(i, 0) >= self._cap:
                        continue
                    # one frame per source per pass keeps sources interleaved
                    got = buffers[i].pop(1)
                    if got:
                        batch.extend(got)
                        taken[i] = taken.get(i, 0) + 1
                        progress = True
                    if len(batch) >= limit:
                        return

    def can_top_up(self) -> bool:
        """True when some source may add frames to a formed batch (see :meth:`top_up`)."""
        return any(not b.max_staleness_ns for b in self.buffers)

    def top_up(self, limit: int, timeout: float, held: dict[int, int] | None = None) -> list[Frame]:
        """Up to ``limit`` frames waiting now, after at most ``timeout`` s for the first; ``[]`` if none.

        For a batch that is formed but not yet taken by the model: frames that arrive meanwhile join
        it instead of waiting a whole forward pass for the next one. ``held`` maps ``id(buffer)``
        to the frames that buffer already has in the batch, so the per-source share still holds.
        Sources with a staleness budget are left out: their frames must be checked when the batch
        is about to run, not earlier.
        """
        buffers = [b for b in self.buffers if not b.max_staleness_ns]
        with self.bell:
            if not any(len(b) for b in buffers):
                self.bell.wait(timeout)
        held = held or {}
        taken = {i: held[id(b)] for i, b in enumerate(buffers) if id(b) in held}
        extra: list[Frame] = []
        self._take(extra, taken, buffers, limit)
        return extra

    def next_batch(self, halt: threading.Event, linger: Callable[[], bool] | None = None) -> list[Frame] | None:
        """The next batch; ``[]`` when nothing came within 0.1 s, ``None`` when all sources are done.

        Returns early (possibly ``None``) once ``halt`` is set. While ``linger()`` is true a short
        batch keeps waiting past ``max_wait_ms`` (the model has other work queued, so waiting for
        a full batch costs nothing; a short one would cost a less efficient forward pass).
        """
        with self.bell:
            if not self._available():
                if self.finished() or halt.is_set():
                    return None
                self.bell.wait(_POLL_S)
                if not self._available():
                    return None if self.finished() else []
        buffers = self.buffers
        batch: list[Frame] = []
        taken: dict[int, int] = {}
        self._take(batch, taken, buffers)
        if not batch:
            return []
        # from the oldest frame taken: round-robin may have visited a newer one first
        deadline_ns = min(f.enqueued_ns for f in batch) + int(self.policy.max_wait_ms * 1e6)
        while len(batch) < self.policy.max_batch and not halt.is_set():
            open_ = [b for b in buffers if not b.exhausted]
            remaining = (deadline_ns - time.monotonic_ns()) / 1e9
            if not open_ or all(b.closed for b in open_) and not any(len(b) for b in open_):
                break  # waiting cannot add a frame
            if remaining <= 0:
                if linger is None or not linger():
                    break  # deadline passed
                remaining = _LINGER_POLL_S
            elif not any(b.due_by(deadline_ns) for b in open_) and (linger is None or not linger()):
                break  # no frame can come before the deadline: waiting would only add latency
            with self.bell:
                if not any(len(b) for b in open_):
                    self.bell.wait(min(remaining, _POLL_S))
            self._take(batch, taken, buffers)
        self._start = (self._start + 1) % max(1, len(buffers))
        return batch
