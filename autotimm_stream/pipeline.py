"""The pipeline: sources -> ring buffers -> batching worker -> post-processing -> sinks.

:class:`Pipeline` owns every thread and resource. One stop event ends a run gracefully: sources
stop, frames already buffered are still inferred (for at most ``drain_timeout_s``), every sink
receives what was produced and closes its files. A second, internal *abort* event cuts the drain
short. Every wait in every thread has a timeout and watches those events; no thread is a daemon.

The batching worker (three threads: prep, infer, post) is :class:`~autotimm_stream.worker.Worker`,
whose loops the pipeline inherits.

Sources can be added and removed while the pipeline runs (:meth:`Pipeline.add_source`,
:meth:`Pipeline.remove_source`); with ``persistent`` the pipeline keeps running when it has no
source left, waiting for the next one (a service driven over the control channel). Each
source's state changes reach every sink at once (:meth:`Sink.status`), never queued behind results.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .batching import Batcher, BatchPolicy
from .errors import ConfigError
from .frame import STAGES
from .postprocess import Postprocessor
from .priority import PRIORITIES
from .runtime.runner import ModelRunner
from .sinks.base import Sink, SinkRunner
from .sources.base import Source, StatusEvent
from .stats import Ewma, StageStats
from .worker import _POST_QUEUE, _READ_AHEAD, Worker

__all__ = ["Pipeline"]

_logger = logging.getLogger(__name__)


class Pipeline(Worker):
    """Runs ``sources`` through ``runner`` into ``sinks``.

    Use :meth:`run` for a blocking run, or :meth:`start` / :meth:`stop` / :meth:`wait` /
    :meth:`close` to drive it from elsewhere (the CLI calls :meth:`stop` from a signal handler).
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
        drain_timeout_s: float = 3.0,
        sink_queue: int = 4,
        prep_threads: int = 1,
        persistent: bool = False,
        support_priority: str = "auto",
    ):
        if support_priority not in PRIORITIES:
            raise ValueError(f"support_priority must be one of {PRIORITIES}, got {support_priority!r}")
        if not sources and not persistent:
            raise ValueError("a pipeline needs at least one source (or persistent=True, to add them later)")
        ids = [s.source_id for s in sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source ids must be unique, got {ids}")
        self.sources = list(sources)  # replaced, never mutated (threads iterate snapshots)
        self.runner = runner
        self.sinks = sinks
        self.policy = batch or BatchPolicy()
        self.stop_event = stop or threading.Event()
        self.abort = threading.Event()
        self.postprocess = postprocessor or Postprocessor(runner.meta)
        self.drain_timeout_s = drain_timeout_s
        bells = {id(s.buffer.bell) for s in sources}
        if len(bells) > 1:
            raise ValueError("all source buffers must share one bell (threading.Condition)")
        self.bell = sources[0].buffer.bell if sources else threading.Condition()
        self._keep_open = threading.Event()
        if persistent:
            self._keep_open.set()
        self._sources_lock = threading.Lock()
        for s in sources:
            self._adopt(s)
        self.batcher = Batcher([s.buffer for s in sources], self.bell, self.policy, keep_open=self._keep_open)
        self.retired: dict[str, Source] = {}  # sources removed at run time (ended, buffers empty), by id
        self.replaced: dict[str, dict[str, Any]] = {}  # totals of retired sources whose id came back
        self._ends_out: set[str] = set()  # sources whose end of stream the post thread has sent
        self.status: dict[str, StatusEvent] = {}  # latest state change per source
        self._sink_runners = [SinkRunner(s, self.abort, capacity=sink_queue) for s in sinks]
        self._prepared: queue.Queue[Any] = queue.Queue(maxsize=_READ_AHEAD)
        self._outputs: queue.Queue[Any] = queue.Queue(maxsize=_POST_QUEUE)  # forward outputs for post
        self._taken = threading.Condition()  # notified each time infer takes a prepared batch
        # live pipelines form a batch just in time: when the running one should be nearly done
        self._busy_until = 0.0  # monotonic time the model should finish the batch it took
        self._busy_s = Ewma()  # how long the infer thread is busy with one batch
        self._prep_s = Ewma()  # how long forming and preprocessing one batch takes
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self.prep_threads = prep_threads
        self.support_priority = support_priority
        self._low_support = False  # prep and sink threads at low priority (decided in start)
        self._infer_threads = torch.get_num_threads()
        self._infer_ready = threading.Event()
        self._prep_ready = threading.Event()
        self._post_ready = threading.Event()
        self._outputs_closed = False  # set by infer when it ends: post may end once the queue is empty
        self.thread_counts: dict[str, int] = {}  # intra-op threads each worker really got
        self._stop_requested_at: float | None = None
        self.error: BaseException | None = None
        self.stages = {name: StageStats() for name in STAGES if name != "publish"}
        self.batch_sizes = StageStats()
        self.frames_out: Counter[str] = Counter()
        self.started_at = 0.0
        self.ended_at = 0.0
        self._opened: list[Sink] = []
        self._closed = False
        self.services: list[Any] = []  # started after the sources, closed first (the control channel)

    # -- life cycle ---------------------------------------------------------------------------
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
        self._low_support = self.support_priority == "low" or (
            self.support_priority == "auto" and not self._keep_open.is_set() and all(s.offline for s in self.sources)
        )
        for r in self._sink_runners:
            r.low_priority = self._low_support
            r.start()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._prep_loop,), name="worker-prep"),
            threading.Thread(target=self._guard, args=(self._infer_loop,), name="worker-infer"),
            threading.Thread(target=self._guard, args=(self._post_loop,), name="worker-post"),
        ]
        for t in self._threads:
            t.start()
        if self._post_ready.wait(5.0):
            torch.set_num_threads(self._infer_threads)  # the global default, for threads started later
        self.started_at = time.monotonic()
        for s in self.sources:
            s.low_priority = self._source_low_priority(s)
            s.start()
        for svc in self.services:
            svc.start()

    def stop(self) -> None:
        """Graceful stop: sources end, buffered frames drain (bounded), sinks close. Idempotent."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._keep_open.clear()
        self.stop_event.set()
        with self.bell:
            self.bell.notify_all()

    def attach(self, service: Any) -> None:
        """Own ``service`` (``start()``/``close()``): started with the pipeline, closed with it."""
        self.services.append(service)

    # -- sources at run time ------------------------------------------------------------------------
    def _adopt(self, source: Source) -> None:
        source.stop = self.stop_event
        source.buffer.bell = self.bell
        source.on_status = self._on_status

    def add_source(self, source: Source) -> None:
        """Add ``source`` (opened here: raises SourceError) and start it if the pipeline runs."""
        with self._sources_lock:
            if self.stop_event.is_set():
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
                    state = getattr(same.state, "value", "ended")
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
                source.low_priority = self._source_low_priority(source)
                source.start()
            earlier = self.retired.pop(source.source_id, None)
            if earlier is not None:
                self._fold_replaced(earlier)
            self.sources = [*self.sources, source]
            self.batcher.set_buffers([s.buffer for s in self.sources])
        _logger.info("source %s added (%s)", source.source_id, source.describe())

    def _fold_replaced(self, earlier: Source) -> None:
        """Keep the totals of a retired source whose id is used again: counts by id restart at 0."""
        rec = self.replaced.setdefault(
            earlier.source_id, {"sessions": 0, "frames_decoded": 0, "frames_out": 0, "drops": {}}
        )
        rec["sessions"] += 1
        rec["frames_decoded"] += earlier.frames_decoded
        rec["frames_out"] += self.frames_out.pop(earlier.source_id, 0)
        rec["drops"] = dict(Counter(rec["drops"]) + Counter(earlier.buffer.drops))

    def _source_low_priority(self, source: Source) -> bool:
        return self.support_priority == "low" or (self.support_priority == "auto" and source.offline)

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
        for r in self._sink_runners:
            r.notify(event)

    def _retire(self, ended: set[str]) -> None:
        """Forget sources removed at run time once their last result is out (memory stays bounded).

        Not before the post thread has sent the source's end of stream: until then its id cannot
        be added again, so the counts by id it leaves behind are final.
        """
        with self._sources_lock:
            gone = [
                s
                for s in self.sources
                if s.removed.is_set() and s.source_id in ended and s.source_id in self._ends_out and not s.alive
            ]
            if not gone:
                return
            for s in gone:
                self.retired[s.source_id] = s
                ended.discard(s.source_id)
                self._ends_out.discard(s.source_id)
            self.sources = [s for s in self.sources if s not in gone]
            self.batcher.set_buffers([s.buffer for s in self.sources])

    def kill(self) -> None:
        """Stop without draining (a second Ctrl-C)."""
        self.stop()
        self.abort.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the worker has delivered everything; True when done."""
        return self._done.wait(timeout)

    @property
    def failure(self) -> BaseException | None:
        """The error that broke the run so far (the worker's, or a sink's at once: ``error`` gets a
        sink's only at close), or None."""
        if self.error is not None:
            return self.error
        return next((r.error for r in self._sink_runners if r.error is not None), None)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def run(self, on_tick: Callable[[Pipeline], None] | None = None, tick_s: float = 0.25) -> dict[str, Any]:
        """Start, run until every source ends (or :meth:`stop`), close, and return the summary."""
        self.start()
        try:
            while not self.wait(tick_s):
                if on_tick is not None:
                    on_tick(self)
            if on_tick is not None:
                on_tick(self)
        finally:
            self.close()
        return self.summary()

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
        if self._threads and not self._done.wait(max(0.0, deadline - time.monotonic())):
            self.abort.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for s in self.sources:
            # a capture thread inside FFmpeg's open or read cannot be interrupted: wait out its
            # timeout rather than leave a thread behind that still holds the process
            if not s.join(max(0.1, deadline - time.monotonic(), s.stop_wait_s() - (time.monotonic() - stop_at))):
                _logger.error("source %s did not stop in time", s.source_id)
        for r in self._sink_runners:
            r.finish(self._sinks_stuck)
        for r in self._sink_runners:
            if not r.join(max(0.5, deadline - time.monotonic())):
                self.abort.set()
                r.join(1.0)
            if r.error is not None and self.error is None:
                self.error = r.error
        self.ended_at = self.ended_at or time.monotonic()
        errors = [s.error for s in self.sources if s.error is not None]
        if errors and self.error is None:
            self.error = errors[0]

    # -- reporting ------------------------------------------------------------------------------
    @property
    def frames_total(self) -> int:
        return sum(self.frames_out.values()) + sum(r["frames_out"] for r in self.replaced.values())

    def elapsed_s(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def heartbeat(self) -> list[dict[str, Any]]:
        """A cheap snapshot of each current source for heartbeats and health checks (no locks, no percentiles)."""
        return [
            {
                "source_id": s.source_id,
                "state": None if s.state is None else s.state.value,
                "frames_decoded": s.frames_decoded,
                "frames_out": self.frames_out[s.source_id],
                "drops": sum(s.buffer.drops.values()),
                "queue_depth": len(s.buffer),
            }
            for s in self.sources
        ]

    def summary(self) -> dict[str, Any]:
        """Frames, fps, drops by source and reason, per-stage latency, sink statistics."""
        elapsed = self.elapsed_s()
        sources = {}
        for s in [*self.retired.values(), *self.sources]:
            sources[s.source_id] = self._source_summary(s)
        total = self.frames_total
        return {
            "frames": total,
            "elapsed_s": round(elapsed, 3),
            "fps": round(total / elapsed, 2) if elapsed > 0 else 0.0,
            "batch_size_mean": round(self.batch_sizes.mean, 2),
            "sources": sources,
            # earlier sources whose id was added again (``sources`` shows the latest one)
            "replaced": {k: dict(v) for k, v in self.replaced.items()},
            "drops": sum(sum(v["drops"].values()) for v in [*sources.values(), *self.replaced.values()]),
            "stages_ms": {k: v.summary() for k, v in self.stages.items()},
            "sinks": {s.name: s.stats() for s in self.sinks},
            "torch_threads": dict(self.thread_counts),
            "support_priority": "low" if self._low_support else "normal",
            "error": None if self.error is None else str(self.error),
        }

    def _source_summary(self, s: Source) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uri": s.describe(),
            "frames_decoded": s.frames_decoded,
            "frames_out": self.frames_out[s.source_id],
            "drops": dict(s.buffer.drops),
            "state": None if s.state is None else s.state.value,
            "states_entered": dict(s.state_counts),
            "error": None if s.error is None else str(s.error),
        }
        stats = getattr(s, "stats", None)
        if stats is not None:
            out.update({k: v for k, v in stats().items() if k not in out})
        return out

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
