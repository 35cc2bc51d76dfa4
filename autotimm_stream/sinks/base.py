"""What every sink shares, and the thread that feeds one sink from a bounded queue."""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..frame import Result
from ..priority import lower_this_thread
from ..sources.base import StatusEvent

__all__ = ["Sink", "SinkRunner", "EndOfStream"]

_logger = logging.getLogger(__name__)
_POLL_S = 0.1
_MAX_EVENTS = 1024


@dataclass(slots=True)
class EndOfStream:
    """A source has delivered its last result."""

    source_id: str
    frames: int  # results delivered for this source
    reason: str = "end"  # "end" (source finished), "stopped" (stop requested) or "error"
    drops: dict[str, int] = field(default_factory=dict)


class Sink:
    """A consumer of results. Context manager; :meth:`close` is idempotent.

    ``write`` gets one batch of results at a time, in frame order per source.
    """

    name = "sink"
    # set by the SinkRunner that feeds this sink: when it is set the pipeline gives up on
    # delivery, so a sink that waits (a blocked PUSH socket) must stop waiting
    abort: threading.Event | None = None

    def open(self) -> None:
        """Acquire resources (files, sockets). Raise :class:`~autotimm_stream.errors.SinkError`."""

    def write(self, results: list[Result]) -> None:
        raise NotImplementedError

    def end_of_stream(self, eos: EndOfStream) -> None:
        """Called once per source after its last result."""

    def status(self, event: StatusEvent) -> None:
        """A source changed state (connecting, running, reconnecting, stopped, failed)."""

    def tick(self) -> None:
        """Called on the sink's thread at least every 0.1 s, between writes too: periodic work (heartbeats)."""

    def close(self) -> None:
        """Flush and release; safe to call twice."""

    def stats(self) -> dict[str, Any]:
        return {}

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class SinkRunner:
    """Runs one sink on its own thread so a slow encoder never stalls the model.

    ``submit`` blocks (backpressure, so files lose nothing) but gives up when ``halt`` is set.
    """

    def __init__(self, sink: Sink, halt: threading.Event, capacity: int = 4):
        self.sink = sink
        self.halt = halt
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._main, name=f"sink-{sink.name}")
        sink.abort = halt
        self.low_priority = False  # set by the pipeline before start (see autotimm_stream.priority)
        self.error: BaseException | None = None
        # state changes jump the queue (a reconnect must not wait behind a backlog of results);
        # bounded: a flapping source cannot grow memory, the oldest events are forgotten first
        self._events: collections.deque[StatusEvent] = collections.deque(maxlen=_MAX_EVENTS)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: list[Result] | EndOfStream, give_up: Callable[[], bool] | None = None) -> bool:
        """Queue ``item``; False when the sink failed, ``halt`` is set or ``give_up()`` says so."""
        while not self.halt.is_set():
            if self.error is not None or (give_up is not None and give_up()):
                return False
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def notify(self, event: StatusEvent) -> None:
        """Pass a state change on to the sink soon (within 0.1 s), never blocking the caller."""
        self._events.append(event)

    def _flush_events(self) -> None:
        while self._events:
            self.sink.status(self._events.popleft())

    def finish(self, give_up: Callable[[], bool] | None = None) -> None:
        """Ask the thread to drain its queue, close the sink and end.

        Waits while the queue is full (the sink is still writing) until ``give_up()`` says the sink
        has held the stop too long, as :meth:`submit` does; then ``halt`` is set, which also frees a
        sink blocked in a send (a state change on a PUSH socket with no peer), and what is still
        queued is dropped.
        """
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                if not self.halt.is_set() and give_up is not None and give_up():
                    self.halt.set()
                if self.halt.is_set():  # drain what fits, then stop accepting
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def join(self, timeout: float) -> bool:
        if self._thread.ident is None:  # never started (the pipeline failed before it ran)
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        if self.low_priority:
            lower_this_thread()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    self._flush_events()
                    self.sink.tick()
                    if self.halt.is_set():
                        return
                    continue
                # events raised before this item was queued go out before it (a source's
                # "stopped" before its end-of-stream)
                self._flush_events()
                self.sink.tick()
                if item is _END:
                    return
                if isinstance(item, EndOfStream):
                    self.sink.end_of_stream(item)
                else:
                    self.sink.write(item)
        except BaseException as exc:
            self.error = exc
            _logger.error("sink %s failed: %s", self.sink.name, exc)
        finally:
            try:
                self.sink.close()
            except Exception as exc:  # closing must not hide the first error
                _logger.error("sink %s failed to close: %s", self.sink.name, exc)
                self.error = self.error or exc
