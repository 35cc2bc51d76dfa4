"""The suite's verdicts and its reports: targets evaluated, the Markdown report (results.md /
RESULTS.md), the console summary, what did not run and where the time went."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from . import live
from .common import (
    CAPACITY_FPS,
    LATENCY_FPS,
    SOAK_STREAMS,
    STREAM_SIZE,
    T_ENGINE_OVER_MODEL,
    T_ENGINE_OVER_NAIVE,
    T_ENGINE_OVER_ROBOFLOW,
    T_RSS_GROWTH_MB,
    T_STREAMS_OVER_LIMIT,
    T_TREND_RISE,
    TREND_MIN_WINDOWS,
    ok,
)
from .throughput import SPIN_WARN

_logger = logging.getLogger("benchmarks.suite")


# -- targets ---------------------------------------------------------------------------------------
def _verdict(value: float | None, passed: bool | None) -> str:
    return "n/a" if value is None or passed is None else ("pass" if passed else "miss")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and measurement: measured value, target, pass / miss (or why not measured)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, where: str, value: float | None, target: str, passed: bool | None, note: str = "") -> None:
        rows.append({"target": name, "where": where, "measured": value, "target_text": target,
                     "result": _verdict(value, passed), "note": note})  # fmt: skip

    def why(*entries: Any) -> str:
        for e in entries:
            if not ok(e):
                return e.get("reason") or e.get("error", "not run") if isinstance(e, dict) else "not run"
        return ""

    for model, by_clip in results.get("throughput", {}).items():
        for key, cell in by_clip.items():
            where = f"{model} / {key}"
            eng, mo, nv = cell.get("engine", {}), cell.get("model_only", {}), cell.get("naive", {})
            if ok(eng) and ok(mo):
                r = eng["fps"] / mo["fps"]
                row("engine >= 0.90 x model-only", where, round(r, 3), f">= {T_ENGINE_OVER_MODEL}",
                    r >= T_ENGINE_OVER_MODEL)  # fmt: skip
            else:
                row("engine >= 0.90 x model-only", where, None, f">= {T_ENGINE_OVER_MODEL}", None, why(eng, mo))
            if ok(eng) and ok(nv):
                r = eng["fps"] / nv["fps"]
                row("engine >= 1.3 x naive", where, round(r, 3), f">= {T_ENGINE_OVER_NAIVE}", r >= T_ENGINE_OVER_NAIVE)
            else:
                row("engine >= 1.3 x naive", where, None, f">= {T_ENGINE_OVER_NAIVE}", None, why(eng, nv))
    for key, rf in results.get("roboflow", {}).items():
        eng = results.get("throughput", {}).get("classifier", {}).get(key, {}).get("engine", {})
        if ok(eng) and ok(rf):
            r = eng["fps"] / rf["fps"]
            row("engine >= 1.5 x Roboflow", f"classifier / {key}", round(r, 3), f">= {T_ENGINE_OVER_ROBOFLOW}",
                r >= T_ENGINE_OVER_ROBOFLOW)  # fmt: skip
        else:
            row("engine >= 1.5 x Roboflow", f"classifier / {key}", None, f">= {T_ENGINE_OVER_ROBOFLOW}", None,
                why(rf, eng) if eng else "the classifier's engine run was not selected (--only)")  # fmt: skip
    live_res = results.get("live", {})
    lat = live_res.get("latency")
    if lat is not None:
        if ok(lat):
            where = f"{lat['streams']} x {LATENCY_FPS} fps, mean batch {lat['batch_size_mean']}"
            row("live p99 <= 1.5 x batch latency + 40 ms", where, lat["p99_ms"], f"<= {lat['p99_limit_ms']} ms",
                lat["p99_ms"] <= lat["p99_limit_ms"], f"batch latency {lat['batch_latency_ms']} ms (the run's infer)")  # fmt: skip
            rise = lat["trend_rise"]
            row("live latency: no upward trend", where, rise, f"<= {T_TREND_RISE:g} (fitted rise / median)",
                None if rise is None else rise <= T_TREND_RISE,
                f"p50 per 5-s window in batch forward times, {lat['trend_windows']} windows; raw slope "
                f"{lat['trend_ms_per_min']:+.1f} ms/min" + ("" if rise is not None else "; too few windows"))  # fmt: skip
        else:
            row("live p99 <= 1.5 x batch latency + 40 ms", "", None, "", None, why(lat))
            row("live latency: no upward trend", "", None, "", None, why(lat))
    cap = live_res.get("capacity")
    if cap is not None:
        if ok(cap):
            r = cap["capacity_over_limit"] or 0.0
            need = math.ceil(cap["target_streams"] - 1e-9)  # streams come whole
            note = (
                f"streams come whole: the smallest N >= {cap['target_streams']} is {need} = {need * CAPACITY_FPS} "
                f"fps, more than model only's own {cap['model_fps']} fps, so passing needs the machine to be "
                "faster during the capacity runs than while model only was timed"
                if need > cap["theoretical_limit"]
                else ""
            )
            row("streams >= 0.85 x limit", f"{CAPACITY_FPS} fps streams", cap["capacity"],
                f">= {cap['target_streams']} (limit {cap['theoretical_limit']})", r >= T_STREAMS_OVER_LIMIT, note)  # fmt: skip
        else:
            row("streams >= 0.85 x limit", "", None, "", None, why(cap))
    sk = live_res.get("soak")
    if sk is not None:
        if ok(sk):
            row("RSS growth < 20 MB in the soak", f"{SOAK_STREAMS} x {CAPACITY_FPS} fps, {sk['seconds']:.0f} s",
                sk["growth_mb"], f"< {T_RSS_GROWTH_MB:g} MB", sk["growth_mb"] < T_RSS_GROWTH_MB)  # fmt: skip
        else:
            row("RSS growth < 20 MB in the soak", "", None, "", None, why(sk))
    return rows


# -- reporting -------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cores(entry: Any) -> str:
    cpu = entry.get("cpu") if ok(entry) else None
    return f"{cpu['own_cores']} / {cpu['others_cores']}" if cpu else ""


def _fps(v: float | None, entry: Any) -> str:
    """A table cell: the figure, or ``skipped`` / ``error`` (the reason is listed below the tables)."""
    return _f(v) if ok(entry) else (entry or {}).get("status", "")


def _why(entry: Any, what: str) -> str:
    """Why ``entry`` (an input that is not ok) keeps a measurement from running."""
    if not isinstance(entry, dict):
        return f"no {what}"
    return f"no {what} ({entry.get('reason') or entry.get('error') or 'not prepared'})"


def _status_text(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "not run"
    if entry.get("status") == "skipped":
        return f"skipped: {entry.get('reason')}"
    return f"error: {entry.get('error')}"


def markdown(report: dict[str, Any], plot_ref: Callable[[str], str]) -> str:
    """The whole report as Markdown: machine, command, the tables, targets, what did not run."""
    m, p, res = report["machine"], report["params"], report["results"]
    lines = [
        f"# Benchmark suite ({p['mode']} mode, device {p['device']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Started {report['started']}, wall time {report['wall_s']:.0f} s, autotimm-stream {m['autotimm_stream']}. "
        "Seconds by part: " + ", ".join(f"{k} {v:g}" for k, v in report.get("seconds_by_part", {}).items()) + ".",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads), GPU: {m['gpu'] or 'none'}, PyAV {m['pyav']}, "
        f"OpenCV {m['opencv']}, Python {m['python']}; load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end. On a shared machine compare ratios within one run, not absolute fps.",
        "",
    ]
    clips = report.get("clips", {})
    if clips:
        lines += ["Clips: " + "; ".join(
            f"**{k}**: {c['what']}; " + " and ".join(f"{f['frames']}" for f in c["files"].values()) + " frames"
            if ok(c) else f"**{k}**: {_status_text(c)}"
            for k, c in clips.items()
        ), ""]  # fmt: skip
    bundles = report.get("bundles", {})
    if bundles:
        lines += ["Models: " + "; ".join(
            f"**{k}**: {b['what']} ({b['mb']} MB)" if ok(b) else f"**{k}**: {_status_text(b)}" for k, b in bundles.items()
        ) + f". Engine max_batch = model-only batch: {p['batch']} for the classifier, {p['task_batch']} for the detector "
            f"and the segmentor (as `--only runtimes`); {p['frames']} frames per clip for the "
            f"classifier, the detector and Roboflow, {p['seg_frames']} for the segmentor.", ""]  # fmt: skip

    tp = res.get("throughput", {})
    if tp:
        cells = [(m, k, c) for m, by_clip in tp.items() for k, c in by_clip.items()]
        has_main = any((c.get("model_only") or {}).get("main_thread_fps") for _, _, c in cells)
        lines += [
            "## Throughput (fps)",
            "",
            "| model | clip | model only | engine | naive | Roboflow | engine / model | engine / naive "
            "| engine / Roboflow | decode fps | cores this / others: engine | naive |"
            + (" model only, main thread |" if has_main else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|" + ("---:|" if has_main else ""),
        ]
        for model, key, cell in cells:
            eng, mo, nv = cell.get("engine", {}), cell.get("model_only", {}), cell.get("naive", {})
            rf = res.get("roboflow", {}).get(key) if model == "classifier" else None
            mo_fps = mo["fps"] if ok(mo) else None
            e_fps = eng["fps"] if ok(eng) else None
            n_fps = nv["fps"] if ok(nv) else None
            r_fps = rf["fps"] if ok(rf) else None
            lines.append(
                f"| {model} | {key} | {_fps(mo_fps, mo)} | {_fps(e_fps, eng)} | {_fps(n_fps, nv)} | "
                f"{_fps(r_fps, rf) if rf is not None else ''} | "
                f"{_f(e_fps / mo_fps, 2) if e_fps and mo_fps else ''} | {_f(e_fps / n_fps, 2) if e_fps and n_fps else ''} | "
                f"{_f(e_fps / r_fps, 2) if e_fps and r_fps else ''} | {_f(mo.get('decode_fps'))} | "
                f"{_cores(eng)} | {_cores(nv)} |" + (f" {_f(mo.get('main_thread_fps'))} |" if has_main else "")
            )
        lines.append("")
        lines.append(
            "Model only: `runner.forward` on pre-decoded, preprocessed batches (a runner with the engine's "
            "model options, on a separate thread as the engine's `worker-infer`), just before and again just after the "
            "engine, both runs pooled (a drift of the machine's speed during the cell weighs on both sides alike). "
            "Engine: file source (`block`), ZMQ + JSONL sinks. Naive: one frame at a time (classifier on the "
            "CPU: `throughput.naive_loop`; otherwise cv2 read -> `ModelRunner.preprocess` -> batch-1 forward -> "
            "`Postprocessor` -> ZMQ), on a worker thread like model only and the engine's model thread "
            "(`--naive-main-thread`: on the main thread as `--only paired` does, where torch's OpenMP threads "
            "spin-wait on a loaded machine and the loop can run 2-5x slower; model only is then timed there "
            "too, last column). Quick mode runs few frames: the ratios are rough, `--full` is the measurement."
        )
        lines.append("")
        spun = [
            f"{model} / {key}"
            for model, by_clip in tp.items()
            for key, cell in by_clip.items()
            if ok(cell.get("model_only"))
            and cell["model_only"].get("main_thread_fps")
            and cell["model_only"]["fps"] > SPIN_WARN * cell["model_only"]["main_thread_fps"]
        ]
        if spun and not os.environ.get("OMP_WAIT_POLICY"):
            lines += [
                f"**Note:** model only was more than {SPIN_WARN}x slower on the main thread than on a worker thread "
                f"({', '.join(spun)}): torch's OpenMP threads spin-wait on a loaded machine (benchmarks/README.md). "
                "The naive loop runs on the main thread, so engine / naive is inflated there; rerun with "
                "`OMP_WAIT_POLICY=PASSIVE` for a fair one.",
                "",
            ]
    rfs = {k: v for k, v in res.get("roboflow", {}).items() if ok(v)}
    if rfs:
        lines += ["## Roboflow InferencePipeline (classifier)", ""]
        for key, rf in rfs.items():
            lines.append(
                f"- {key} clip: {rf['fps']} fps over {rf['frames']} frames (batch {rf.get('batch')}, inference "
                f"{rf.get('inference_version')}, torch {rf.get('torch_version')}, {rf.get('torch_threads')} threads, "
                f"dropped {rf.get('dropped')}), via `benchmarks/lib/roboflow.py`: " + "; ".join(rf.get("notes", []))
            )
        lines.append("")
    live_res = res.get("live", {})
    lat = live_res.get("latency")
    if ok(lat):
        lines += [
            f"## Live latency ({lat['streams']} RTSP stream(s) x {LATENCY_FPS} fps, {STREAM_SIZE[0]}x{STREAM_SIZE[1]}, "
            f"{lat['seconds']:.0f} s)",
            "",
            f"Capture -> publish over {lat['results']} results: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
            f"p99 {lat['p99_ms']} ms (max {lat['max_ms']}). fps in {lat['fps_in']}, out {lat['fps_out']}, drops "
            f"{100 * (lat['drop_rate'] or 0):.2f} %, mean batch {lat['batch_size_mean']}. Batch latency (the "
            f"engine's mean batch forward time in this run): {lat['batch_latency_ms']} ms"
            + (
                f"; model only at batch {lat['model_only_batch_latency_ms']['batch']}: "
                f"{lat['model_only_batch_latency_ms']['ms']} ms"
                if lat.get("model_only_batch_latency_ms")
                else ""
            )
            + ". Trend: "
            f"p50 per window in batch forward times rises by {_f(lat['trend_rise'], 3)} of its median over the run "
            f"(fitted; limit {T_TREND_RISE:g}); raw: {lat['trend_ms_per_min']:+.1f} ms/min, "
            f"{lat['trend_growth_ms']:+.1f} ms over the run; `lib/live.py`'s own verdict (its rules, not a target: "
            f"last-window p95 <= 1.5 x first-window p95 and fitted p50 growth <= half the median, in batch "
            f"forward times): "
            f"{'bounded' if lat['bounded_in_batches'] else 'not bounded'}.",
            "",
            "| window (s) | results | p50 ms | p95 ms | p99 ms | infer ms/batch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for w in lat["windows"]:
            lines.append(
                f"| {w['from_s']:g}-{w['to_s']:g} | {w['count']} | {w['p50']} | {w['p95']} | {w['p99']} | {w['infer_batch_ms_mean']} |"
            )
        lines += ["", "Mean stage ms: " + ", ".join(f"{k} {v}" for k, v in lat["stages_mean_ms"].items()), ""]
    cap = live_res.get("capacity")
    if ok(cap):
        lines += [
            f"## Streams per machine ({CAPACITY_FPS}-fps RTSP streams, < 1 % drops)",
            "",
            f"Capacity **{'at least ' if cap.get('lower_bound') and cap['capacity'] else ''}{cap['capacity']}** streams; limit model-only fps / {CAPACITY_FPS} = {cap['theoretical_limit']} "
            f"(model only {cap['model_fps']} fps: {res['live'].get('model_only', {}).get('source', '?')}), ratio "
            f"{cap['capacity_over_limit']}. Search: {cap['search']}.",
            "",
            "| N | try | fps in | fps out | drop % | mean batch | latency p95 ms | cores this / servers / others | |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for t in cap["tries"]:
            c = t["cpu"]
            lines.append(
                f"| {t['n']} | {t['try']} | {t['fps_in']:.1f} | {t['fps_out']:.1f} | {100 * (t['drop_rate'] or 0):.2f} | "
                f"{t['batch_size_mean']} | {t['latency_ms']['p95']} | {c['own_cores']} / {c['servers_cores']} / "
                f"{c['others_cores']} | {'pass' if t['pass'] else 'fail'}{' (loaded machine)' if t['disturbed'] else ''} |"
            )
        lines.append("")
    sk = live_res.get("soak")
    if ok(sk):
        lines += [
            f"## Soak ({sk['streams']} x {sk['stream_fps']} fps RTSP streams, {sk['seconds']:.0f} s)",
            "",
            f"RSS {sk['rss_start_mb']:.1f} MB at the start, {sk['rss_after_warmup_mb']:.1f} MB after the "
            f"{sk['warmup_s']:.0f}-s warm-up, {sk['rss_end_mb']:.1f} MB at the end (max {sk['rss_max_mb']:.1f}): "
            f"growth **{sk['growth_mb']:+.1f} MB**, fitted {sk['slope_mb_per_min']:+.2f} MB/min"
            + (
                f", by quarter of the run {', '.join(f'{g:+.1f}' for g in sk['growth_by_quarter_mb'])} MB"
                if sk.get("growth_by_quarter_mb")
                else ""
            )
            + f". fps in {sk['fps_in']}, "
            f"out {sk['fps_out']}, drops {100 * (sk['drop_rate'] or 0):.1f} % ({sk['drops']}), latency p50/p99 "
            f"{sk['latency_ms']['p50']}/{sk['latency_ms']['p99']} ms.",
            "",
        ]
    lines += extra_markdown(res)
    lines += [
        "## Targets",
        "",
        "| target | where | measured | target | result | note |",
        "|---|---|---:|---|---|---|",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['where']} | {_f(t['measured'], 3) if isinstance(t['measured'], float) else _f(t['measured'])} "
            f"| {t['target_text']} | {t['result']} | {t['note']} |"
        )
    lines += [
        "",
        f"Trend: each {live.WINDOW_S:g}-s window's p50 latency divided by that window's mean batch forward time "
        f"(a loaded machine slows the forward pass and every latency with it; a backlog grows in these units "
        f'too); "no upward trend" = the least-squares line through the windows rises by at most '
        f"{T_TREND_RISE:.0%} of their median over the run (at least {TREND_MIN_WINDOWS} windows). "
        f"Batch latency: the engine's mean batch forward time (`infer`) during the live run. "
        f"Streams limit: model-only fps / {CAPACITY_FPS}. Soak growth: RSS at the end minus RSS at the first "
        f"sample after the warm-up.",
        "",
    ]
    problems = report.get("not_run", [])
    if problems:
        lines += ["## Skipped or failed", ""] + [f"- {w}: {t}" for w, t in problems] + [""]
    plots = report.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [plot_ref(pl) for pl in plots] + [""]
    return "\n".join(lines)


def extra_markdown(res: dict[str, Any]) -> list[str]:
    """The single-purpose measurements that ran (``--only paired``, ``runtimes``, ``overload``/``sweep``):
    their key figures and where their whole report is."""
    lines: list[str] = []
    pr = res.get("paired")
    if ok(pr):
        f, r = pr["fps"], pr["ratios"]
        runs = r["engine_over_model_only_runs"]
        lines.append(
            f"- **paired** ({pr['frames']} frames, batch {pr['batch']}, {pr['repeat']} round(s)): model only "
            f"{f['model_only']} fps (main thread {f['model_only_main_thread']}), engine {f['engine']}, engine + video "
            f"{f['engine_video']}, naive {f['naive']}, decode only {f['decode_only']}; engine / model-only "
            f"{r['engine_over_model_only']}"
            + (f" (per round {', '.join(str(v) for v in runs)})" if len(runs) > 1 else "")
            + f", engine / naive {r['engine_over_naive']}, engine + video / engine {r['engine_video_over_engine']}; "
            f"`{pr['json']}`"
        )
    rt = res.get("runtimes")
    if ok(rt):
        for task, by_fmt in rt["results"].items():
            lines.append(
                f"- **runtimes**, {task}: "
                + "; ".join(
                    f"{name} model only {_f(v['model_only_fps'])} / engine {_f(v['engine_fps'])} fps, post "
                    f"{_f(v['post_ms_per_frame'], 2)} ms/frame, {v['bundle_mb']} MB"
                    for name, v in by_fmt.items()
                )
                + f"; `{rt['json']}`"
            )
    co = res.get("colour")
    if ok(co):
        fid = "; ".join(
            f"{clip} "
            + ", ".join(
                f"{m} max {r['max_levels']} ({100 * r['pixels_differing']:.1f} % of pixels)" for m, r in v.items()
            )
            for clip, v in co["fidelity"].items()
        )
        cost = "; ".join(f"{clip} fast {v['fast']} / ffmpeg {v['ffmpeg']} CPU ms" for clip, v in co["cost"].items())
        lines.append(f"- **colour** against the FFmpeg CLI's PNG frames: {fid}. Per frame: {cost}; `{co['json']}`")
    ov = res.get("overload")
    if ok(ov):
        mo = ov["model_only_fps"]
        o = ov.get("overload")
        text = f"- **live** (model only {mo.get('before')} fps before, {mo.get('after')} after)"
        if o:
            lat = o["latency_ms"]
            text += (
                f": overload {o['streams']} x {o['stream_fps']} fps, out {o['fps_out']} fps, drops "
                f"{100 * (o['drop_rate'] or 0):.1f} %, latency p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} ms, "
                f"{'bounded' if o['bounded'] else 'NOT bounded'}"
            )
        for sw in ov.get("sweeps", []):
            text += f"; capacity at {sw['stream_fps']} fps: {sw['capacity']} streams (limit {sw['theoretical_limit']})"
        lines.append(text + f"; `{ov['json']}`")
    return ["## Single-purpose measurements", "", *lines, ""] if lines else []


def section_times(report: dict[str, Any]) -> dict[str, float]:
    """Seconds spent per part of the run (each recorded measurement's own time, summed)."""

    def total(node: Any) -> float:
        if not isinstance(node, dict):
            return 0.0
        if "status" in node:
            return float(node.get("took_s", 0.0))
        return sum(total(v) for v in node.values())

    res = report["results"]
    out = {"inputs (clips, bundles)": total(report.get("clips", {})) + total(report.get("bundles", {}))}
    for model, cells in res.get("throughput", {}).items():
        out[model] = total(cells)
    out["roboflow"] = total(res.get("roboflow", {}))
    for k, v in res.get("live", {}).items():
        out[f"live: {k}"] = total(v)
    for k in ("paired", "runtimes", "overload", "colour"):
        out[k] = total(res.get(k, {}))
    return {k: round(v, 1) for k, v in out.items() if v}


def collect_not_run(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Every entry that did not run as ``(where, why)``."""
    out: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("status") in ("skipped", "error"):
                out.append((path, _status_text(node)))
                return
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{path} / {k}" if path else k)

    for key in ("clips", "bundles", "results"):
        walk(report.get(key, {}), "" if key == "results" else key)
    return out


def print_summary(report: dict[str, Any]) -> None:
    print(markdown(report, lambda p: f"- {p}"))
