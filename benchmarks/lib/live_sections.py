"""The suite's live sections over real RTSP streams: (e) latency, (f) streams per machine, (g) soak;
and the single-purpose ``--only overload,sweep`` run (:func:`run_overload_sections`)."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.testing.rtsp import rtsp_missing

from . import live
from .common import (
    CAPACITY_FPS,
    LATENCY_FPS,
    LIVE_LOAD,
    SOAK_STREAMS,
    STREAM_SIZE,
    T_P99_BATCHES,
    T_P99_SLACK_MS,
    T_STREAMS_OVER_LIMIT,
    TREND_MIN_WINDOWS,
    Mode,
    Skipped,
    attempt,
    ok,
)

_logger = logging.getLogger("benchmarks.suite")


# -- (e, f, g) live --------------------------------------------------------------------------------
@contextlib.contextmanager
def live_patched(opts: dict[str, Any]) -> Iterator[None]:
    """``live``'s runners and engine configs get the suite's model options while the live sections
    run (``live`` builds them for the CPU); undone afterwards.

    (A ``model`` options argument to ``live.engine_config``/``model_only_fps``/``run_live`` would
    make this unnecessary.)
    """
    orig_cfg, orig_runner = live.engine_config, live.ModelRunner

    def cfg(*a: Any, **k: Any) -> dict[str, Any]:
        data = orig_cfg(*a, **k)
        data["model"].update(opts)
        return data

    def runner(path: Any, device: str = "cpu", **k: Any) -> ModelRunner:
        return orig_runner(path, **{**k, **opts})

    live.engine_config = cfg  # type: ignore[assignment]
    if opts.get("device", "cpu") != "cpu":
        live.ModelRunner = runner  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        live.engine_config, live.ModelRunner = orig_cfg, orig_runner  # type: ignore[misc]


def live_latency(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode, model_only: dict[str, Any]):
    """``LATENCY_FPS`` streams, as many as use <= ``LIVE_LOAD`` of model-only fps (at least 1).

    Batch latency is the engine's own batch forward time in this run (the mean ``infer`` of the
    result headers: one batch's forward pass): on a shared machine it moves with the load, as every
    latency does. With a model-only measurement by batch size (full mode) that figure is kept too.
    """
    n = max(1, min(8, math.floor(LIVE_LOAD * model_only["fps"] / LATENCY_FPS)))
    r = live.run_live(pool.get(n, LATENCY_FPS), bundle, out / "live_run", mode.latency_s, mode.latency_warmup_s)
    lat = r["latency"]
    bms = lat["stages_mean_ms"]["infer"]
    o = lat["overall_ms"]
    res = {
        "streams": n,
        "stream_fps": LATENCY_FPS,
        "seconds": r["seconds"],
        "fps_in": r["fps_in"],
        "fps_out": r["fps_out"],
        "drop_rate": r["drop_rate"],
        "drops": r["drops"],
        "p50_ms": o["p50"],
        "p95_ms": o["p95"],
        "p99_ms": o["p99"],
        "max_ms": o["max"],
        "results": o["count"],
        "batch_size_mean": lat["batch_size_mean"],
        "batch_latency_ms": round(bms, 1),
        "p99_limit_ms": round(T_P99_BATCHES * bms + T_P99_SLACK_MS, 1),
        "trend_ms_per_min": lat["slope_ms_per_min"],
        "trend_growth_ms": lat["fitted_growth_ms"],
        "bounded_in_batches": lat["bounded"],
        "in_batches": lat["in_batches"],
        "windows": lat["windows"],
        "stages_mean_ms": lat["stages_mean_ms"],
        "cpu": r["cpu"],
    }
    p50b = [w["p50_in_batches"] for w in lat["windows"] if w["count"] and w["p50_in_batches"]]
    res["trend_windows"] = len(p50b)
    res["trend_rise"] = (
        round(lat["in_batches"]["fitted_growth"] / float(np.median(p50b)), 3)
        if len(p50b) >= TREND_MIN_WINDOWS
        else None
    )
    by_batch = {int(b): v for b, v in (model_only.get("fps_by_batch") or {}).items()}
    fits = [b for b in by_batch if b >= math.ceil(lat["batch_size_mean"] - 1e-6)]
    if fits:  # the smallest measured batch that holds the mean batch
        b = min(fits)
        res["model_only_batch_latency_ms"] = {"batch": b, "ms": round(1000.0 * b / by_batch[b], 1)}
    return res


def capacity(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode, model_fps: float) -> dict[str, Any]:
    """Largest N of ``CAPACITY_FPS`` streams with < 1 % drops.

    Full mode: ``live.sweep`` (from half the limit up to the first failing N; a failing N is tried
    again). Quick mode, coarse: one try at the target N (0.85 x the limit, rounded up), then one
    try at each smaller N until one passes; the capacity is the first N that passes (0 if even one
    stream fails), and a lower bound when the target N passed.
    """
    limit = model_fps / CAPACITY_FPS
    target = max(1, math.ceil(T_STREAMS_OVER_LIMIT * limit - 1e-9))
    base = {"stream_fps": CAPACITY_FPS, "theoretical_limit": round(limit, 2), "model_fps": model_fps,
            "target_streams": round(T_STREAMS_OVER_LIMIT * limit, 2)}  # fmt: skip
    if not mode.coarse_capacity:
        swept = live.sweep(pool, bundle, out, CAPACITY_FPS, model_fps, mode.sweep_seconds, mode.sweep_warmup)
        return {**swept, **base, "search": "live.sweep"}
    tries: list[dict[str, Any]] = []
    found = 0
    for n in range(target, 0, -1):
        _logger.info("capacity (coarse): N=%d x %d fps", n, CAPACITY_FPS)
        r = live.run_live(pool.get(n, CAPACITY_FPS), bundle, out / "live_run", mode.sweep_seconds, mode.sweep_warmup)
        tries.append(live.try_record(n, 1, r))
        _logger.info("capacity (coarse): N=%d drops %.2f %% -> %s", n, 100 * (r["drop_rate"] or 0),
                     "pass" if tries[-1]["pass"] else "fail")  # fmt: skip
        if tries[-1]["pass"]:
            found = n
            break
    return {**base, "capacity": found, "capacity_over_limit": round(found / limit, 3) if limit else None,
            "tries": tries, "search": "coarse: one try at the target N, then one at each smaller N until one passes",
            "lower_bound": found == target}  # fmt: skip


def read_rss_mb() -> float:
    """This process's resident set size (``/proc/self/status`` VmRSS; psutil where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def soak(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode) -> dict[str, Any]:
    """4 streams x 10 fps for ``mode.soak_s``; RSS sampled every ``rss_every_s`` on a side thread.

    Growth: from the first sample after ``soak_warmup_s`` to the last one before the engine stops.
    The results are collected without keeping per-result data (``run_live(samples=False)``).
    """
    servers = pool.get(SOAK_STREAMS, CAPACITY_FPS)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while True:
            samples.append((round(time.monotonic() - t0, 2), round(read_rss_mb(), 2)))
            if stop.wait(mode.rss_every_s):
                return

    sampler = threading.Thread(target=sample, name="suite-rss", daemon=True)
    sampler.start()
    try:
        r = live.run_live(servers, bundle, out / "soak_run", mode.soak_s, 0.0, samples=False)
    finally:
        stop.set()
        sampler.join(5.0)
    # growth is read inside the measured span: stopping the engine (summary, report, plots) allocates too
    end = r["window_monotonic"][1] - t0
    after = [(t, v) for t, v in samples if mode.soak_warmup_s <= t <= end]
    if len(after) < 2:
        raise RuntimeError(f"too few RSS samples after the {mode.soak_warmup_s:.0f}-s warm-up: {samples}")
    ts, vs = np.array([t for t, _ in after]), np.array([v for _, v in after])
    return {
        "streams": SOAK_STREAMS,
        "stream_fps": CAPACITY_FPS,
        "seconds": r["seconds"],
        "warmup_s": mode.soak_warmup_s,
        "rss_start_mb": samples[0][1],
        "rss_after_warmup_mb": after[0][1],
        "rss_end_mb": after[-1][1],
        "rss_max_mb": round(max(v for _, v in samples), 2),
        "growth_mb": round(after[-1][1] - after[0][1], 2),
        # a leak grows alike in every quarter; structures that fill up to a bound grow less and less
        "growth_by_quarter_mb": growth_by_quarter(after),
        "slope_mb_per_min": round(float(np.polyfit(ts, vs, 1)[0]) * 60, 3),
        "samples": samples,
        "fps_in": r["fps_in"],
        "fps_out": r["fps_out"],
        "drop_rate": r["drop_rate"],
        "drops": r["drops"],
        "latency_ms": r["latency"]["overall_ms"],
        "cpu": r["cpu"],
    }


