"""The pipeline: sources -> ring buffers -> batching worker -> post-processing -> sinks.

:class:`Pipeline` owns every thread and resource. One stop event ends a run gracefully: sources
stop, frames already buffered are still inferred (for at most ``drain_timeout_s``), every sink
receives what was produced and closes its files. A second, internal *abort* event cuts the drain
short. Every wait in every thread has a timeout and watches those events; no thread is a daemon.

The worker is three threads so the forward pass never waits for the work around it: *prep*
forms a batch and converts it into a tensor, *infer* runs the network, *post* turns the outputs
into results and hands them to the sinks while the next batch runs (a segmentation mask at 720p
is ~20 core-ms per frame: on the infer thread it added straight to every batch's time).

Sources can be added and removed while the pipeline runs (:meth:`Pipeline.add_source`,
:meth:`Pipeline.remove_source`); with ``persistent`` the pipeline keeps running when it has no
source left, waiting for the next one (a service driven over the control channel). Each
source's state changes reach every sink at once (:meth:`Sink.status`), never queued behind results.

Intra-op threads are set per worker thread: *infer* keeps torch's count (the model needs every
core), *prep* and *post* use ``prep_threads`` (1 by default). With torch's OpenMP backend the count is a
per-thread setting that each thread takes from a global default the first time it uses torch;
two OpenMP teams on the same cores made the forward pass ~5 % slower on 2 cores. The global
default is restored once both workers have taken theirs.
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
from .frame import STAGES, Frame, Result
from .postprocess import Postprocessor
from .priority import PRIORITIES, lower_this_thread
from .ringbuffer import Policy
from .runtime.runner import ModelRunner
from .sinks.base import EndOfStream, Sink, SinkRunner
from .sources.base import Source, StatusEvent
from .stats import StageStats

__all__ = ["Pipeline"]

_logger = logging.getLogger(__name__)
_POLL_S = 0.1
_SINK_GRACE_S = 2.0  # after the drain time, how long a sink that accepts nothing may hold a stop
_END = object()
# Prepared batches that may wait for the model. Files (``block``): 2, so preprocessing jitter
# never idles the model. Live sources (``latest`` or a staleness budget): none beyond the one being
# preprocessed while the model runs, so a batch is formed from the freshest frames just before the
# model is free: waiting in this queue is invisible to the staleness budget and adds whole forward
# passes of latency (measured: p50 capture-to-publish ~4.5 forward passes with 2, see benchmarks).
_READ_AHEAD = 2
_POST_QUEUE = 2  # forwarded batches waiting for post-processing (bounded: outputs can be large)
# How early before the model should be free a live batch is formed: twice the preprocessing
# time, plus this share of the model's busy time (its jitter), plus a margin. Measured
# (benchmarks/live.py, 3 x 25 fps RTSP against resnet18, paired runs): 0.4 kept the results/s of
# forming at once (684/660 vs 642/640) and cut p50 latency 580 -> 450 ms; 0.0 cut it to ~410 ms
# but cost ~13 % of the results.
_JIT_LEAD = 0.4
_JIT_MARGIN_S = 0.005
_MAX_JIT_WAIT_S = 1.0


class _Ewma:
    """Exponentially weighted mean of recent durations (seconds); 0 until the first sample."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.value = 0.0

    def add(self, x: float) -> None:
        self.value = x if self.value == 0.0 else self.value + self.alpha * (x - self.value)


class _Pending:
    """A preprocessed batch on its way to the model; live batches grow until the model takes them."""

    __slots__ = ("frames", "x", "formed", "prep_ms", "ready", "taken", "lock")

    def __init__(self, frames: list[Frame], x: Any, formed_ns: int, prep_ms: float):
        self.frames = list(frames)
        self.x = [x]  # concatenated once, when the model takes the batch
        self.formed = [formed_ns] * len(frames)  # when each frame left its ring buffer
        self.prep_ms = prep_ms
        self.ready = [time.monotonic_ns()] * len(frames)  # when each frame was preprocessed
        self.taken = False
        self.lock = threading.Lock()

    def join(self, frames: list[Frame], x: Any, formed_ns: int, prep_ms: float) -> None:
        self.frames.extend(frames)
        self.x.append(x)
        self.formed.extend([formed_ns] * len(frames))
        self.ready.extend([time.monotonic_ns()] * len(frames))
        self.prep_ms += prep_ms


