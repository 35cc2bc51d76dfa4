"""The pipeline: sources -> ring buffers -> worker (batching, model, post-processing) -> sinks.

:class:`Pipeline` owns every thread and resource. One stop event ends a run gracefully: sources
stop, frames already buffered are still inferred (for at most ``drain_timeout_s``), every sink
receives what was produced and closes its files; abort cuts the drain short
(:class:`~autotimm_stream.lifecycle.Shutdown`). Every wait in every thread has a timeout and
watches those events; no thread is a daemon.

Sources can be added and removed while the pipeline runs (:meth:`Pipeline.add_source`,
:meth:`Pipeline.remove_source`); with ``persistent`` the pipeline keeps running when it has no
source left, waiting for the next one (a service driven over the control channel). Each source's
state changes reach every sink at once (:meth:`Sink.status`), never queued behind results.
:meth:`Pipeline.stats` is the one place the run's statistics are read from.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from .batching import Batcher
from .config import BatchPolicy
from .errors import ConfigError, first_line
from .lifecycle import DRAIN_TIMEOUT_S, Shutdown
from .messages import StatusEvent
from .postprocess import Postprocessor
from .runtime.runner import ModelRunner
from .sinks.base import Sink, SinkContext, SinkGroup
from .sources.base import Source
from .stats import PipelineStats, ReplacedStats, SourceStats
from .worker import Worker

__all__ = ["Pipeline", "Service"]

_logger = logging.getLogger(__name__)


class Service(Protocol):
    """Something a pipeline starts with its sources and closes first (the control channel, HTTP)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