def growth_by_quarter(samples: list[tuple[float, float]]) -> list[float]:
    """RSS growth (MB) in each quarter of the span of ``(t, rss)`` samples (nearest sample to each edge)."""
    ts = np.array([t for t, _ in samples])
    edges = [ts[0] + q * (ts[-1] - ts[0]) / 4 for q in range(5)]
    at = [samples[int(np.abs(ts - e).argmin())][1] for e in edges]
    return [round(b - a, 2) for a, b in zip(at, at[1:])]


def classifier_model_only(results: dict[str, Any]) -> dict[str, Any] | None:
    """The classifier's model-only result from the throughput section (real clip first), if any."""
    for key in ("real", "generated"):
        mo = results.get("throughput", {}).get("classifier", {}).get(key, {}).get("model_only")
        if ok(mo):
            return {**mo, "source": f"throughput section, classifier / {key}, batch {mo['batch']}"}
    return None


def run_live_sections(
    sel: list[str], bundle: Path, out: Path, mode: Mode, opts: dict[str, Any], earlier: dict[str, Any] | None
) -> dict[str, Any]:
    """Latency, capacity and soak on one pool of RTSP servers (closed at the end, whatever happens).

    Model-only fps (for the number of latency streams and the capacity limit) is measured here with
    ``live.model_only_fps`` (batches 8, 1, 2, 4) in full mode, or when the throughput section did
    not measure the classifier; quick mode reuses that figure (same bundle, batch 8).
    """
    res: dict[str, Any] = {}
    missing = rtsp_missing()
    if missing:
        for s in sel:
            res[s] = {"status": "skipped", "reason": f"no RTSP test server here: {missing}"}
        return res
    pool = live.ServerPool(*STREAM_SIZE)
    try:
        with live_patched(opts):
            model_only: dict[str, Any] = {"status": "skipped", "reason": "not needed"}
            if "latency" in sel or "capacity" in sel:
                if earlier is not None and not mode.live_model_only:
                    model_only = {**{k: v for k, v in earlier.items() if k != "took_s"}, "status": "ok"}
                else:
                    model_only = attempt(
                        "live: model only (batches 8, 1, 2, 4)",
                        lambda: {
                            **live.model_only_fps(bundle, *STREAM_SIZE, mode.live_model_s, other_batches=(1, 2, 4)),
                            "source": f"live.model_only_fps on {STREAM_SIZE[0]}x{STREAM_SIZE[1]} frames, batch 8",
                        },
                        120 + 4 * mode.live_model_s,
                    )
                res["model_only"] = model_only
            need = {"status": "skipped", "reason": "the live model-only measurement failed"}
            if "latency" in sel:
                res["latency"] = (
                    attempt(
                        f"live latency ({LATENCY_FPS} fps streams, {mode.latency_s:.0f} s)",
                        lambda: live_latency(pool, bundle, out, mode, model_only),
                        150 + 3 * mode.latency_s,
                    )
                    if ok(model_only)
                    else need
                )
            if "capacity" in sel:
                res["capacity"] = (
                    attempt(
                        f"capacity ({CAPACITY_FPS} fps streams)",
                        lambda: capacity(pool, bundle, out, mode, model_only["fps"]),
                        240 + 20 * (mode.sweep_seconds + mode.sweep_warmup + 5),
                    )
                    if ok(model_only)
                    else need
                )
            if "soak" in sel:
                res["soak"] = attempt(
                    f"soak ({SOAK_STREAMS} x {CAPACITY_FPS} fps, {mode.soak_s:.0f} s)",
                    lambda: soak(pool, bundle, out, mode),
                    180 + 1.5 * mode.soak_s,
                )
    finally:
        pool.close()
    return res


def run_overload_sections(
    sel: list[str], plan: live.OverloadPlan, out: Path, cache: Path, opts: dict[str, Any]
) -> dict[str, Any]:
    """``--only overload`` and/or ``sweep``: :func:`live.overload_and_sweeps` with the suite's model
    options; what the suite's report keeps of it (the whole report is in ``<out>/live.json``)."""
    missing = rtsp_missing()
    if missing:
        raise Skipped(f"no RTSP test server here: {missing}")
    plan = replace(plan, overload="overload" in sel, sweeps="sweep" in sel)
    with live_patched(opts):
        return live.overload_summary(live.overload_and_sweeps(plan, out, cache))
