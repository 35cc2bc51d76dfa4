"""How a run stops: one graceful stop event, one abort event, and the drain budget between them.

A stop ends the sources; frames already buffered are still inferred and delivered for at most
``drain_timeout_s``. Abort cuts that short: the worker drops what is left and sinks stop waiting
for slow consumers. Every thread of a pipeline watches these two events, and every wait has a
timeout, so a stop is always bounded.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["Shutdown", "DRAIN_TIMEOUT_S", "SINK_GRACE_S"]

_logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 3.0  # after a stop, how long buffered frames may still be inferred (drain_timeout_s)
SINK_GRACE_S = 2.0  # after the drain time, how long a sink that accepts nothing may hold a stop


class Shutdown:
    """The stop and abort events of one run, and when the stop was asked for."""

    def __init__(self, stop: threading.Event | None = None, drain_timeout_s: float = DRAIN_TIMEOUT_S):
        self.stop = stop or threading.Event()
        self.abort = threading.Event()
        self.drain_timeout_s = drain_timeout_s
        self._requested_at: float | None = None

    def request(self) -> None:
        """Ask for a graceful stop (idempotent: the drain budget counts from the first request)."""
        if self._requested_at is None:
            self._requested_at = time.monotonic()
        self.stop.set()

    def kill(self) -> None:
        """Stop without draining."""
        self.request()
        self.abort.set()

    @property
    def requested_at(self) -> float | None:
        """Monotonic time of the stop; a stop event set directly is dated when first noticed here."""
        if self._requested_at is None and self.stop.is_set():
            self._requested_at = time.monotonic()
        return self._requested_at

    def draining_too_long(self) -> bool:
        """True once the stop is older than the drain budget: buffered frames are abandoned."""
        t = self.requested_at
        return t is not None and time.monotonic() - t > self.drain_timeout_s

    def delivery_stuck(self) -> bool:
        """True (and abort set) when sinks still accept nothing well past the drain budget, e.g. a
        PUSH socket with no peer: delivery is given up so that the stop stays bounded."""
        t = self.requested_at
        if t is None or time.monotonic() - t <= self.drain_timeout_s + SINK_GRACE_S:
            return False
        _logger.warning(
            "sinks still held results %.1f s after the stop (drain_timeout_s %.1f + %.1f s); abandoning delivery",
            time.monotonic() - t,
            self.drain_timeout_s,
            SINK_GRACE_S,
        )
        self.abort.set()
        return True
