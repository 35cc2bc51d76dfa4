"""Live RTSP streams against a model slower than their sum: bounded latency, drops, capacity.

Real RTSP streams (:mod:`autotimm_stream.testing.rtsp`: GStreamer's gst-rtsp-server under
``/usr/bin/python3``, a moving-ball test pattern encoded live with x264 ``ultrafast``/``zerolatency``,
default 640x360 at 25 fps, one server process per stream, all on 127.0.0.1) feed the real engine
(:func:`build_pipeline` on a validated config): ``rtsp`` sources over TCP with ``policy: latest``,
``buffer_size: 4``, ``max_staleness_ms: 500``; ``max_batch: 8``, ``max_wait_ms: 20``,
``max_frames_per_source: 2``; the ZMQ sink on a free 127.0.0.1 port with one subscriber (the
benchmark, on its own thread), JSONL and video sinks off. The model is a ``resnet18`` bundle at 224
with 1000 classes and random weights (speed does not depend on them).

The building blocks (:func:`run_live`, :func:`sweep`, :func:`model_only_fps`, :class:`ServerPool`)
serve the suite's live sections (``live_sections.py``). :func:`overload_and_sweeps` is the
single-purpose measurement ``--only overload,sweep``, in this order:

1. **model-only fps** at batch 8: ``runner.forward(x)`` on a fresh :class:`ModelRunner`, on a
   separate thread (as the engine's ``worker-infer`` thread calls it), frames preprocessed
   beforehand; median of 3 rounds. Batches of 1, 2 and 4 are timed too, interleaved with those
   rounds (with ``max_frames_per_source: 2``, N streams never fill more than 2N slots of a batch).
   Measured again, batch 8 only, after the live runs: the machine's speed drifts.
2. **overload** (``overload``): N streams (default ``ceil(1.5 * model_fps / stream_fps) + 1``, at
   least 2), so the model is clearly slower than their sum. The clock starts when every source is
   RUNNING and runs for ``seconds``. Per stream: fps in (``frames_decoded`` / seconds), fps out
   (results / seconds), drops by reason, all as differences of the pipeline summary taken at
   the start and end of that interval. Latency is the published ``latency_ms`` of every result
   received in the interval (capture = the frame leaving the decoder, to publish on ZMQ):
   p50/p95/p99 overall and per 5-second window (by publish time), the least-squares slope of
   latency against time (ms per minute), and last-window p95 / first-window p95. Latency must
   stay bounded while frames are dropped, not grow with a backlog. Because a loaded machine slows
   the forward pass and so every latency, each window's latency is also given in units of that
   window's mean batch forward time (the headers' ``infer``); the verdict "bounded" is: in those
   units, last-window p95 <= 1.5 x first-window p95 and the fitted growth of the per-window p50
   over the run <= half their median. The mean of each header stage is reported too, with
   ``not_in_timings`` = latency minus the stages the header lists after capture.
3. **capacity sweep** (``sweep``), for each stream rate: the largest N of streams that the
   engine sustains with < 1 % drops (drops / frames decoded over ``sweep_seconds`` after a
   ``sweep_warmup`` once every source is RUNNING). N starts at half the theoretical limit
   ``model_fps / stream_fps`` (at least 1) and goes up until a step fails, or down until one
   passes. A failing step is run a second time before it counts (one noisy window must not
   decide), and a third time when a failed try shared the machine with other work (other
   processes busy > 0.25 core). A step also fails when a stream reconnected. Every try is
   reported with its drop rate, next to the theoretical limit.

The RTSP servers run on the same cores as the engine (each ~0.1 core at 640x360/25 fps), and so
does decoding: the figures are what the engine gets on this machine with the cameras local,
which is less than the model alone would allow. Each measurement records the cores used by this
process, by the RTSP servers and by everything else (``/proc``), and the load average.

Everything goes to ``<out>/live.json``; Markdown tables are printed. Needs ``/usr/bin/python3``
with GStreamer's RTSP server bindings (``autotimm_stream.testing.rtsp.rtsp_missing()`` says which
packages are missing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from autotimm_stream.app import build_pipeline
from autotimm_stream.config import validate_config
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.testing.rtsp import RtspServer, free_port

from .common import machine_info, write_report
from .cpumeter import CpuMeter
from .inputs import ensure_bundle

_logger = logging.getLogger("benchmarks.live")

BATCH = 8
WINDOW_S = 5.0  # latency-over-time window
DROP_LIMIT = 0.01  # a sweep step passes below 1 % drops
RUNNING_TIMEOUT_S = 30.0  # every source must be RUNNING by then
MAX_SWEEP_N = 32
DISTURBED_CORES = 0.25  # other processes used more than this many cores: the try ran on a loaded machine
# latency is "bounded" when, in units of each window's batch forward time, the last window's p95 is
# <= 1.5 x the first window's and the fitted growth of the windows' p50 over the run is <= half their median
BOUNDED_RATIO = 1.5
BOUNDED_GROWTH = 0.5
HEADER_STAGES = ("decode", "queue", "preprocess", "wait", "infer", "post", "publish")  # the header's timings_ms
SOURCE_DEFAULTS = {"policy": "latest", "buffer_size": 4, "max_staleness_ms": 500}
HIST_MS = 30_000  # the soak's latency histogram: 1-ms bins up to 30 s (later results count in the last)
BATCHING = {"max_batch": BATCH, "max_wait_ms": 20, "max_frames_per_source": 2}


# -- model only ------------------------------------------------------------------------------------
def model_only_fps(
    bundle: Path, width: int, height: int, seconds: float, rounds: int = 3, other_batches: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Batch-``BATCH`` forward passes on a fresh runner, on a separate thread: the median of ``rounds``
    rounds of ``seconds / rounds`` each. Each round is followed by half as long at every size of
    ``other_batches`` (interleaved, so a slow patch of the machine hits every size alike)."""
    box: dict[str, Any] = {}

    def timed(runner: ModelRunner, x: torch.Tensor, span: float, batch_ms: list[float]) -> float:
        n, t_start = 0, time.perf_counter()
        while time.perf_counter() - t_start < span or n < 3:
            t0 = time.perf_counter()
            runner.forward(x)
            batch_ms.append((time.perf_counter() - t0) * 1e3)
            n += 1
        return n * x.shape[0] / (time.perf_counter() - t_start)

    def target() -> None:
        try:
            runner = ModelRunner(bundle, device="cpu")
            runner.warmup(tuple(sorted({1, BATCH, *other_batches})))
            frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
            x = runner.preprocess([frame] * BATCH)
            batch_ms: list[float] = []
            runs: dict[int, list[float]] = {b: [] for b in (BATCH, *other_batches)}
            for _ in range(rounds):
                runs[BATCH].append(timed(runner, x, seconds / rounds, batch_ms))
                for b in other_batches:
                    runs[b].append(timed(runner, x[:b], seconds / rounds / 2, []))
            by_batch = {b: round(statistics.median(v), 2) for b, v in sorted(runs.items())}
            box["result"] = {
                "fps": by_batch[BATCH],
                "fps_runs": [round(v, 2) for v in runs[BATCH]],
                "batch_ms_p50": round(statistics.median(batch_ms), 2),
                "batches": len(batch_ms),
                "fps_by_batch": by_batch,
                "thread": "separate thread (as the engine's worker-infer)",
            }
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    meter = CpuMeter()
    t = threading.Thread(target=target, name="bench-model-only")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    box["result"]["cpu"] = meter.stop()
    return box["result"]