class Pipeline:
    """Runs ``sources`` through ``runner`` into ``sinks``.

    Use :meth:`run` for a blocking run, or :meth:`start` / :meth:`stop` / :meth:`wait` /
    :meth:`close` to drive it from elsewhere (the CLI calls :meth:`stop` from a signal handler).

    Args:
        sources: opened or not; their buffers must share one bell (``threading.Condition``).
        runner: the loaded model.
        sinks: where results go; each gets its own thread.
        batch: batching and worker-thread settings (the config's ``batching``).
        stop: the stop event to obey (one is made when not given).
        postprocessor: defaults to the bundle's task post-processing with its own settings.
        drain_timeout_s: after a stop, how long buffered frames may still be inferred.
        sink_queue: batches of results queued per sink before the worker waits for it.
        persistent: keep running with no source (sources come over the control channel).
    """

    def __init__(
        self,
        sources: list[Source],
        runner: ModelRunner,
        sinks: list[Sink],
        batch: BatchPolicy | None = None,
        *,
        stop: threading.Event | None = None,
        postprocessor: Postprocessor | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        sink_queue: int = 4,
        persistent: bool = False,
    ):
        if not sources and not persistent:
            raise ValueError("a pipeline needs at least one source (or persistent=True, to add them later)")
        ids = [s.source_id for s in sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source ids must be unique, got {ids}")
        bells = {id(s.buffer.bell) for s in sources}
        if len(bells) > 1:
            raise ValueError("all source buffers must share one bell (threading.Condition)")
        self.runner = runner
        self.sinks = list(sinks)
        self.policy = batch or BatchPolicy()
        self.shutdown = Shutdown(stop, drain_timeout_s)
        self.bell = sources[0].buffer.bell if sources else threading.Condition()
        self._keep_open = threading.Event()  # set while sources may still be added
        if persistent:
            self._keep_open.set()
        self._sources_lock = threading.Lock()
        for s in sources:
            self._adopt(s)
        self.sources: list[Source] = list(sources)  # replaced, never mutated (threads iterate snapshots)
        self.retired: dict[str, Source] = {}  # sources removed at run time (ended, buffers empty), by id
        self.replaced: dict[str, ReplacedStats] = {}  # totals of retired sources whose id came back
        self.status: dict[str, StatusEvent] = {}  # latest state change per source
        self.batcher = Batcher([s.buffer for s in sources], self.bell, self.policy, keep_open=self._keep_open)
        self._sinks = SinkGroup(self.sinks, self.shutdown, capacity=sink_queue)
        context = SinkContext(abort=self.shutdown.abort, sources=self.source_stats)
        for sink in self.sinks:
            sink.bind(context)
        self.worker = Worker(
            runner,
            postprocessor or Postprocessor(runner.meta),
            self.batcher,
            lambda: self.sources,
            self._sinks.submit,
            self.shutdown,
            prep_threads=self.policy.prep_threads,
            on_failure=self.kill,
            retire=self._retire,
        )
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.ended_at = 0.0
        self._low_support = False  # prep and sink threads at low priority (decided in start)
        self._opened: list[Sink] = []
        self._closed = False
        self.services: list[Service] = []  # started after the sources, closed first

    @property
    def stop_event(self) -> threading.Event:
        return self.shutdown.stop

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, warmup: bool = True) -> None:
        """Warm the model up, open the sinks, then start the worker and the sources."""
        try:
            for s in self.sources:
                if s.info is None:
                    s.open()
            if warmup:  # before any sink opens: a model that fails leaves nothing written
                self.runner.warmup(tuple(sorted({1, self.policy.max_batch})))
            for sink in self.sinks:
                sink.open()
                self._opened.append(sink)
        except BaseException:
            for sink in self._opened:  # no thread owns them yet
                sink.close()
            for s in self.sources:
                s.close()
            raise
        # one decision for the run: a lowered priority cannot be raised again (see .priority)
        priority = self.policy.support_priority
        self._low_support = priority == "low" or (
            priority == "auto" and not self._keep_open.is_set() and all(s.offline for s in self.sources)
        )
        self._sinks.start(self._low_support)
        self.worker.start(self._low_support)
        self.started_at = time.monotonic()
        for s in self.sources:
            s.start(self._source_low_priority(s))
        for svc in self.services:
            svc.start()

    def stop(self) -> None:
        """Graceful stop: sources end, buffered frames drain (bounded), sinks close. Idempotent."""
        self._keep_open.clear()
        self.shutdown.request()
        with self.bell:
            self.bell.notify_all()

    def kill(self) -> None:
        """Stop without draining (a second Ctrl-C)."""
        self.stop()
        self.shutdown.abort.set()

    def attach(self, service: Service) -> None:
        """Own ``service``: started with the pipeline, closed with it."""
        self.services.append(service)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the worker has delivered everything; True when done."""
        return self.worker.wait(timeout)

    @property
    def done(self) -> bool:
        return self.worker.done

    @property
    def failure(self) -> BaseException | None:
        """The error that broke the run so far (the worker's, or a sink's at once: ``error`` gets a
        sink's only at close), or None."""
        return self.error or self.worker.error or self._sinks.failure

    def run(self, on_tick: Callable[[Pipeline], None] | None = None, tick_s: float = 0.25) -> PipelineStats:
        """Start, run until every source ends (or :meth:`stop`), close, and return the statistics."""
        self.start()
        try:
            while not self.wait(tick_s):
                if on_tick is not None:
                    on_tick(self)
            if on_tick is not None:
                on_tick(self)
        finally:
            self.close()
        return self.stats()

    def close(self, timeout: float = 5.0) -> None:
        """Stop everything, deliver what was produced, close sinks and join every thread."""
        if self._closed:
            return
        self._closed = True
        for svc in self.services:  # no source may be added while everything stops
            svc.close()
        self.stop()
        stop_at = time.monotonic()
        deadline = stop_at + timeout
        self.worker.join(deadline)
        for s in self.sources:
            # a capture thread inside FFmpeg's open or read cannot be interrupted: wait out its
            # timeout rather than leave a thread behind that still holds the process
            if not s.join(max(0.1, deadline - time.monotonic(), s.stop_wait_s() - (time.monotonic() - stop_at))):
                _logger.error("source %s did not stop in time", s.source_id)
        sink_error = self._sinks.close(deadline)
        self.error = self.error or self.worker.error or sink_error
        self.ended_at = self.ended_at or self.worker.ended_at or time.monotonic()
        errors = [s.error for s in self.sources if s.error is not None]
        if errors and self.error is None:
            self.error = errors[0]

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sources at run time ----------------------------------------------------------------------
    def _adopt(self, source: Source) -> None:
        source.bind(self.shutdown.stop, self._on_status, self.bell)

    def add_source(self, source: Source) -> None:
        """Add ``source`` (opened here: raises SourceError) and start it if the pipeline runs."""
        with self._sources_lock:
            if self.shutdown.stop.is_set():
                raise ConfigError(f"cannot add source {source.source_id!r}: the pipeline is stopping")
            same = next((s for s in self.sources if s.source_id == source.source_id), None)
            if same is not None:
                sid = source.source_id
                if same.removed.is_set():
                    raise ConfigError(
                        f"source {sid!r} was removed and its last results are still being delivered; "
                        f"add it again in a moment"
                    )
                if same.started and not same.alive:
                    state = same.state.value if same.state is not None else "ended"
                    raise ConfigError(
                        f"a source with id {sid!r} has ended ({state}) but is still listed; remove it "
                        f"first to use its id again, or pick another id"
                    )
                raise ConfigError(f"a source with id {sid!r} is already running; pick another id")
            if len(source.buffer):
                raise ValueError("a source added at run time must start with an empty buffer")
            self._adopt(source)
            if source.info is None:
                source.open()
            if self.started_at:
                source.start(self._source_low_priority(source))
            earlier = self.retired.pop(source.source_id, None)
            if earlier is not None:
                rec = self.replaced.setdefault(earlier.source_id, ReplacedStats())
                rec.add(earlier.frames_decoded, self.worker.forget(earlier.source_id), dict(earlier.buffer.drops))
            self.sources = [*self.sources, source]
            self.batcher.set_buffers([s.buffer for s in self.sources])
        _logger.info("source %s added (%s)", source.source_id, source.describe())

    def _source_low_priority(self, source: Source) -> bool:
        priority = self.policy.support_priority
        return priority == "low" or (priority == "auto" and source.offline)

    def remove_source(self, source_id: str, timeout: float = 5.0) -> bool:
        """Stop one source; its buffered frames are still inferred. True once its thread has ended."""
        match = [s for s in self.sources if s.source_id == source_id]
        if not match:
            known = [s.source_id for s in self.sources]
            raise ConfigError(f"no running source with id {source_id!r}; running: {known}")
        src = match[0]
        src.remove()
        if not src.started:  # nothing else will close its buffer
            src.buffer.close()
        return src.join(timeout)

    def _on_status(self, event: StatusEvent) -> None:
        self.status[event.source_id] = event
        self._sinks.notify(event)

    def _retire(self, delivered: set[str]) -> Iterable[str]:
        """Forget sources removed at run time whose end of stream is out (memory stays bounded).

        Not before: until then the id cannot be added again, so the counts it leaves are final.
        """
        with self._sources_lock:
            gone = [s for s in self.sources if s.removed.is_set() and s.source_id in delivered and not s.alive]
            if not gone:
                return ()
            for s in gone:
                self.retired[s.source_id] = s
            self.sources = [s for s in self.sources if s not in gone]
            self.batcher.set_buffers([s.buffer for s in self.sources])
        return [s.source_id for s in gone]

    # -- statistics -------------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.ended_at or self.worker.ended_at or time.monotonic()) - self.started_at

    def _source_stats(self, s: Source) -> SourceStats:
        b = s.buffer
        return SourceStats(
            source_id=s.source_id,
            uri=s.describe(),
            state=None if s.state is None else s.state.value,
            states_entered=dict(s.state_counts),
            frames_decoded=s.frames_decoded,
            frames_out=self.worker.frames_out[s.source_id],
            drops=dict(b.drops),
            queue_depth=len(b),
            queue_capacity=b.capacity,
            removed=s.removed.is_set(),
            error=None if s.error is None else str(s.error),
            live=s.live_stats(),
        )

    def source_stats(self) -> list[SourceStats]:
        """The current sources' statistics: cheap (no locks, no percentiles), for heartbeats."""
        return [self._source_stats(s) for s in self.sources]

    def stats(self, detail: bool = True) -> PipelineStats:
        """The run's statistics now; ``detail=False`` leaves out stage percentiles and sink statistics."""
        current = list(self.sources)  # read before retired: a source retired in between is still seen, once
        every = {s.source_id: s for s in list(self.retired.values())}
        every.update((s.source_id, s) for s in current)
        w = self.worker
        frames = sum(w.frames_out.values()) + sum(r.frames_out for r in self.replaced.values())
        failure = self.failure
        return PipelineStats(
            frames=frames,
            elapsed_s=self.elapsed_s(),
            batch_size_mean=w.batch_sizes.mean,
            sources={sid: self._source_stats(s) for sid, s in every.items()},
            current=tuple(s.source_id for s in current),
            replaced={sid: dataclasses.replace(r, drops=dict(r.drops)) for sid, r in self.replaced.items()},
            stages={k: v.summary() for k, v in w.stages.items()} if detail else {},
            sink_stages={k: v.summary() for s in self.sinks for k, v in s.stages().items()} if detail else {},
            sinks={s.name: s.stats() for s in self.sinks} if detail else {},
            torch_threads=dict(w.thread_counts),
            support_priority="low" if self._low_support else "normal",
            error=None if self.error is None else str(self.error),
            failure=None if failure is None else first_line(failure),
            started=bool(self.started_at),
            done=w.done,
            stopping=self.shutdown.stop.is_set(),
        )

    def summary(self) -> dict[str, object]:
        """The run summary as written to ``summary.json`` (:meth:`stats` as JSON)."""
        return self.stats().to_json()
