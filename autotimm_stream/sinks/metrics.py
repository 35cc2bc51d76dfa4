"""Prometheus metrics of what results carry: frames out, stage and end-to-end latency, batch sizes, fps.

:class:`MetricsSink` is an ordinary sink filling a registry of its own (never the global one:
several pipelines may share a process). The HTTP server that exposes it, with what the pipeline
knows at scrape time (sources, drops, states), is :mod:`autotimm_stream.app.http`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..frame import FrameFlags
from ..messages import STAGES, EndOfStream, Result
from .base import Sink

__all__ = ["MetricsSink", "METRIC_PREFIX"]

METRIC_PREFIX = "autotimm_stream"
_PREFIX = METRIC_PREFIX
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class MetricsSink(Sink):
    """Records per-result metrics into :attr:`registry`; fps over the last ``fps_window_s`` seconds.

    Stage histograms hold the latency each frame saw: a batch stage (preprocess, wait, infer,
    post) observes the whole batch's duration once per frame, so each count equals frames out.
    """

    name = "metrics"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        fps_window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if fps_window_s <= 0:
            raise ValueError(f"fps_window_s must be > 0, got {fps_window_s}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.fps_window_s = fps_window_s
        self._clock = clock
        reg = self.registry
        self.frames_out = Counter(f"{_PREFIX}_frames_out", "Results delivered to the sinks", ["source"], registry=reg)
        doc = "Time each frame spent in one stage (batch stages: the batch's duration)"
        self.stage_seconds = Histogram(
            f"{_PREFIX}_stage_latency_seconds", doc, ["stage"], buckets=_STAGE_BUCKETS, registry=reg
        )
        self._stages = {s: self.stage_seconds.labels(s) for s in STAGES if s != "publish"}
        doc = "From a frame leaving the decoder to its result reaching the sinks"
        self.latency_seconds = Histogram(
            f"{_PREFIX}_result_latency_seconds", doc, ["source"], buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.batch_size = Histogram(
            f"{_PREFIX}_batch_size", "Frames per forward pass", buckets=_BATCH_BUCKETS, registry=reg
        )
        self.detections = Counter(f"{_PREFIX}_detections", "Objects detected", ["source"], registry=reg)
        doc = "Results of frames flagged corrupt or after_gap"
        self.flagged = Counter(f"{_PREFIX}_frames_flagged", doc, ["source", "flag"], registry=reg)
        self._lock = threading.Lock()  # guards the fps windows (sink thread vs scrape thread)
        self._recent: dict[str, collections.deque[tuple[float, int]]] = {}
        self._first_seen: dict[str, float] = {}

    def write(self, results: list[Result]) -> None:
        now = self._clock()
        wall_ns = time.time_ns()
        per_source: collections.Counter[str] = collections.Counter()
        batches: dict[int, int] = {}  # done_ns -> batch size: one forward pass shares both
        for r in results:
            sid = r.frame.source_id
            per_source[sid] += 1
            batches[r.done_ns] = r.batch_size
            for stage, ms in r.timings.items():
                hist = self._stages.get(stage)
                if hist is not None:
                    hist.observe(ms / 1e3)
            self.latency_seconds.labels(sid).observe(max(0.0, (wall_ns - r.frame.capture_ns) / 1e9))
            if r.detections:
                self.detections.labels(sid).inc(len(r.detections))
            if r.frame.flags:
                for flag in FrameFlags:
                    if flag and flag.name and flag in r.frame.flags:
                        self.flagged.labels(sid, flag.name.lower()).inc()
        for size in batches.values():
            self.batch_size.observe(size)
        with self._lock:
            for sid, n in per_source.items():
                self.frames_out.labels(sid).inc(n)
                self._first_seen.setdefault(sid, now)
                self._recent.setdefault(sid, collections.deque()).append((now, n))
                self._trim(self._recent[sid], now)

    def end_of_stream(self, eos: EndOfStream) -> None:
        with self._lock:  # its rate is 0 from now on, not a decaying tail
            self._recent.pop(eos.source_id, None)
            self._first_seen.pop(eos.source_id, None)

    def _trim(self, recent: collections.deque[tuple[float, int]], now: float) -> None:
        while recent and recent[0][0] <= now - self.fps_window_s:
            recent.popleft()

    def fps(self) -> dict[str, float]:
        """Results per second per source over the window (shorter while a source is young, >= 1 s)."""
        now = self._clock()
        out = {}
        with self._lock:
            for sid, recent in self._recent.items():
                self._trim(recent, now)
                span = min(self.fps_window_s, max(1.0, now - self._first_seen[sid]))
                out[sid] = sum(n for _, n in recent) / span
        return out
