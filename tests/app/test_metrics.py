"""The Prometheus endpoint, /healthz and /ready: real pipelines on real clips and test patterns,
scraped over real HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autotimm_stream.app import build_source, build_sources
from autotimm_stream.app.http import MetricsServer
from autotimm_stream.config import BatchPolicy, ZmqConfig, validate_config, validate_source
from autotimm_stream.errors import SinkError
from autotimm_stream.messages import Result
from autotimm_stream.net import is_loopback
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.ringbuffer import DROP_REASONS
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks import Sink, ZmqSink
from autotimm_stream.sinks.metrics import MetricsSink
from tests.helpers import free_port, wait_for

STAGES = ("decode", "queue", "preprocess", "wait", "infer", "post")
Samples = dict[tuple[str, frozenset], float]


# -- helpers -------------------------------------------------------------------------------------
def get(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


def get_json(url: str) -> tuple[int, dict]:
    status, ctype, body = get(url)
    assert ctype == "application/json"
    return status, json.loads(body)


def scrape(server: MetricsServer) -> Samples:
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def runner(bundle: Path) -> ModelRunner:
    return ModelRunner(bundle)


def make_pipeline(runner: ModelRunner, sources: list[dict], sinks: list[Sink]) -> Pipeline:
    cfg = validate_config({"sources": sources, "model": {"path": runner.path}})
    return Pipeline(build_sources(cfg), runner, sinks, BatchPolicy(max_batch=4, max_wait_ms=5))


def served(pipeline: Pipeline, sink: MetricsSink) -> MetricsServer:
    """A server on a free loopback port, wired as the app does: bound now, started and closed by the pipeline."""
    server = MetricsServer(pipeline, sink, port=0)
    server.open()
    pipeline.attach(server)
    return server


TESTSRC = {"type": "testsrc", "width": 160, "height": 120, "fps": 25}


# -- a whole run ---------------------------------------------------------------------------------
def test_a_file_run_scraped_over_http_matches_what_the_pipeline_did(clip, runner, endpoint):
    sink, zmq_sink = MetricsSink(), ZmqSink(ZmqConfig(endpoint=endpoint))
    pipeline = make_pipeline(runner, [{"id": "cam", "uri": str(clip), "buffer_size": 4}], [sink, zmq_sink])
    server = served(pipeline, sink)
    try:
        server.start()  # before the pipeline (it is idempotent): probes are answered while the model warms up
        assert get_json(server.url + "/ready") == (
            503,
            {"ready": False, "reason": "model warming up", "sources": {"cam": "not started"}},
        )
        assert get_json(server.url + "/healthz") == (200, {"status": "ok"})
        assert val(scrape(server), "autotimm_stream_ready") == 0

        pipeline.start()
        assert pipeline.wait(30)

        def delivered() -> bool:  # each sink drains its own queue after the worker is done
            m = scrape(server)
            return val(m, "autotimm_stream_frames_out_total", source="cam") == 48 and zmq_sink.sent >= 48

        wait_for(delivered, 10, "every result at the sinks")
        m = scrape(server)
        assert val(m, "autotimm_stream_frames_decoded_total", source="cam") == 48
        for reason in DROP_REASONS:
            assert val(m, "autotimm_stream_frames_dropped_total", source="cam", reason=reason) == 0
        assert val(m, "autotimm_stream_queue_depth", source="cam") == 0
        assert val(m, "autotimm_stream_queue_capacity", source="cam") == 4
        states = {st: val(m, "autotimm_stream_source_state", source="cam", state=st) for st in ("running", "stopped")}
        assert states == {"running": 0, "stopped": 1}
        for stage in STAGES:
            assert val(m, "autotimm_stream_stage_latency_seconds_count", stage=stage) == 48
            assert val(m, "autotimm_stream_stage_latency_seconds_bucket", stage=stage, le="+Inf") == 48
        assert val(m, "autotimm_stream_stage_latency_seconds_sum", stage="infer") > 0
        assert val(m, "autotimm_stream_result_latency_seconds_count", source="cam") == 48
        # one observation per forward pass, not per frame: the batch sizes add up to the frames
        assert val(m, "autotimm_stream_batch_size_count") == pipeline.worker.batch_sizes.count
        assert val(m, "autotimm_stream_batch_size_sum") == 48
        assert pipeline.worker.batch_sizes.count < 48  # batches did form (the buffer of 4 fills while the model works)
        assert val(m, "autotimm_stream_sink_sent_total", sink="zmq") >= 48
        assert val(m, "autotimm_stream_sink_dropped_total", sink="zmq") == 0
        model = {"model": runner.meta_name, "task": "classification", "device": "cpu"}
        assert val(m, "autotimm_stream_model_info", **model) == 1
        assert val(m, "autotimm_stream_uptime_seconds") > 0
        assert val(m, "autotimm_stream_source_reconnects_total", source="cam") is None  # a file does not reconnect

        status, body = get_json(server.url + "/ready")
        assert status == 503 and body["reason"] == "pipeline finished"
        assert get_json(server.url + "/nope") == (
            404,
            {"error": "no such path '/nope'; try /metrics, /healthz or /ready"},
        )
        assert get(server.url + "/metrics?name[]=x")[0] == 200  # query strings are ignored
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}  # what Prometheus asks for
        with urllib.request.urlopen(urllib.request.Request(server.url + "/metrics", headers=accept), timeout=5) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=")
            assert r.read().endswith(b"# EOF\n")
    finally:
        pipeline.close()
    assert pipeline.error is None
    with pytest.raises(urllib.error.URLError):  # closed with the pipeline
        get(server.url + "/healthz")


def test_ready_follows_live_sources_reconnecting_then_running(runner):
    sink = MetricsSink()
    down = {"id": "down", "type": "rtsp", "uri": f"rtsp://127.0.0.1:{free_port()}/x"}
    down["reconnect"] = {"initial_delay_s": 0.05, "max_delay_s": 0.1}
    pipeline = make_pipeline(runner, [down], [sink])
    server = served(pipeline, sink)
    try:
        pipeline.start()
        wait_for(lambda: get_json(server.url + "/ready")[1]["reason"] == "source down reconnecting", 10, "a retry")
        status, body = get_json(server.url + "/ready")
        assert status == 503 and body == {
            "ready": False,
            "reason": "source down reconnecting",
            "sources": {"down": "reconnecting"},
        }
        assert get_json(server.url + "/healthz") == (200, {"status": "ok"})  # alive, just not serving

        pipeline.add_source(build_source(validate_source({"id": "cam1", **TESTSRC}), pipeline.bell))
        wait_for(lambda: get(server.url + "/ready")[0] == 200, 20, "cam1 running")
        out = "autotimm_stream_frames_out_total"
        wait_for(lambda: (val(scrape(server), out, source="cam1") or 0) >= 10, 20, "cam1 results at the sink")
        status, body = get_json(server.url + "/ready")
        assert status == 200 and body["ready"] and body["sources"]["cam1"] == "running"
        m = scrape(server)
        assert val(m, "autotimm_stream_ready") == 1
        assert val(m, "autotimm_stream_source_state", source="cam1", state="running") == 1
        assert val(m, "autotimm_stream_source_sessions_total", source="cam1") == 1
        assert val(m, "autotimm_stream_source_reconnects_total", source="cam1") == 0
        assert val(m, "autotimm_stream_source_failed_attempts_total", source="down") >= 1
        assert val(m, "autotimm_stream_source_sessions_total", source="down") == 0
        assert val(m, "autotimm_stream_fps", source="cam1") > 0
        assert val(m, "autotimm_stream_fps", source="down") == 0
        assert val(m, "autotimm_stream_frames_decoded_total", source="cam1") >= val(
            m, "autotimm_stream_frames_out_total", source="cam1"
        )
        assert {r for (name, labels), _ in m.items() if name == "autotimm_stream_frames_dropped_total"
                for k, r in labels if k == "reason"} >= set(DROP_REASONS)  # fmt: skip

        pipeline.stop()
        assert pipeline.wait(10)
        status, body = get_json(server.url + "/ready")
        assert status == 503 and body["reason"] == "pipeline finished"
    finally:
        pipeline.close()
    assert pipeline.error is None


class _BrokenSink(Sink):
    name = "broken"

    def write(self, results: list[Result]) -> None:
        raise SinkError("disk full (simulated)")


@pytest.mark.parametrize("broken", ["model", "sink"])
def test_a_failure_makes_the_engine_unhealthy_and_unready(clip, runner, broken, monkeypatch):
    sink = MetricsSink()
    sinks: list[Sink] = [sink, _BrokenSink()] if broken == "sink" else [sink]
    pipeline = make_pipeline(runner, [{"id": "cam", "uri": str(clip)}], sinks)
    if broken == "model":

        def forward(x):
            raise RuntimeError("out of memory (simulated)")

        monkeypatch.setattr(pipeline.runner, "forward", forward)
    server = served(pipeline, sink)
    try:
        pipeline.start(warmup=False)
        wait_for(lambda: get(server.url + "/healthz")[0] == 503, 10, "/healthz to report the failure")
        error = "out of memory (simulated)" if broken == "model" else "disk full (simulated)"
        assert get_json(server.url + "/healthz") == (503, {"status": "failed", "error": error})
        status, body = get_json(server.url + "/ready")
        assert status == 503 and body["reason"] == f"pipeline failed: {error}"
    finally:
        pipeline.close()
    assert str(pipeline.error) == error


# -- the server ------------------------------------------------------------------------------------
@pytest.fixture
def idle(runner: ModelRunner):
    """A pipeline waiting for sources (nothing to open or close) and its metrics sink."""
    sink = MetricsSink()
    pipeline = Pipeline([], runner, [sink], persistent=True)
    yield pipeline, sink
    pipeline.close()


def test_close_is_idempotent_and_ends_the_thread(idle):
    pipeline, sink = idle
    with MetricsServer(pipeline, sink, port=0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert get_json(server.url + "/ready") == (503, {"ready": False, "reason": "model warming up", "sources": {}})
        threads = [t for t in threading.enumerate() if t.name == "metrics-http"]
        assert threads and not any(t.daemon for t in threads)
        server.start()  # again: nothing changes
    server.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(urllib.error.URLError):
        get(server.url + "/metrics")
    with pytest.raises(SinkError, match="closed"):
        server.open()


@pytest.mark.parametrize(
    "host, field",
    [("127.0.0.1", "metrics.port"), ("192.0.2.1", "metrics.host")],  # TEST-NET-1: never this machine's
)
def test_an_address_that_cannot_be_bound_is_a_clear_error(idle, host, field):
    pipeline, sink = idle
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = MetricsServer(pipeline, sink, host, port)
        with pytest.raises(SinkError, match=rf"^{field}: cannot serve metrics on {host}:{port} .*pick another port"):
            server.open()
        server.close()


def test_an_address_beyond_this_machine_is_warned_about(idle, caplog):
    pipeline, sink = idle
    caplog.set_level(logging.WARNING, logger="autotimm_stream.app.http")
    with MetricsServer(pipeline, sink, "0.0.0.0", 0) as server:
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    assert "reachable from other machines" in caplog.text


@pytest.mark.parametrize(
    "host, local",
    [("127.0.0.1", True), ("127.3.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True)]
    + [("0.0.0.0", False), ("", False), ("::", False), ("10.1.2.3", False), ("example.org", False)],
)
def test_loopback_hosts_are_recognised(host, local):
    assert is_loopback(host) is local
