"""Prometheus metrics, liveness and readiness of a running :class:`~autotimm_stream.pipeline.Pipeline`.

Two parts fill one registry of their own (never the global one: several pipelines may share a
process). :class:`MetricsSink`, an ordinary sink, records what results carry (frames out, stage and
end-to-end latency, batch sizes, fps); :class:`PipelineCollector` reads the pipeline at scrape time
(frames decoded, drops by reason, queue depth, source states, reconnects, sink counters) with plain
attribute reads, taking no lock the hot path holds. :class:`MetricsServer` serves ``/metrics``,
``/healthz`` (503 once the pipeline failed) and ``/ready`` (200 while the model is warm and a source
runs) over HTTP, on loopback by default.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .errors import SinkError, first_line
from .frame import STAGES, FrameFlags, Result
from .sinks.base import EndOfStream, Sink
from .sinks.zmq_pub import is_loopback
from .sources.base import SourceState

__all__ = [
    "MetricsSink",
    "MetricsServer",
    "PipelineCollector",
    "readiness",
    "pipeline_error",
    "is_loopback",
    "DROP_REASONS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
]

_logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
_PREFIX = "autotimm_stream"
_POLL_S = 0.1
_CLIENT_TIMEOUT_S = 5.0  # a client that stalls mid-request cannot hold a handler thread (or close()) longer
# Reasons a frame can be dropped (see ringbuffer.py and sources/): always exported, so a rate() over
# them works before the first drop.
DROP_REASONS = ("buffer_full", "stale", "decode_error", "until_keyframe", "shutdown")
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
                    if flag and flag in r.frame.flags:
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


def pipeline_error(pipeline: Any) -> BaseException | None:
    """The error that broke ``pipeline`` (worker or sink), or None."""
    return pipeline.failure


def _state(source: Any) -> str:
    return "not started" if source.state is None else source.state.value


def readiness(pipeline: Any) -> tuple[bool, str]:
    """Whether ``pipeline`` is serving results (model warm, a source running) and, if not, why."""
    err = pipeline_error(pipeline)
    if err is not None:
        return False, f"pipeline failed: {first_line(err)}"
    if not pipeline.started_at:
        return False, "model warming up"
    if pipeline.done:
        return False, "pipeline finished"
    if pipeline.stop_event.is_set():
        return False, "pipeline stopping"
    sources = list(pipeline.sources)
    if any(s.state is SourceState.RUNNING for s in sources):
        return True, "ready"
    if not sources:
        return False, "no source (add one over the control channel)"
    return False, "; ".join(f"source {s.source_id} {_state(s)}" for s in sources)


class PipelineCollector(Collector):
    """Reads the live pipeline at scrape time (plain attribute reads, no pipeline locks)."""

    def __init__(self, pipeline: Any, sink: MetricsSink | None = None):
        self.pipeline = pipeline
        self.sink = sink

    def collect(self) -> Iterable[Metric]:
        p = self.pipeline
        current = list(p.sources)  # read before retired: a source retired in between is still seen, once
        by_id = {s.source_id: s for s in list(p.retired.values())}
        by_id.update((s.source_id, s) for s in current)
        decoded = CounterMetricFamily(f"{_PREFIX}_frames_decoded", "Frames decoded (frames in)", labels=["source"])
        dropped = CounterMetricFamily(f"{_PREFIX}_frames_dropped", "Frames dropped", labels=["source", "reason"])
        depth = GaugeMetricFamily(f"{_PREFIX}_queue_depth", "Frames waiting in the ring buffer", labels=["source"])
        capacity = GaugeMetricFamily(f"{_PREFIX}_queue_capacity", "Ring buffer capacity", labels=["source"])
        state = GaugeMetricFamily(f"{_PREFIX}_source_state", "1 for a source's state", labels=["source", "state"])
        fps = GaugeMetricFamily(f"{_PREFIX}_fps", "Results per second (recent window)", labels=["source"])
        live = {
            key: CounterMetricFamily(f"{_PREFIX}_source_{key}", doc, labels=["source"])
            for key, doc in (
                ("reconnects", "Live sessions lost after they ran"),
                ("sessions", "Live sessions opened"),
                ("failed_attempts", "Connection attempts that failed"),
            )
        }
        rates = self.sink.fps() if self.sink is not None else {}
        for sid, s in by_id.items():
            decoded.add_metric([sid], s.frames_decoded)
            drops = dict(s.buffer.drops)
            for reason in sorted({*DROP_REASONS, *drops}):
                dropped.add_metric([sid, reason], drops.get(reason, 0))
            depth.add_metric([sid], len(s.buffer))
            capacity.add_metric([sid], s.buffer.capacity)
            for st in SourceState:
                state.add_metric([sid, st.value], 1.0 if s.state is st else 0.0)
            fps.add_metric([sid], rates.get(sid, 0.0))
            if s.live:
                stats = s.stats()
                for key, family in live.items():
                    family.add_metric([sid], stats.get(key, 0))
        yield from (decoded, dropped, depth, capacity, state, fps, *live.values())
        sent = CounterMetricFamily(f"{_PREFIX}_sink_sent", "Messages a sink sent", labels=["sink"])
        lost = CounterMetricFamily(f"{_PREFIX}_sink_dropped", "Messages a sink dropped", labels=["sink"])
        for sink in p.sinks:  # attributes, not stats(): ZmqSink.stats() computes percentiles
            if isinstance(getattr(sink, "sent", None), int):
                sent.add_metric([sink.name], sink.sent)
                lost.add_metric([sink.name], getattr(sink, "dropped", 0))
        yield from (sent, lost)
        meta = p.runner.meta
        info = {"model": p.runner.meta_name, "task": meta.task, "device": str(p.runner.device)}
        yield InfoMetricFamily(f"{_PREFIX}_model", "The model being served", value=info)
        yield GaugeMetricFamily(f"{_PREFIX}_uptime_seconds", "Seconds since the pipeline started", p.elapsed_s())
        ready, _ = readiness(p)
        yield GaugeMetricFamily(f"{_PREFIX}_ready", "1 when /ready answers 200", 1.0 if ready else 0.0)


class _Handler(BaseHTTPRequestHandler):
    timeout = _CLIENT_TIMEOUT_S
    server: _HttpServer

    def do_GET(self) -> None:
        try:
            status, ctype, body = self.server.app.respond(self.path.split("?", 1)[0], self.headers.get("Accept", ""))
        except Exception as exc:  # a broken scrape must not take the server down
            _logger.exception("metrics: request %s failed", self.path)
            status, ctype, body = 500, "text/plain; charset=utf-8", f"internal error: {first_line(exc)}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("metrics: %s - %s", self.address_string(), format % args)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads (each bounded by _CLIENT_TIMEOUT_S)
    block_on_close = True

    def __init__(self, address: tuple[str, int], app: MetricsServer):
        self.app = app
        if ":" in address[0]:  # an IPv6 literal
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # the base class prints a traceback to stderr (a client that hung up mid-response, say)
        _logger.debug("metrics: request from %s failed", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup that can take seconds)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/ready`` for ``pipeline`` on ``host:port``.

    :meth:`open` binds (port 0: any free port, see :attr:`port`), :meth:`start` serves on a thread
    until :meth:`close`. Pass it to ``Pipeline.attach`` and the pipeline starts and closes it.
    """

    def __init__(self, pipeline: Any, sink: MetricsSink, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.pipeline = pipeline
        self.sink = sink
        self.host = host.strip("[]")  # "[::1]" as in a URL
        self.port = port
        self.registry = sink.registry
        self.registry.register(PipelineCollector(pipeline, sink))
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def open(self) -> None:
        """Bind now, so that a busy port fails the run before anything is written."""
        if self._httpd is not None:
            return
        if self._halt.is_set():
            raise SinkError("metrics server: closed; create a new MetricsServer")
        try:
            self._httpd = _HttpServer((self.host, self.port), self)
        except OSError as exc:
            bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            field = "metrics.host" if bad_host else "metrics.port"
            raise SinkError(
                f"{field}: cannot serve metrics on {self.host}:{self.port} ({exc.strerror or exc}); expected "
                f"a free address on this machine such as {DEFAULT_HOST}:{DEFAULT_PORT} (another engine running? "
                f"pick another port, or 0 for any free one)"
            ) from None
        self._httpd.timeout = _POLL_S
        self.port = self._httpd.server_address[1]
        if not is_loopback(self.host):
            _logger.warning("metrics on %s are reachable from other machines, unauthenticated", self.url)
        _logger.info("metrics on %s/metrics", self.url)

    def start(self) -> None:
        """Bind if needed and serve on a thread; idempotent."""
        self.open()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="metrics-http")
            self._thread.start()

    def _serve(self) -> None:
        httpd = self._httpd
        assert httpd is not None
        while not self._halt.is_set():
            httpd.handle_request()  # returns after at most _POLL_S without a request

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port; idempotent."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _logger.error("metrics server did not stop within %.1f s", timeout)
            self._thread = None
        if self._httpd is not None:
            self._httpd.server_close()
            self._httpd = None

    def respond(self, path: str, accept: str = "") -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path`` (also usable without a socket)."""
        if path == "/metrics":  # text format, or OpenMetrics when the Accept header asks for it
            encode, ctype = choose_encoder(accept)
            return 200, ctype, encode(self.registry)
        if path == "/healthz":
            err = pipeline_error(self.pipeline)
            if err is None:
                return _json(200, {"status": "ok"})
            return _json(503, {"status": "failed", "error": first_line(err)})
        if path == "/ready":
            ready, reason = readiness(self.pipeline)
            states = {s.source_id: _state(s) for s in list(self.pipeline.sources)}
            return _json(200 if ready else 503, {"ready": ready, "reason": reason, "sources": states})
        return _json(404, {"error": f"no such path {path!r}; try /metrics, /healthz or /ready"})

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