# -- RTSP servers ----------------------------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class ServerPool:
    """RTSP servers kept across runs (an idle server encodes nothing), started from the main thread."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._servers: dict[int, list[RtspServer]] = {}

    def get(self, n: int, fps: int) -> list[RtspServer]:
        """``n`` running servers at ``fps``, starting the missing ones."""
        have = self._servers.setdefault(fps, [])
        while len(have) < n:
            server = RtspServer(self.width, self.height, fps)
            have.append(server)  # before start: close() reaches it even if start fails halfway
            server.start()
            _logger.info("rtsp server %d (%d fps) at %s", len(have), fps, server.url)
        for s in have[:n]:
            if not s.running:
                raise RuntimeError(f"RTSP server {s.url} died (exit {s.returncode}): {s.stderr().strip()[-500:]}")
        return have[:n]

    def close(self) -> None:
        for servers in self._servers.values():
            for s in servers:
                s.close()
        self._servers.clear()


# -- results from ZMQ ------------------------------------------------------------------------------
class Collector:
    """A SUB socket on its own thread keeping what the benchmark needs from every result header.

    With ``keep_samples=False`` (the soak) nothing grows with the run: only a histogram of
    capture -> publish latency in 1-ms bins (:data:`HIST_MS` of them) for results published inside
    ``window`` (ns, set by the caller). The collector shares the engine's process, and a soak that
    kept every header measured its own list: ~1 KB per result, 17 MB over 10 min at 27 results/s.
    """

    def __init__(self, endpoint: str, keep_samples: bool = True) -> None:
        self.samples: list[tuple[int, int, float, str, int, dict[str, float]]] = []
        self.keep_samples = keep_samples
        self.hist = np.zeros(HIST_MS, np.int64)  # touched pages only: at most HIST_MS * 8 bytes
        self.hist_max_ms = 0.0
        self.window = [2**63 - 1, 2**63 - 1]  # publish_ns range counted in ``hist`` (the caller opens it)
        self.other: dict[str, int] = {}  # status/heartbeat/eos messages seen, by topic prefix
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._main, name="bench-sub")
        self._thread.start()

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100, zmq.POLLIN):
                    continue
                while True:
                    try:
                        parts = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    topic = parts[0].decode()
                    kind = topic.split("/", 1)[0]
                    if kind in ("status", "eos", "heartbeat"):
                        self.other[kind] = self.other.get(kind, 0) + 1
                        continue
                    h = json.loads(parts[1])
                    if not self.keep_samples:
                        if self.window[0] <= h["publish_ns"] < self.window[1]:
                            self.hist[min(int(h["latency_ms"]), HIST_MS - 1)] += 1
                            self.hist_max_ms = max(self.hist_max_ms, h["latency_ms"])
                        continue
                    self.samples.append(
                        (h["publish_ns"], h["capture_ns"], h["latency_ms"], h["source_id"], h["batch_size"],
                         h["timings_ms"])
                    )  # fmt: skip
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close(0)


# -- one live run ----------------------------------------------------------------------------------
def engine_config(urls: list[str], bundle: Path, endpoint: str, out_dir: Path) -> dict[str, Any]:
    return {
        "sources": [{"id": f"s{i}", "type": "rtsp", "uri": u, **SOURCE_DEFAULTS} for i, u in enumerate(urls)],
        "model": {"path": str(bundle), "device": "cpu"},
        "batching": dict(BATCHING),
        "sinks": {
            "zmq": {"endpoint": endpoint, "wait_subscribers": 1},
            "jsonl": {"enabled": False},
            "video": {"enabled": False},
        },
        "output_dir": str(out_dir),
    }


def _wait_running(pipeline: Any, ids: list[str], timeout: float) -> float:
    """Seconds until every source is RUNNING; raises when one is not by ``timeout``."""
    t0 = time.monotonic()
    while True:
        states = {k: v["state"] for k, v in pipeline.summary()["sources"].items()}
        if all(states.get(i) == "running" for i in ids):
            return time.monotonic() - t0
        if pipeline.done or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"sources not all RUNNING after {time.monotonic() - t0:.1f} s: {states}")
        time.sleep(0.05)


def _sleep_watching(pipeline: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if pipeline.done:
            raise RuntimeError(f"the engine stopped during the measurement: {pipeline.error}")
        time.sleep(min(left, 0.25))


def _sleep_sampling(pipeline: Any, seconds: float, pids: list[int]) -> list[dict[str, float]]:
    """Sleep ``seconds`` (watching the engine); the cores busy in each ``WINDOW_S`` window of it."""
    out = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0.01:
        meter, srv0, t0 = CpuMeter(), sum(_proc_cpu_s(p) for p in pids), time.monotonic()
        _sleep_watching(pipeline, min(WINDOW_S, left))
        cpu = meter.stop()
        srv = (sum(_proc_cpu_s(p) for p in pids) - srv0) / max(time.monotonic() - t0, 1e-9)
        out.append(
            {"own_cores": cpu["own_cores"], "servers_cores": round(srv, 2),
             "others_cores": round(max(0.0, cpu["others_cores"] - srv), 2)}
        )  # fmt: skip
    return out


def _hist_pct(hist: np.ndarray, max_ms: float) -> dict[str, float]:
    """:func:`_pct` from a histogram of 1-ms bins (each percentile is its bin's middle)."""
    n = int(hist.sum())
    if not n:
        return _pct([])
    cum = np.cumsum(hist)
    p50, p95, p99 = (float(np.searchsorted(cum, q * n)) + 0.5 for q in (0.50, 0.95, 0.99))
    return {"count": n, "p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1), "max": round(max_ms, 1)}


def _pct(values: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "count": int(a.size),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(a.max()), 1),
    }


def latency_report(samples: list[tuple], w0: int, w1: int, cpu_windows: list[dict[str, float]]) -> dict[str, Any]:
    """Latency overall, per ``WINDOW_S`` window of publish time, and its trend, for [w0, w1) (ns).

    On a shared machine the forward pass itself slows down when other processes take the cores,
    and every latency grows with it. So each window also gives its latency in units of that
    window's mean batch forward time (``infer``): a backlog that builds up grows in those units
    too, a slower machine does not. The verdict uses those units; the raw figures are reported.
    """
    inside = [s for s in samples if w0 <= s[0] < w1]
    t = np.array([(s[0] - w0) / 1e9 for s in inside])
    lat = np.array([s[2] for s in inside])
    duration = (w1 - w0) / 1e9
    # what the published timings_ms leave out: capture -> publish minus the stages it lists (decode
    # happens before capture_ns); in this engine, the wait of a prepared batch for the model
    hidden = np.array([s[2] - sum(s[5].get(k, 0.0) for k in HEADER_STAGES[1:]) for s in inside])
    infer = np.array([s[5].get("infer", 0.0) for s in inside])
    windows = []
    for k in range(math.ceil(duration / WINDOW_S - 1e-9)):
        lo, hi = k * WINDOW_S, min((k + 1) * WINDOW_S, duration)
        if hi - lo < WINDOW_S / 2:  # a sliver left over at the end (sleep overshoot)
            continue
        sel = (t >= lo) & (t < hi)
        w: dict[str, Any] = {"from_s": round(lo, 1), "to_s": round(hi, 1), **_pct(lat[sel])}
        inf = float(infer[sel].mean()) if sel.any() else 0.0
        w["infer_batch_ms_mean"] = round(inf, 1)
        w["p50_in_batches"] = round(w["p50"] / inf, 2) if inf else None
        w["p95_in_batches"] = round(w["p95"] / inf, 2) if inf else None
        if k < len(cpu_windows):
            w["cpu"] = cpu_windows[k]
        windows.append(w)
    full = [w for w in windows if w["count"] and w["p95_in_batches"]]
    overall = _pct(lat)
    slope = float(np.polyfit(t, lat, 1)[0]) * 60 if t.size > 2 else 0.0  # ms per minute
    growth = slope * duration / 60  # what the fitted line adds over the run, ms
    raw_ratio = round(full[-1]["p95"] / full[0]["p95"], 3) if len(full) >= 2 else None
    # the same in units of the batch forward time, over the windows
    if len(full) >= 2:
        mid = np.array([(w["from_s"] + w["to_s"]) / 2 for w in full])
        p50b = np.array([w["p50_in_batches"] for w in full])
        norm_slope = float(np.polyfit(mid, p50b, 1)[0]) * 60 if len(full) > 2 else 0.0
        norm_growth = norm_slope * duration / 60
        norm_ratio = round(full[-1]["p95_in_batches"] / full[0]["p95_in_batches"], 3)
        bounded = norm_ratio <= BOUNDED_RATIO and norm_growth <= BOUNDED_GROWTH * float(np.median(p50b))
    else:
        norm_slope = norm_growth = 0.0
        norm_ratio, bounded = None, False
    stages = {}
    for name in HEADER_STAGES:
        vals = [s[5].get(name, 0.0) for s in inside]
        stages[name] = round(float(np.mean(vals)), 2) if vals else 0.0
    stages["not_in_timings"] = round(float(hidden.mean()), 2) if hidden.size else 0.0
    return {
        "overall_ms": overall,
        "windows": windows,
        "slope_ms_per_min": round(slope, 2),
        "fitted_growth_ms": round(growth, 1),
        "last_over_first_p95": raw_ratio,
        "in_batches": {
            "slope_per_min": round(norm_slope, 3),
            "fitted_growth": round(norm_growth, 3),
            "last_over_first_p95": norm_ratio,
        },
        "bounded": bounded,
        "stages_mean_ms": stages,
        "batch_size_mean": round(float(np.mean([s[4] for s in inside])), 2) if inside else 0.0,
    }


def run_live(
    servers: list[RtspServer], bundle: Path, out_dir: Path, seconds: float, warmup_s: float, samples: bool = True
) -> dict[str, Any]:
    """One engine run on ``servers``; measured for ``seconds`` from ``warmup_s`` after all are RUNNING.

    ``samples=False`` (the soak): latency percentiles from a fixed-size histogram, no windows or
    per-stage figures, so the process's memory measures the engine, not the benchmark.
    """
    ids = [f"s{i}" for i in range(len(servers))]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = validate_config(engine_config([s.url for s in servers], bundle, endpoint, out_dir), origin="benchmark")
    collector = Collector(endpoint, keep_samples=samples)  # connects before the sink binds: ZMQ retries until it does
    pipeline = None
    try:
        pipeline = build_pipeline(cfg)
        t_start = time.monotonic()
        pipeline.start()
        startup_s = time.monotonic() - t_start
        to_running = _wait_running(pipeline, ids, RUNNING_TIMEOUT_S)
        if warmup_s:
            _sleep_watching(pipeline, warmup_s)
        pids = [s.proc.pid for s in servers if s.proc is not None]
        srv0 = sum(_proc_cpu_s(p) for p in pids)
        meter, snap0, w0, m0 = CpuMeter(), pipeline.summary(), time.time_ns(), time.monotonic()
        collector.window[0] = w0
        cpu_windows = _sleep_sampling(pipeline, seconds, pids)
        snap1, w1, m1, cpu = pipeline.summary(), time.time_ns(), time.monotonic(), meter.stop()
        collector.window[1] = w1
        srv_cores = (sum(_proc_cpu_s(p) for p in pids) - srv0) / (m1 - m0)
    finally:
        if pipeline is not None:
            pipeline.stop()
            pipeline.wait(10)
            pipeline.close()
        collector.close()
    final = pipeline.summary()
    if final.get("error"):
        raise RuntimeError(f"engine run failed: {final['error']}")
    if collector.error is not None:
        raise RuntimeError(f"ZMQ subscriber failed: {collector.error}")
    elapsed = (m1 - m0) or 1e-9
    cpu["servers_cores"] = round(srv_cores, 2)
    cpu["others_cores"] = round(max(0.0, cpu["others_cores"] - srv_cores), 2)  # the servers counted apart
    streams = {}
    for i in ids:
        a, b = snap0["sources"][i], snap1["sources"][i]
        reasons = sorted(set(a["drops"]) | set(b["drops"]))
        drops = {r: b["drops"].get(r, 0) - a["drops"].get(r, 0) for r in reasons}
        decoded = b["frames_decoded"] - a["frames_decoded"]
        fin = final["sources"][i]
        lost = sum(v for r, v in fin["drops"].items() if r != "decode_error")  # decode errors never count as decoded
        streams[i] = {
            "fps_in": round(decoded / elapsed, 2),
            "fps_out": round((b["frames_out"] - a["frames_out"]) / elapsed, 2),
            "frames_decoded": decoded,
            "frames_out": b["frames_out"] - a["frames_out"],
            "drops": {r: v for r, v in drops.items() if v},
            "drop_rate": round(sum(drops.values()) / decoded, 4) if decoded else None,
            "state_end": b["state"],
            "reconnects": b.get("reconnects", 0),
            "run_total": {
                "frames_decoded": fin["frames_decoded"],
                "frames_out": fin["frames_out"],
                "drops": fin["drops"],
                # every decoded frame is either a result or a counted drop once the engine has closed
                "accounted": fin["frames_decoded"] == fin["frames_out"] + lost,
            },
        }
    decoded = sum(s["frames_decoded"] for s in streams.values())
    dropped = sum(sum(s["drops"].values()) for s in streams.values())
    return {
        "streams": len(servers),
        "stream_fps": servers[0].fps,
        "seconds": round(elapsed, 2),
        "startup_s": round(startup_s, 2),
        "window_monotonic": (m0, m1),  # the measured span (time.monotonic), before the engine stops
        "to_running_s": round(to_running, 2),
        "warmup_s": warmup_s,
        "per_stream": streams,
        "fps_in": round(decoded / elapsed, 2),
        "fps_out": round(sum(s["frames_out"] for s in streams.values()) / elapsed, 2),
        "drop_rate": round(dropped / decoded, 4) if decoded else None,
        "drops": _sum_drops(streams.values()),
        "latency": (
            latency_report(collector.samples, w0, w1, cpu_windows)
            if samples
            else {"overall_ms": _hist_pct(collector.hist, collector.hist_max_ms)}
        ),
        "results_received": (
            sum(1 for s in collector.samples if w0 <= s[0] < w1) if samples else int(collector.hist.sum())
        ),
        "cpu": cpu,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "zmq": final["sinks"]["zmq"]["sent"],
        "zmq_dropped": final["sinks"]["zmq"]["dropped"],
        "torch_threads": final["torch_threads"],
    }


def _sum_drops(streams: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in streams:
        for r, v in s["drops"].items():
            total[r] = total.get(r, 0) + v
    return total


# -- capacity sweep --------------------------------------------------------------------------------
def try_record(n: int, k: int, r: dict[str, Any]) -> dict[str, Any]:
    """One capacity try (a :func:`run_live` result): passes with < ``DROP_LIMIT`` drops and no stream
    that reconnected or left RUNNING."""
    passed = r["drop_rate"] is not None and r["drop_rate"] < DROP_LIMIT
    passed = passed and all(s["state_end"] == "running" and not s["reconnects"] for s in r["per_stream"].values())
    return {
        "n": n,
        "try": k,
        "pass": passed,
        "drop_rate": r["drop_rate"],
        "drops": r["drops"],
        "fps_in": r["fps_in"],
        "fps_out": r["fps_out"],
        "latency_ms": r["latency"]["overall_ms"],
        "cpu": r["cpu"],
        "seconds": r["seconds"],
        "disturbed": r["cpu"]["others_cores"] > DISTURBED_CORES,
        "batch_size_mean": r["latency"]["batch_size_mean"],
    }


def sweep(
    pool: ServerPool,
    bundle: Path,
    out: Path,
    fps: int,
    model_fps: float,
    seconds: float,
    warmup: float,
    start: int | None = None,
) -> dict[str, Any]:
    """Largest N of ``fps`` streams with < ``DROP_LIMIT`` drops; every try is kept.

    Each try measures ``seconds`` after ``warmup`` once every source is RUNNING; N starts at
    ``start`` (default: half the limit ``model_fps / fps``, at least 1).
    """
    limit = model_fps / fps
    start = start or max(1, math.floor(limit / 2))
    tries: list[dict[str, Any]] = []

    def attempt(n: int) -> bool:
        # a failing step runs twice (one noisy window must not decide), three times when a failed
        # try shared the machine with other work
        for k in (1, 2, 3):
            if k == 3 and not any(t["disturbed"] for t in tries if t["n"] == n):
                break
            _logger.info("sweep %d fps: N=%d (try %d)", fps, n, k)
            r = run_live(pool.get(n, fps), bundle, out / "live_run", seconds, warmup)
            tries.append(try_record(n, k, r))
            passed = tries[-1]["pass"]
            _logger.info(
                "sweep %d fps: N=%d drops %.2f %% (%s), fps in %.1f out %.1f, latency p95 %.0f ms -> %s",
                fps,
                n,
                100 * (r["drop_rate"] or 0),
                r["drops"],
                r["fps_in"],
                r["fps_out"],
                r["latency"]["overall_ms"]["p95"],
                "pass" if passed else "fail",
            )
            if passed:
                break
        return passed

    n = start
    if attempt(n):
        while n < MAX_SWEEP_N and attempt(n + 1):
            n += 1
        capacity = n
    else:
        while n > 1 and not attempt(n - 1):
            n -= 1
        capacity = n - 1 if n > 1 else 0
    return {
        "stream_fps": fps,
        "capacity": capacity,
        "theoretical_limit": round(limit, 2),
        "capacity_over_limit": round(capacity / limit, 3) if limit else None,
        "model_fps": model_fps,
        "start": start,
        "tries": tries,
    }


# -- reporting -------------------------------------------------------------------------------------
def print_report(report: dict[str, Any]) -> None:
    """Markdown tables on stdout."""
    m, p, r = report["machine"], report["params"], report["results"]
    mo = r["model_only"]
    print(
        f"machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} cpus usable, torch {m['torch']} "
        f"({m['torch_threads']} threads), av {m['pyav']}, load avg {m['loadavg_start']} -> {m['loadavg_end']}"
    )
    print(
        f"model: {p['model']}@{p['image_size']} (random weights), streams {p['width']}x{p['height']}; "
        f"model-only batch {BATCH}: {mo['before']['fps']:.1f} fps before, {mo['after']['fps']:.1f} fps after "
        f"(separate thread); by batch size (before): "
        + ", ".join(f"{b}: {v:.1f}" for b, v in mo["before"]["fps_by_batch"].items())
        + "\n"
    )
    ov = r.get("overload")
    if ov:
        lat = ov["latency"]
        print(
            f"### overload: {ov['streams']} streams x {ov['stream_fps']} fps = {ov['streams'] * ov['stream_fps']} fps "
            f"offered, model-only {mo['before']['fps']:.1f} fps, {ov['seconds']:.0f} s\n"
        )
        print("| stream | fps in | fps out | drops (reason: frames) | drop % |")
        print("|---|---:|---:|---|---:|")
        for sid, s in ov["per_stream"].items():
            drops = ", ".join(f"{k}: {v}" for k, v in s["drops"].items()) or "none"
            print(f"| {sid} | {s['fps_in']:.1f} | {s['fps_out']:.1f} | {drops} | {100 * (s['drop_rate'] or 0):.1f} |")
        drops = ", ".join(f"{k}: {v}" for k, v in ov["drops"].items()) or "none"
        print(f"| all | {ov['fps_in']:.1f} | {ov['fps_out']:.1f} | {drops} | {100 * (ov['drop_rate'] or 0):.1f} |")
        o = lat["overall_ms"]
        print(
            f"\ncapture->publish latency (ms, {o['count']} results): p50 {o['p50']}, p95 {o['p95']}, "
            f"p99 {o['p99']}, max {o['max']}; mean batch {lat['batch_size_mean']}"
        )
        print(
            "mean per-stage ms (result headers' timings_ms; not_in_timings = latency minus queue..publish): "
            + ", ".join(f"{k} {v}" for k, v in lat["stages_mean_ms"].items())
        )
        print(f"engine fps out / model-only fps: {ov['fps_out'] / mo['before']['fps']:.2f}")
        cpu = ov["cpu"]
        print(
            f"cores busy: engine {cpu['own_cores']}, rtsp servers {cpu['servers_cores']}, others {cpu['others_cores']}\n"
        )
        print(
            "| window (s) | results | p50 ms | p95 ms | p99 ms | infer ms/batch | p50 / p95 in batches | cores engine/servers/others |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for w in lat["windows"]:
            c = w.get("cpu", {})
            cores = f"{c['own_cores']}/{c['servers_cores']}/{c['others_cores']}" if c else ""
            print(
                f"| {w['from_s']:g}-{w['to_s']:g} | {w['count']} | {w['p50']} | {w['p95']} | {w['p99']} "
                f"| {w['infer_batch_ms_mean']} | {w['p50_in_batches']} / {w['p95_in_batches']} | {cores} |"
            )
        nb = lat["in_batches"]
        print(
            f"\ntrend, raw: {lat['slope_ms_per_min']:+.1f} ms/min (least squares; {lat['fitted_growth_ms']:+.1f} ms "
            f"over the run), last/first window p95 {lat['last_over_first_p95']}"
        )
        print(
            f"trend in batch forward times: {nb['slope_per_min']:+.2f} /min ({nb['fitted_growth']:+.2f} over the "
            f"run), last/first window p95 {nb['last_over_first_p95']} -> "
            f"{'bounded' if lat['bounded'] else 'NOT BOUNDED'}\n"
        )
    for sw in r.get("sweeps", []):
        print(
            f"### capacity at {sw['stream_fps']} fps: {sw['capacity']} streams (< {100 * DROP_LIMIT:g} % drops); "
            f"theoretical model_fps / stream_fps = {sw['theoretical_limit']}, ratio {sw['capacity_over_limit']}\n"
        )
        print(
            "| N | try | fps in | fps out | drop % | drops | mean batch | latency p95 ms | cores engine/servers/others | |"
        )
        print("|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
        for t in sw["tries"]:
            drops = ", ".join(f"{k}: {v}" for k, v in t["drops"].items()) or "none"
            c = t["cpu"]
            print(
                f"| {t['n']} | {t['try']} | {t['fps_in']:.1f} | {t['fps_out']:.1f} | {100 * (t['drop_rate'] or 0):.2f} "
                f"| {drops} | {t['batch_size_mean']} | {t['latency_ms']['p95']} "
                f"| {c['own_cores']}/{c['servers_cores']}/{c['others_cores']} "
                f"| {'pass' if t['pass'] else 'fail'}{' (loaded machine)' if t['disturbed'] else ''} |"
            )
        print()
    print(f"wall time {report['wall_s']:.0f} s; written: {report['json_path']}")


# -- overload and sweeps (--only overload,sweep) ---------------------------------------------------
@dataclass(frozen=True)
class OverloadPlan:
    """What one ``--only overload,sweep`` run does (the suite fills it from ``--quick``/``--full``)."""

    overload: bool = True  # the overload scenario
    sweeps: bool = True  # a capacity sweep for each rate of ``stream_fps``
    stream_fps: tuple[int, ...] = (25,)  # the first: the overload's rate
    streams: int | None = None  # overload streams (default ceil(1.5 * model_fps / stream_fps) + 1, at least 2)
    seconds: float = 40.0  # overload measurement (quick 15)
    sweep_seconds: float = 15.0  # measured window per sweep step (quick 8)
    sweep_warmup: float = 3.0  # settling time per sweep step (quick 2)
    sweep_start: int | None = None  # first N of the sweep (default: half the limit)
    model_s: float = 6.0  # model-only measurement before and after (quick 4)
    width: int = 640
    height: int = 360
    model: str = "resnet18"
    image_size: int = 224


QUICK_PLAN = OverloadPlan(seconds=15.0, sweep_seconds=8.0, sweep_warmup=2.0, model_s=4.0)


def overload_and_sweeps(plan: OverloadPlan, out: Path, cache: Path) -> dict[str, Any]:
    """Model only, the overload scenario and the capacity sweeps of ``plan``, then model only again;
    prints the tables, writes ``<out>/live.json`` and returns the report. The bundle is cached in
    ``cache``. Needs the RTSP test server (the caller checks ``rtsp_missing()``)."""
    t_wall = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    machine["torch_threads"] = torch.get_num_threads()
    bundle = ensure_bundle(cache, plan.model, plan.image_size)
    model_s = plan.model_s

    _logger.info("model only, batch %d, %.0f s", BATCH, model_s)
    before = model_only_fps(bundle, plan.width, plan.height, model_s, other_batches=(1, 2, 4))
    _logger.info("model only: %.1f fps (rounds %s; by batch %s)", before["fps"], before["fps_runs"],
                 before["fps_by_batch"])  # fmt: skip
    model_fps = before["fps"]
    fps0 = plan.stream_fps[0]
    n_over = plan.streams or max(2, math.ceil(1.5 * model_fps / fps0) + 1)

    results: dict[str, Any] = {"model_only": {"before": before}}
    pool = ServerPool(plan.width, plan.height)
    try:
        if plan.overload:
            _logger.info("overload: %d streams x %d fps (%d fps offered) for %.0f s", n_over, fps0, n_over * fps0,
                         plan.seconds)  # fmt: skip
            results["overload"] = run_live(pool.get(n_over, fps0), bundle, out / "live_run", plan.seconds, 0.0)
            ov = results["overload"]
            _logger.info(
                "overload: in %.1f fps, out %.1f fps, drops %s, latency p50/p95/p99 %s/%s/%s ms, trend %+.1f ms/min",
                ov["fps_in"],
                ov["fps_out"],
                ov["drops"],
                ov["latency"]["overall_ms"]["p50"],
                ov["latency"]["overall_ms"]["p95"],
                ov["latency"]["overall_ms"]["p99"],
                ov["latency"]["slope_ms_per_min"],
            )
        if plan.sweeps:
            results["sweeps"] = [
                sweep(pool, bundle, out, f, model_fps, plan.sweep_seconds, plan.sweep_warmup, plan.sweep_start)
                for f in plan.stream_fps
            ]
    finally:
        pool.close()

    _logger.info("model only again, after the live runs")
    results["model_only"]["after"] = model_only_fps(bundle, plan.width, plan.height, model_s)
    machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report: dict[str, Any] = {
        "machine": machine,
        "params": {
            "model": plan.model,
            "image_size": plan.image_size,
            "bundle": str(bundle),
            "width": plan.width,
            "height": plan.height,
            "stream_fps": list(plan.stream_fps),
            "overload_streams": n_over,
            "overload_seconds": plan.seconds,
            "sweep_seconds": plan.sweep_seconds,
            "sweep_warmup_s": plan.sweep_warmup,
            "model_only_s": model_s,
            "source": SOURCE_DEFAULTS,
            "batching": BATCHING,
            "window_s": WINDOW_S,
            "drop_limit": DROP_LIMIT,
        },
        "results": results,
        "wall_s": round(time.monotonic() - t_wall, 1),
    }
    write_report(report, out / "live.json")
    print_report(report)
    return report


def overload_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the suite's results.json keeps of an :func:`overload_and_sweeps` report (the rest is in
    its own JSON)."""
    r = report["results"]
    out: dict[str, Any] = {
        "json": report["json_path"],
        "model_only_fps": {k: v["fps"] for k, v in r["model_only"].items()},
    }
    ov = r.get("overload")
    if ov:
        o = ov["latency"]["overall_ms"]
        out["overload"] = {
            "streams": ov["streams"],
            "stream_fps": ov["stream_fps"],
            "fps_in": ov["fps_in"],
            "fps_out": ov["fps_out"],
            "drop_rate": ov["drop_rate"],
            "latency_ms": {k: o[k] for k in ("p50", "p95", "p99", "max")},
            "bounded": ov["latency"]["bounded"],
        }
    if "sweeps" in r:
        out["sweeps"] = [
            {k: sw[k] for k in ("stream_fps", "capacity", "theoretical_limit", "capacity_over_limit")}
            for sw in r["sweeps"]
        ]
    return out
