"""The batching worker: three threads between the ring buffers and the sinks.

*prep* forms a batch and preprocesses it, *infer* runs the network and nothing else, *post* turns
the outputs into results and hands them on while the next batch runs (a segmentation mask at 720p
costs ~20 core-ms per frame). Files read ahead (:data:`READ_AHEAD` prepared batches) and a short
batch waits to fill while the model has work queued; live batches are formed just in time and
take the frames that arrive until the model takes them (:meth:`Worker._top_up`).

Intra-op threads are set per worker thread: *infer* keeps torch's count (the model needs every
core), *prep* and *post* take ``prep_threads``. With torch's OpenMP backend a thread takes the
global default the first time it uses torch, so the three take their counts in turn and the
global default is restored afterwards.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .batching import Batcher
from .frame import Frame
from .lifecycle import Shutdown
from .messages import STAGES, EndOfStream, Result
from .priority import lower_this_thread
from .ringbuffer import Policy
from .stats import Ewma, StageStats

if TYPE_CHECKING:
    from .postprocess import Postprocessor
    from .runtime.runner import ModelRunner
    from .sources.base import Source

__all__ = ["Worker", "PreparedBatch", "ForwardedBatch", "READ_AHEAD", "POST_QUEUE"]

_logger = logging.getLogger(__name__)

_POLL_S = 0.1
# Prepared batches that may wait for the model. Files: 3, so preprocessing jitter never idles the
# model. Live sources: none beyond the one being preprocessed while the model runs, so a batch is
# formed from the freshest frames just before the model is free (a batch waiting in this queue is
# invisible to the staleness budget). Measurements: benchmarks/README.md.
READ_AHEAD = 3
POST_QUEUE = 2  # forwarded batches waiting for post-processing (bounded: outputs can be large)
# How early before the model should be free a live batch is formed: twice the preprocessing time,
# plus this share of the model's busy time (its jitter), plus a margin (benchmarks/README.md).
_JIT_LEAD = 0.4
_JIT_MARGIN_S = 0.005
_MAX_JIT_WAIT_S = 1.0


class PreparedBatch:
    """A preprocessed batch on its way to the model; a live one grows until the model takes it."""

    __slots__ = ("frames", "x", "formed", "prep_ms", "ready", "taken", "lock")

    def __init__(self, frames: list[Frame], x: torch.Tensor, formed_ns: int, prep_ms: float):
        self.frames = list(frames)
        self.x = [x]  # concatenated once, when the model takes the batch
        self.formed = [formed_ns] * len(frames)  # when each frame left its ring buffer
        self.prep_ms = prep_ms
        self.ready = [time.monotonic_ns()] * len(frames)  # when each frame was preprocessed
        self.taken = False
        self.lock = threading.Lock()

    def join(self, frames: list[Frame], x: torch.Tensor, formed_ns: int, prep_ms: float) -> None:
        self.frames.extend(frames)
        self.x.append(x)
        self.formed.extend([formed_ns] * len(frames))
        self.ready.extend([time.monotonic_ns()] * len(frames))
        self.prep_ms += prep_ms


@dataclass(slots=True)
class ForwardedBatch:
    """A batch the network has run: its frames and raw outputs, on their way to post-processing."""

    frames: list[Frame]
    outputs: tuple[torch.Tensor, ...]
    formed: list[int]  # monotonic ns each frame left its ring buffer
    prep_ms: float
    waits_ms: list[float]  # per frame, from preprocessed to taken by the model
    infer_ms: float


class _End:
    """The last item of a queue between the worker's threads."""


_END = _End()
Prepared = PreparedBatch | EndOfStream | _End
Forwarded = ForwardedBatch | EndOfStream | _End


