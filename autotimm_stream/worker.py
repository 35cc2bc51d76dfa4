"""The batching worker: three threads between the ring buffers and the sinks.

*prep* forms a batch and converts it into a tensor, *infer* runs the network and nothing else,
*post* turns the outputs into results and hands them to the sinks while the next batch runs (a
segmentation mask at 720p is ~20 core-ms per frame: on the infer thread it added straight to
every batch's time). Files read ahead (:data:`_READ_AHEAD` prepared batches) and a short batch
waits to fill while the model has work queued; live batches are formed just in time and take the
frames that arrive until the model takes them (:meth:`Worker._top_up`).

Intra-op threads are set per worker thread: *infer* keeps torch's count (the model needs every
core), *prep* and *post* use ``prep_threads`` (1 by default). With torch's OpenMP backend the count
is a per-thread setting that each thread takes from a global default the first time it uses torch;
two OpenMP teams on the same cores made the forward pass ~5 % slower on 2 cores. The global
default is restored once every worker has taken its own.

:class:`Worker` holds the loops; :class:`~autotimm_stream.pipeline.Pipeline` inherits them and owns
the state they share (queues, events, statistics), set up in its ``__init__``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .frame import Frame, Result
from .priority import lower_this_thread
from .ringbuffer import Policy
from .sinks.base import EndOfStream

if TYPE_CHECKING:
    from .batching import Batcher, BatchPolicy
    from .postprocess import Postprocessor
    from .runtime.runner import ModelRunner
    from .sinks.base import SinkRunner
    from .sources.base import Source
    from .stats import Ewma, StageStats

__all__ = ["Worker"]

_logger = logging.getLogger(__name__)

_POLL_S = 0.1
_SINK_GRACE_S = 2.0  # after the drain time, how long a sink that accepts nothing may hold a stop
_END = object()
# Prepared batches that may wait for the model. Files (``block``): 3, so preprocessing jitter
# never idles the model (until 2026-11-27 the limit read 2 but preprocessing held a third batch
# while it waited to queue it; holding only 2 made the 720p detector 4 % slower in 3 of 5
# alternating runs, so the depth stays 3, now counted in the queue). Live sources (``latest`` or
# a staleness budget): none beyond the one being preprocessed while the model runs, so a batch
# is formed from the freshest frames just before the model is free: waiting in this queue is
# invisible to the staleness budget and adds whole forward passes of latency (measured: p50
# capture-to-publish ~4.5 forward passes with 2, see benchmarks).
_READ_AHEAD = 3
_POST_QUEUE = 2  # forwarded batches waiting for post-processing (bounded: outputs can be large)
# How early before the model should be free a live batch is formed: twice the preprocessing
# time, plus this share of the model's busy time (its jitter), plus a margin. Measured
# (benchmarks/live.py, 3 x 25 fps RTSP against resnet18, paired runs): 0.4 kept the results/s of
# forming at once (684/660 vs 642/640) and cut p50 latency 580 -> 450 ms; 0.0 cut it to ~410 ms
# but cost ~13 % of the results.
_JIT_LEAD = 0.4
_JIT_MARGIN_S = 0.005
_MAX_JIT_WAIT_S = 1.0


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


class Worker:
    """The worker threads' loops, mixed into :class:`~autotimm_stream.pipeline.Pipeline`."""

    # state owned by the pipeline (see Pipeline.__init__)
    sources: list[Source]
    runner: ModelRunner
    policy: BatchPolicy
    batcher: Batcher
    postprocess: Postprocessor
    stop_event: threading.Event
    abort: threading.Event
    bell: threading.Condition
    drain_timeout_s: float
    prep_threads: int
    error: BaseException | None
    stages: dict[str, StageStats]
    batch_sizes: StageStats
    frames_out: Counter[str]
    thread_counts: dict[str, int]
    ended_at: float
    _sink_runners: list[SinkRunner]
    _prepared: queue.Queue[Any]
    _outputs: queue.Queue[Any]
    _outputs_closed: bool
    _taken: threading.Condition
    _busy_until: float
    _busy_s: Ewma
    _prep_s: Ewma
    _done: threading.Event
    _infer_ready: threading.Event
    _prep_ready: threading.Event
    _post_ready: threading.Event
    _infer_threads: int
    _low_support: bool
    _stop_requested_at: float | None
    _ends_out: set[str]

    def kill(self) -> None:  # provided by Pipeline
        raise NotImplementedError

    def _retire(self, ended: set[str]) -> None:  # provided by Pipeline
        raise NotImplementedError

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
            extra = self.batcher.top_up(room, _POLL_S, self._held(pending))
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

    def _held(self, pending: _Pending) -> dict[int, int]:
        """Frames per ring buffer (by ``id``) in ``pending``: a top-up keeps to each source's share."""
        per_source = Counter(f.source_id for f in pending.frames)
        return {id(s.buffer): per_source[s.source_id] for s in self.sources if s.source_id in per_source}

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
            # files: stop at `limit` queued (a batch formed now would wait in put, holding one
            # more full batch); live: until the model has taken the last one
            while self._prepared.qsize() >= max(limit, 1):
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
                    self._ends_out.add(item.source_id)  # now it may be retired (its counts are final)
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
        t0 = time.perf_counter()
        outputs = self.runner.forward(p.x)
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
            _logger.warning(
                "sinks still held results %.1f s after the stop (drain_timeout_s %.1f + %.1f s); abandoning delivery",
                time.monotonic() - t,
                self.drain_timeout_s,
                _SINK_GRACE_S,
            )
            self.abort.set()
            return True
        return False