class Pipeline:
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
        self.status: dict[str, StatusEvent] = {}  # latest state change per source
        self._sink_runners = [SinkRunner(s, self.abort, capacity=sink_queue) for s in sinks]
        self._prepared: queue.Queue[Any] = queue.Queue(maxsize=_READ_AHEAD)
        self._outputs: queue.Queue[Any] = queue.Queue(maxsize=_POST_QUEUE)  # forward outputs for post
        self._taken = threading.Condition()  # notified each time infer takes a prepared batch
        # live pipelines form a batch just in time: when the running one should be nearly done
        self._busy_until = 0.0  # monotonic time the model should finish the batch it took
        self._busy_s = _Ewma()  # how long the infer thread is busy with one batch
        self._prep_s = _Ewma()  # how long forming and preprocessing one batch takes
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
        for s in self.sources:
            if s.info is None:
                s.open()
        try:
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
            if any(s.source_id == source.source_id for s in self.sources):
                raise ConfigError(f"a source with id {source.source_id!r} is already running; pick another id")
            if len(source.buffer):
                raise ValueError("a source added at run time must start with an empty buffer")
            self._adopt(source)
            if source.info is None:
                source.open()
            if self.started_at:
                source.low_priority = self._source_low_priority(source)
                source.start()
            self.retired.pop(source.source_id, None)
            self.sources = [*self.sources, source]
            self.batcher.set_buffers([s.buffer for s in self.sources])
        _logger.info("source %s added (%s)", source.source_id, source.describe())

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
        """Forget sources removed at run time once their last result is out (memory stays bounded)."""
        with self._sources_lock:
            gone = [s for s in self.sources if s.removed.is_set() and s.source_id in ended and not s.alive]
            if not gone:
                return
            for s in gone:
                self.retired[s.source_id] = s
                ended.discard(s.source_id)
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
        deadline = time.monotonic() + timeout
        if self._threads and not self._done.wait(max(0.0, deadline - time.monotonic())):
            self.abort.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for s in self.sources:
            if not s.join(max(0.1, deadline - time.monotonic())):
                _logger.error("source %s did not stop in time", s.source_id)
        for r in self._sink_runners:
            r.finish()
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

    # -- worker ---------------------------------------------------------------------------------
    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:
            _logger.exception("worker failed")
            if self.error is None:
                self.error = exc
            self.kill()
            self._done.set()

    def _draining_too_long(self) -> bool:
        t = self._stop_requested_at
        if t is None and self.stop_event.is_set():
            t = self._stop_requested_at = time.monotonic()
        return t is not None and time.monotonic() - t > self.drain_timeout_s

    def _put(self, item: Any, to: queue.Queue[Any] | None = None) -> bool:
        q = self._prepared if to is None else to
        while not self.abort.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _await_ready(self, ready: threading.Event) -> bool:
        """Wait until another worker has taken its thread count; False on abort."""
        while not ready.wait(_POLL_S):
            if self.abort.is_set():
                return False
        return True

    def _take_threads(self, name: str, count: int) -> None:
        torch.get_num_threads()  # first use in this thread: it takes the global default now
        torch.set_num_threads(count)  # then its own count (also the new global default)
        self.thread_counts[name] = torch.get_num_threads()

    def _prep_loop(self) -> None:
        ended: set[str] = set()
        halt = threading.Event()
        if not self._await_ready(self._infer_ready):  # infer must take its count first
            return
        self._take_threads("prep", self.prep_threads)
        if self._low_support:
            lower_this_thread()
        self._prep_ready.set()
        try:
            while not self.abort.is_set():
                if self._draining_too_long():
                    halt.set()
                    break
                if not self._await_turn():
                    return
                batch = self.batcher.next_batch(halt, self._model_has_work)
                if batch is None:
                    break
                if batch:
                    formed_ns = time.monotonic_ns()
                    x, prep_ms = self._preprocess(batch)
                    self._prep_s.add((time.monotonic_ns() - formed_ns) / 1e9)
                    pending = _Pending(batch, x, formed_ns, prep_ms)
                    if not self._put(pending):
                        return
                    if not self._read_ahead() and not self._top_up(pending, halt):
                        return
                self._announce_ends(ended)
                self._retire(ended)
        finally:
            self._discard_leftovers()
            self._announce_ends(ended, final=True)
            self._put(_END)

    def _top_up(self, pending: _Pending, halt: threading.Event) -> bool:
        """Live: until the model takes ``pending``, frames that arrive join it (False on abort).

        A batch is formed a little before the model should be free (:meth:`_await_turn`); without
        this, a frame arriving in that lead waited a whole extra forward pass. If the model takes
        the batch while newcomers are being preprocessed, they become the next batch, topped up in
        turn. Returns once the current batch is taken or full, or the run stops.
        """
        limit = self.policy.max_batch
        if not self.batcher.can_top_up():
            return True
        while not self.abort.is_set() and not self.stop_event.is_set() and not halt.is_set():
            with pending.lock:
                if pending.taken or len(pending.frames) >= limit:
                    return True
                room = limit - len(pending.frames)
            extra = self.batcher.top_up(room, _POLL_S)
            if not extra:
                continue
            joined_ns = time.monotonic_ns()
            x, prep_ms = self._preprocess(extra)
            with pending.lock:
                if not pending.taken:
                    pending.join(extra, x, joined_ns, prep_ms)
                    continue
            pending = _Pending(extra, x, joined_ns, prep_ms)  # missed it: the next batch
            if not self._put(pending):
                return False
        return True

    def _model_has_work(self) -> bool:
        """Files: a prepared batch waits for the model, so the batch being formed may wait to fill."""
        return not self.abort.is_set() and self._read_ahead() > 0 and self._prepared.qsize() > 0

    def _read_ahead(self) -> int:
        live = any(s.buffer.policy is Policy.LATEST or s.buffer.max_staleness_ns for s in self.sources)
        return 0 if live else _READ_AHEAD

    def _await_turn(self) -> bool:
        """Wait until the next batch should be formed; False on abort.

        Files: as soon as fewer than :data:`_READ_AHEAD` prepared batches wait. Live: once the
        model has taken the last prepared batch, and then until shortly before it should be done
        with it (see :data:`_JIT_LEAD`), so the batch holds fresher frames and waits less.
        """
        limit = self._read_ahead()
        with self._taken:
            while self._prepared.qsize() > limit:
                if self.abort.is_set():
                    return False
                self._taken.wait(_POLL_S)
        if limit:
            return True
        lead = 2 * self._prep_s.value + _JIT_LEAD * self._busy_s.value + _JIT_MARGIN_S
        start_at = self._busy_until - lead
        while not self.stop_event.is_set():
            delay = min(start_at - time.monotonic(), _MAX_JIT_WAIT_S)
            if delay <= 0:
                break
            if self.abort.wait(min(delay, _POLL_S)):
                return False
        return True

    def _announce_ends(self, ended: set[str], final: bool = False) -> None:
        for s in self.sources:
            if s.source_id not in ended and (s.buffer.exhausted or final):
                ended.add(s.source_id)
                if s.error:
                    reason = "error"
                elif s.removed.is_set():
                    reason = "removed"
                else:
                    reason = "stopped" if self.stop_event.is_set() else "end"
                self._put(EndOfStream(s.source_id, 0, reason, dict(s.buffer.drops)))

    def _discard_leftovers(self) -> None:
        for s in self.sources:
            left = len(s.buffer.pop(s.buffer.capacity))
            if left:
                s.buffer.drop("shutdown", left)
                _logger.warning("source %s: %d buffered frames dropped at shutdown", s.source_id, left)

    def _infer_loop(self) -> None:
        self._take_threads("infer", self._infer_threads)
        self._infer_ready.set()
        try:
            while True:
                try:
                    item = self._prepared.get(timeout=_POLL_S)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    continue
                taken = time.monotonic()
                if isinstance(item, _Pending):
                    self._busy_until = taken + self._busy_s.value
                    with item.lock:
                        item.taken = True
                    with self.bell:  # a top-up waiting for frames learns at once that it is too late
                        self.bell.notify_all()
                with self._taken:
                    self._taken.notify()
                if item is _END or isinstance(item, EndOfStream):  # to post, in order with the batches
                    if not self._put(item, self._outputs) or item is _END:
                        return
                    continue
                forwarded = self._forward(item)
                self._busy_s.add(time.monotonic() - taken)
                if not self._put(forwarded, self._outputs):
                    return
        finally:
            self._outputs_closed = True

    def _post_loop(self) -> None:
        try:
            if not self._await_ready(self._prep_ready):  # after prep: it sets the global default this takes
                return
            self._take_threads("post", self.prep_threads)
            if self._low_support:
                lower_this_thread()
            self._post_ready.set()
            while True:
                try:
                    item = self._outputs.get(timeout=_POLL_S)
                except queue.Empty:
                    # infer puts nothing more once it has closed (a batch put just after this
                    # get timed out is still there)
                    if self.abort.is_set() or (self._outputs_closed and self._outputs.empty()):
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, EndOfStream):
                    item.frames = self.frames_out[item.source_id]
                    self._emit(item)
                    continue
                self._emit(self._finish(*item))
        finally:
            self.ended_at = time.monotonic()
            self._done.set()

    def _preprocess(self, batch: list[Frame]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        x = self.runner.preprocess([f.image for f in batch])
        return x, (time.perf_counter() - t0) * 1e3

    def _forward(self, p: _Pending) -> tuple:
        now = time.monotonic_ns()
        waits = [(now - r) / 1e6 for r in p.ready]
        x = p.x[0] if len(p.x) == 1 else torch.cat(p.x)
        t0 = time.perf_counter()
        outputs = self.runner.forward(x)
        self.runner.synchronize()
        return p.frames, outputs, p.formed, p.prep_ms, waits, (time.perf_counter() - t0) * 1e3

    def _finish(
        self,
        batch: list[Frame],
        outputs: Any,
        formed: list[int],
        prep_ms: float,
        waits: list[float],
        infer_ms: float,
    ) -> list[Result]:
        t1 = time.perf_counter()
        predictions = self.postprocess(outputs, [(f.height, f.width) for f in batch])
        post_ms = (time.perf_counter() - t1) * 1e3
        done_ns = time.monotonic_ns()
        n = len(batch)
        results = []
        for frame, preds, formed_ns, wait_ms in zip(batch, predictions, formed, waits, strict=True):
            timings = {
                "decode": frame.decode_ms,
                "queue": (formed_ns - frame.enqueued_ns) / 1e6,
                "preprocess": prep_ms,
                "wait": wait_ms,
                "infer": infer_ms,
                "post": post_ms,
            }
            results.append(
                Result(
                    frame,
                    self.runner.meta.task,
                    **preds,
                    timings=timings,
                    batch_size=n,
                    done_ns=done_ns,
                    model=self.runner.meta_name,
                    model_version=self.runner.model_version,
                )
            )
            self.stages["decode"].add(frame.decode_ms)
            self.stages["queue"].add(timings["queue"])
            self.stages["wait"].add(wait_ms)
            self.frames_out[frame.source_id] += 1
        for name, ms in (("preprocess", prep_ms), ("infer", infer_ms), ("post", post_ms)):
            self.stages[name].add(ms / n, n)  # per-frame share of the batch's time
        self.batch_sizes.add(n)
        return results

    def _emit(self, item: list[Result] | EndOfStream) -> None:
        for r in self._sink_runners:
            r.submit(item, self._sinks_stuck)

    def _sinks_stuck(self) -> bool:
        """Stopping, and a sink still takes nothing well past the drain time (a PUSH socket with no
        peer): give up on delivery so the stop is bounded."""
        t = self._stop_requested_at
        if t is not None and time.monotonic() - t > self.drain_timeout_s + _SINK_GRACE_S:
            _logger.warning("a sink took nothing for %.1f s after the stop; abandoning delivery", self.drain_timeout_s)
            self.abort.set()
            return True
        return False

    # -- reporting ------------------------------------------------------------------------------
    @property
    def frames_total(self) -> int:
        return sum(self.frames_out.values())

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
            "drops": sum(sum(v["drops"].values()) for v in sources.values()),
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