@dataclass(slots=True)
class _Ready:
    """Each worker thread takes its intra-op thread count in turn (see the module docstring)."""

    infer: threading.Event = field(default_factory=threading.Event)
    prep: threading.Event = field(default_factory=threading.Event)
    post: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Runs batches of the current sources' frames through ``runner`` and ``postprocessor``.

    Args:
        runner: the loaded model.
        postprocessor: the task's post-processing.
        batcher: forms batches from the sources' ring buffers.
        sources: returns the current sources (the pipeline adds and removes them at run time).
        emit: takes each batch of results and each end of stream, in order, on the post thread.
        shutdown: the run's stop and abort events.
        prep_threads: torch intra-op threads of the prep and post threads.
        on_failure: called when a worker thread fails (the run must stop).
        retire: given the ids whose end of stream has been emitted, forgets the removed ones and
            returns their ids (their counts restart if the id comes back).
    """

    def __init__(
        self,
        runner: ModelRunner,
        postprocessor: Postprocessor,
        batcher: Batcher,
        sources: Callable[[], Sequence[Source]],
        emit: Callable[[list[Result] | EndOfStream], None],
        shutdown: Shutdown,
        *,
        prep_threads: int = 1,
        on_failure: Callable[[], None] | None = None,
        retire: Callable[[set[str]], Iterable[str]] | None = None,
    ):
        self.runner = runner
        self.postprocess = postprocessor
        self.batcher = batcher
        self._sources = sources
        self._emit = emit
        self._shutdown = shutdown
        self._on_failure = on_failure
        self._retire = retire
        self.prep_threads = prep_threads
        self._prepared: queue.Queue[Prepared] = queue.Queue(maxsize=READ_AHEAD)
        self._outputs: queue.Queue[Forwarded] = queue.Queue(maxsize=POST_QUEUE)
        self._outputs_closed = False  # set by infer when it ends: post may end once the queue is empty
        self._taken = threading.Condition()  # notified each time infer takes a prepared batch
        # live pipelines form a batch just in time: when the running one should be nearly done
        self._busy_until = 0.0  # monotonic time the model should finish the batch it took
        self._busy_s = Ewma()  # how long the infer thread is busy with one batch
        self._prep_s = Ewma()  # how long forming and preprocessing one batch takes
        self._ends_out: set[str] = set()  # sources whose end of stream the post thread has emitted
        self._ready = _Ready()
        self._infer_threads = torch.get_num_threads()
        self._low_priority = False
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        # statistics, read by Pipeline.stats()
        self.error: BaseException | None = None
        self.stages = {name: StageStats() for name in STAGES if name != "publish"}
        self.batch_sizes = StageStats()
        self.frames_out: Counter[str] = Counter()
        self.thread_counts: dict[str, int] = {}  # intra-op threads each worker thread really got
        self.ended_at = 0.0

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, low_priority: bool = False) -> None:
        """Start the three threads (prep and post at the lowest CPU priority when asked)."""
        self._low_priority = low_priority
        self._threads = [
            threading.Thread(target=self._guard, args=(self._prep_loop,), name="worker-prep"),
            threading.Thread(target=self._guard, args=(self._infer_loop,), name="worker-infer"),
            threading.Thread(target=self._guard, args=(self._post_loop,), name="worker-post"),
        ]
        for t in self._threads:
            t.start()
        if self._ready.post.wait(5.0):
            torch.set_num_threads(self._infer_threads)  # the global default, for threads started later

    @property
    def done(self) -> bool:
        """True once every result and end of stream has been emitted (or the worker failed)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the worker has emitted everything; True when done."""
        return self._done.wait(timeout)

    def join(self, deadline: float) -> None:
        """Join the threads by ``deadline`` (monotonic), aborting if they are not done by then."""
        if self._threads and not self._done.wait(max(0.0, deadline - time.monotonic())):
            self._shutdown.abort.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def forget(self, source_id: str) -> int:
        """Drop the count of a retired source whose id comes back; returns its results delivered."""
        return self.frames_out.pop(source_id, 0)

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:
            _logger.exception("worker failed")
            if self.error is None:
                self.error = exc
            self._shutdown.kill()
            if self._on_failure is not None:
                self._on_failure()
            self._done.set()

    # -- helpers shared by the threads ------------------------------------------------------------
    def _put(self, item: Any, to: queue.Queue[Any]) -> bool:
        abort = self._shutdown.abort
        while not abort.is_set():
            try:
                to.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _await_ready(self, ready: threading.Event) -> bool:
        """Wait until another worker thread has taken its thread count; False on abort."""
        while not ready.wait(_POLL_S):
            if self._shutdown.abort.is_set():
                return False
        return True

    def _take_threads(self, name: str, count: int) -> None:
        torch.get_num_threads()  # first use in this thread: it takes the global default now
        torch.set_num_threads(count)  # then its own count (also the new global default)
        self.thread_counts[name] = torch.get_num_threads()

    # -- prep -------------------------------------------------------------------------------------
    def _prep_loop(self) -> None:
        ended: set[str] = set()
        halt = threading.Event()
        shutdown = self._shutdown
        if not self._await_ready(self._ready.infer):  # infer must take its count first
            return
        self._take_threads("prep", self.prep_threads)
        if self._low_priority:
            lower_this_thread()
        self._ready.prep.set()
        try:
            while not shutdown.abort.is_set():
                if shutdown.draining_too_long():
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
                    pending = PreparedBatch(batch, x, formed_ns, prep_ms)
                    if not self._put(pending, self._prepared):
                        return
                    if not self._read_ahead() and not self._top_up(pending, halt):
                        return
                self._announce_ends(ended)
                self._retire_delivered(ended)
        finally:
            self._discard_leftovers()
            self._announce_ends(ended, final=True)
            self._put(_END, self._prepared)

    def _retire_delivered(self, ended: set[str]) -> None:
        """Let the pipeline forget removed sources whose end of stream is out (memory stays bounded)."""
        if self._retire is None:
            return
        delivered = {sid for sid in ended if sid in self._ends_out}  # _ends_out grows on the post thread
        if not delivered:
            return
        for sid in self._retire(delivered):
            ended.discard(sid)
            self._ends_out.discard(sid)

    def _top_up(self, pending: PreparedBatch, halt: threading.Event) -> bool:
        """Live: until the model takes ``pending``, frames that arrive join it (False on abort).

        A batch is formed a little before the model should be free (:meth:`_await_turn`); without
        this, a frame arriving in that lead waited a whole extra forward pass. If the model takes
        the batch while newcomers are being preprocessed, they become the next batch, topped up in
        turn. Returns once the current batch is taken or full, or the run stops.
        """
        limit = self.batcher.policy.max_batch
        if not self.batcher.can_top_up():
            return True
        stop, abort = self._shutdown.stop, self._shutdown.abort
        while not abort.is_set() and not stop.is_set() and not halt.is_set():
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
            pending = PreparedBatch(extra, x, joined_ns, prep_ms)  # missed it: the next batch
            if not self._put(pending, self._prepared):
                return False
        return True

    def _held(self, pending: PreparedBatch) -> dict[int, int]:
        """Frames per ring buffer (by ``id``) in ``pending``: a top-up keeps to each source's share."""
        per_source = Counter(f.source_id for f in pending.frames)
        return {id(s.buffer): per_source[s.source_id] for s in self._sources() if s.source_id in per_source}

    def _model_has_work(self) -> bool:
        """Files: a prepared batch waits for the model, so the batch being formed may wait to fill."""
        return not self._shutdown.abort.is_set() and self._read_ahead() > 0 and self._prepared.qsize() > 0

    def _read_ahead(self) -> int:
        live = any(s.buffer.policy is Policy.LATEST or s.buffer.max_staleness_ns for s in self._sources())
        return 0 if live else READ_AHEAD

    def _await_turn(self) -> bool:
        """Wait until the next batch should be formed; False on abort.

        Files: as soon as fewer than :data:`READ_AHEAD` prepared batches wait. Live: once the model
        has taken the last prepared batch, and then until shortly before it should be done with it
        (see :data:`_JIT_LEAD`), so the batch holds fresher frames and waits less.
        """
        limit = self._read_ahead()
        abort = self._shutdown.abort
        with self._taken:
            # files: stop at `limit` queued (a batch formed now would wait in put, holding one more
            # full batch); live: until the model has taken the last one
            while self._prepared.qsize() >= max(limit, 1):
                if abort.is_set():
                    return False
                self._taken.wait(_POLL_S)
        if limit:
            return True
        lead = 2 * self._prep_s.value + _JIT_LEAD * self._busy_s.value + _JIT_MARGIN_S
        start_at = self._busy_until - lead
        while not self._shutdown.stop.is_set():
            delay = min(start_at - time.monotonic(), _MAX_JIT_WAIT_S)
            if delay <= 0:
                break
            if abort.wait(min(delay, _POLL_S)):
                return False
        return True

    def _announce_ends(self, ended: set[str], final: bool = False) -> None:
        for s in self._sources():
            if s.source_id not in ended and (s.buffer.exhausted or final):
                ended.add(s.source_id)
                if s.error:
                    reason = "error"
                elif s.removed.is_set():
                    reason = "removed"
                else:
                    reason = "stopped" if self._shutdown.stop.is_set() else "end"
                self._put(EndOfStream(s.source_id, 0, reason, dict(s.buffer.drops)), self._prepared)

    def _discard_leftovers(self) -> None:
        for s in self._sources():
            left = len(s.buffer.pop(s.buffer.capacity))
            if left:
                s.buffer.drop("shutdown", left)
                _logger.warning("source %s: %d buffered frames dropped at shutdown", s.source_id, left)

    def _preprocess(self, batch: list[Frame]) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        x = self.runner.preprocess([f.image for f in batch])
        return x, (time.perf_counter() - t0) * 1e3

    # -- infer ------------------------------------------------------------------------------------
    def _infer_loop(self) -> None:
        self._take_threads("infer", self._infer_threads)
        self._ready.infer.set()
        abort = self._shutdown.abort
        try:
            while True:
                try:
                    item = self._prepared.get(timeout=_POLL_S)
                except queue.Empty:
                    if abort.is_set():
                        return
                    continue
                taken = time.monotonic()
                if isinstance(item, PreparedBatch):
                    self._busy_until = taken + self._busy_s.value
                    with item.lock:
                        item.taken = True
                    bell = self.batcher.bell
                    with bell:  # a top-up waiting for frames learns at once that it is too late
                        bell.notify_all()
                with self._taken:
                    self._taken.notify()
                if not isinstance(item, PreparedBatch):  # to post, in order with the batches
                    if not self._put(item, self._outputs) or item is _END:
                        return
                    continue
                forwarded = self._forward(item)
                self._busy_s.add(time.monotonic() - taken)
                if not self._put(forwarded, self._outputs):
                    return
        finally:
            self._outputs_closed = True

    def _forward(self, p: PreparedBatch) -> ForwardedBatch:
        now = time.monotonic_ns()
        waits = [(now - r) / 1e6 for r in p.ready]
        t0 = time.perf_counter()
        outputs = self.runner.forward(p.x)
        self.runner.synchronize()
        return ForwardedBatch(p.frames, outputs, p.formed, p.prep_ms, waits, (time.perf_counter() - t0) * 1e3)

    # -- post -------------------------------------------------------------------------------------
    def _post_loop(self) -> None:
        try:
            if not self._await_ready(self._ready.prep):  # after prep: it sets the global default this takes
                return
            self._take_threads("post", self.prep_threads)
            if self._low_priority:
                lower_this_thread()
            self._ready.post.set()
            abort = self._shutdown.abort
            while True:
                try:
                    item = self._outputs.get(timeout=_POLL_S)
                except queue.Empty:
                    # infer puts nothing more once it has closed (a batch put just after this get
                    # timed out is still there)
                    if abort.is_set() or (self._outputs_closed and self._outputs.empty()):
                        return
                    continue
                if isinstance(item, _End):
                    return
                if isinstance(item, EndOfStream):
                    item.frames = self.frames_out[item.source_id]
                    self._emit(item)
                    self._ends_out.add(item.source_id)  # now it may be retired (its counts are final)
                    continue
                self._emit(self._finish(item))
        finally:
            self.ended_at = time.monotonic()
            self._done.set()

    def _finish(self, b: ForwardedBatch) -> list[Result]:
        t1 = time.perf_counter()
        outputs = self.postprocess(b.outputs, [(f.height, f.width) for f in b.frames])
        post_ms = (time.perf_counter() - t1) * 1e3
        done_ns = time.monotonic_ns()
        n = len(b.frames)
        task, model, version = self.runner.meta.task, self.runner.meta_name, self.runner.model_version
        results = []
        for frame, out, formed_ns, wait_ms in zip(b.frames, outputs, b.formed, b.waits_ms, strict=True):
            timings = {
                "decode": frame.decode_ms,
                "queue": (formed_ns - frame.enqueued_ns) / 1e6,
                "preprocess": b.prep_ms,
                "wait": wait_ms,
                "infer": b.infer_ms,
                "post": post_ms,
            }
            results.append(
                Result.of(
                    frame,
                    task,
                    out,
                    timings=timings,
                    batch_size=n,
                    done_ns=done_ns,
                    model=model,
                    model_version=version,
                )
            )
            self.stages["decode"].add(frame.decode_ms)
            self.stages["queue"].add(timings["queue"])
            self.stages["wait"].add(wait_ms)
            self.frames_out[frame.source_id] += 1
        for name, ms in (("preprocess", b.prep_ms), ("infer", b.infer_ms), ("post", post_ms)):
            self.stages[name].add(ms / n, n)  # per-frame share of the batch's time
        self.batch_sizes.add(n)
        return results
