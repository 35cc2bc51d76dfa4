"""The HTTP side of a running pipeline: Prometheus ``/metrics``, liveness ``/healthz`` and readiness ``/ready``.

One registry per pipeline (never the global one: several pipelines may share a process): the
:class:`~autotimm_stream.sinks.metrics.MetricsSink` records what results carry; at scrape time
:class:`PipelineCollector` adds what the run statistics say (frames decoded, drops by reason, queue
depth, source states, reconnects, sink counters). :class:`MetricsServer` serves ``/metrics``,
``/healthz`` (503 once the pipeline failed) and ``/ready`` (200 while the model is warm and a source
runs), on loopback by default.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..errors import SinkError, first_line
from ..messages import SourceState
from ..net import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT, is_loopback
from ..ringbuffer import DROP_REASONS
from ..sinks.metrics import METRIC_PREFIX, MetricsSink
from ..stats import PipelineStats

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["MetricsServer", "PipelineCollector", "readiness"]

_logger = logging.getLogger(__name__)

_PREFIX = METRIC_PREFIX
_POLL_S = 0.1
_CLIENT_TIMEOUT_S = 5.0  # a client that stalls mid-request cannot hold a handler thread (or close()) longer


def readiness(stats: PipelineStats) -> tuple[bool, str]:
    """Whether the pipeline is serving results (model warm, a source running) and, if not, why."""
    if stats.failure is not None:
        return False, f"pipeline failed: {stats.failure}"
    if not stats.started:
        return False, "model warming up"
    if stats.done:
        return False, "pipeline finished"
    if stats.stopping:
        return False, "pipeline stopping"
    current = stats.current_sources
    if any(s.state == SourceState.RUNNING.value for s in current):
        return True, "ready"
    if not current:
        return False, "no source (add one over the control channel)"
    return False, "; ".join(f"source {s.source_id} {s.state or 'not started'}" for s in current)


class PipelineCollector(Collector):
    """Adds the pipeline's run statistics to a scrape (a snapshot without percentiles: no lock of the hot path)."""

    def __init__(self, pipeline: Pipeline, sink: MetricsSink | None = None):
        self.pipeline = pipeline
        self.sink = sink

    def collect(self) -> Iterable[Metric]:
        p = self.pipeline
        stats = p.stats(detail=False)
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
        for sid, s in stats.sources.items():
            decoded.add_metric([sid], s.frames_decoded)
            for reason in sorted({*DROP_REASONS, *s.drops}):
                dropped.add_metric([sid, reason], s.drops.get(reason, 0))
            depth.add_metric([sid], s.queue_depth)
            capacity.add_metric([sid], s.queue_capacity)
            for st in SourceState:
                state.add_metric([sid, st.value], 1.0 if s.state == st.value else 0.0)
            fps.add_metric([sid], rates.get(sid, 0.0))
            if s.live is not None:
                live["reconnects"].add_metric([sid], s.live.reconnects)
                live["sessions"].add_metric([sid], s.live.sessions)
                live["failed_attempts"].add_metric([sid], s.live.failed_attempts)
        yield from (decoded, dropped, depth, capacity, state, fps, *live.values())
        sent = CounterMetricFamily(f"{_PREFIX}_sink_sent", "Messages a sink sent", labels=["sink"])
        lost = CounterMetricFamily(f"{_PREFIX}_sink_dropped", "Messages a sink dropped", labels=["sink"])
        for sink in p.sinks:  # its counters, not stats(): the ZeroMQ sink's computes percentiles
            counted = getattr(sink, "sent", None)
            if isinstance(counted, int):
                sent.add_metric([sink.name], counted)
                lost.add_metric([sink.name], getattr(sink, "dropped", 0))
        yield from (sent, lost)
        info = {"model": p.runner.meta_name, "task": p.runner.meta.task.value, "device": str(p.runner.device)}
        yield InfoMetricFamily(f"{_PREFIX}_model", "The model being served", value=info)
        yield GaugeMetricFamily(f"{_PREFIX}_uptime_seconds", "Seconds since the pipeline started", stats.elapsed_s)
        ready, _ = readiness(stats)
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
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/ready`` for ``pipeline`` on ``host:port``.

    :meth:`open` binds (port 0: any free port, see :attr:`port`), :meth:`start` serves on a thread
    until :meth:`close`. Pass it to ``Pipeline.attach`` and the pipeline starts and closes it.
    """

    def __init__(
        self, pipeline: Pipeline, sink: MetricsSink, host: str = DEFAULT_METRICS_HOST, port: int = DEFAULT_METRICS_PORT
    ):
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
                f"a free address on this machine such as {DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT} (another engine running? "
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
            failure = self.pipeline.stats(detail=False).failure
            if failure is None:
                return _json(200, {"status": "ok"})
            return _json(503, {"status": "failed", "error": failure})
        if path == "/ready":
            stats = self.pipeline.stats(detail=False)
            ready, reason = readiness(stats)
            states = {s.source_id: s.state or "not started" for s in stats.current_sources}
            return _json(200 if ready else 503, {"ready": ready, "reason": reason, "sources": states})
        return _json(404, {"error": f"no such path {path!r}; try /metrics, /healthz or /ready"})

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
