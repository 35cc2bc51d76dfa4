"""What every sink shares, the thread that feeds one sink from a bounded queue, and the group of
them a pipeline delivers to."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..lifecycle import Shutdown
from ..messages import EndOfStream, Result, StatusEvent
from ..priority import lower_this_thread
from ..stats import SourceStats, StageStats

__all__ = ["Sink", "SinkContext", "SinkRunner", "SinkGroup"]

_logger = logging.getLogger(__name__)
_POLL_S = 0.1
_MAX_EVENTS = 1024


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may ask of the run it is bound to (see :meth:`Sink.bind`)."""

    # set when the pipeline gives up on delivery: a sink that waits (a blocked PUSH socket) must stop
    abort: threading.Event = field(default_factory=threading.Event)
    # the current sources' statistics (for heartbeats); cheap, takes no lock of the hot path
    sources: Callable[[], list[SourceStats]] = list


class Sink:
    """A consumer of results. Context manager; :meth:`close` is idempotent.

    ``write`` gets one batch of results at a time, in frame order per source.
    """

    name = "sink"
    context: SinkContext = SinkContext()  # replaced by bind(); unbound sinks never abort

    def bind(self, context: SinkContext) -> None:
        """Called once by the pipeline that owns this sink, before :meth:`open`."""
        self.context = context

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
        """The sink's own statistics, as they appear under ``sinks.<name>`` in the run summary."""
        return {}

    def stages(self) -> dict[str, StageStats]:
        """Per-frame stages this sink measures (the ZeroMQ sink's ``publish``), by stage name."""
        return {}

    def summary_lines(self) -> list[str]:
        """What the sink produced, a line each, for the summary printed at the end of a run."""
        return []

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
        self._low_priority = False
        self.error: BaseException | None = None
        # state changes jump the queue (a reconnect must not wait behind a backlog of results);
        # bounded: a flapping source cannot grow memory, the oldest events are forgotten first
        self._events: collections.deque[StatusEvent] = collections.deque(maxlen=_MAX_EVENTS)

    def start(self, low_priority: bool = False) -> None:
        """Start the sink's thread (at the lowest CPU priority when asked, see autotimm_stream.priority)."""
        self._low_priority = low_priority
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
        if self._low_priority:
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


class SinkGroup:
    """Every sink of a pipeline, each fed by its own :class:`SinkRunner`.

    Results and ends of streams go to all sinks in order; state changes jump their queues. Delivery
    gives up when the run aborts or, once stopping, when :meth:`Shutdown.delivery_stuck` says a sink
    has held the stop too long.
    """

    def __init__(self, sinks: list[Sink], shutdown: Shutdown, capacity: int = 4):
        self.sinks = list(sinks)
        self._shutdown = shutdown
        self._runners = [SinkRunner(s, shutdown.abort, capacity=capacity) for s in sinks]

    def start(self, low_priority: bool = False) -> None:
        for r in self._runners:
            r.start(low_priority)

    def submit(self, item: list[Result] | EndOfStream) -> None:
        for r in self._runners:
            r.submit(item, self._shutdown.delivery_stuck)

    def notify(self, event: StatusEvent) -> None:
        for r in self._runners:
            r.notify(event)

    @property
    def failure(self) -> BaseException | None:
        """The first sink error so far (a sink that failed stops taking results at once)."""
        return next((r.error for r in self._runners if r.error is not None), None)

    def close(self, deadline: float) -> BaseException | None:
        """Drain every queue, close every sink and join their threads by ``deadline`` (monotonic),
        aborting delivery for a sink that is still busy then; returns the first sink error."""
        for r in self._runners:
            r.finish(self._shutdown.delivery_stuck)
        for r in self._runners:
            if not r.join(max(0.5, deadline - time.monotonic())):
                self._shutdown.abort.set()
                r.join(1.0)
        return self.failure
