"""PNG plots of a ``benchmarks/suite.py`` report (matplotlib ``Figure`` + ``FigureCanvasAgg``, no pyplot).

Each plot is drawn from the report's JSON alone and only when its measurement ran:

- ``fps.png``: fps per model and clip, one bar per runner (model only, engine, naive, Roboflow);
- ``live_latency.png``: capture -> publish p50/p95/p99 per 5-s window, with the p99 limit;
- ``rss.png``: RSS over the soak, with the end of the warm-up and the growth budget;
- ``capacity.png``: drop rate of every capacity try against N, with the 1 % line and the limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_logger = logging.getLogger("benchmarks.plots")

RUNNERS = (("model only", "#4c72b0"), ("engine", "#55a868"), ("naive", "#c44e52"), ("Roboflow", "#8172b2"))


def _ok(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("status") == "ok"


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def fps_bars(report: dict[str, Any], path: Path) -> str | None:
    res = report["results"]
    groups: list[tuple[str, list[float | None]]] = []
    for model, by_clip in res.get("throughput", {}).items():
        for key, cell in by_clip.items():
            eng, mo, nv = cell.get("engine", {}), cell.get("model_only", {}), cell.get("naive", {})
            rf = res.get("roboflow", {}).get(key) if model == "classifier" else None
            vals = [
                mo["fps"] if _ok(mo) else None,
                eng["fps"] if _ok(eng) else None,
                nv["fps"] if _ok(nv) else None,
                rf["fps"] if _ok(rf) else None,
            ]
            if any(v is not None for v in vals):
                groups.append((f"{model}\n{key}", vals))
    if not groups:
        return None
    fig = Figure(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.2
    for i, (name, color) in enumerate(RUNNERS):
        xs = [g + (i - 1.5) * width for g, (_, vals) in enumerate(groups) if vals[i] is not None]
        ys = [vals[i] for _, vals in groups if vals[i] is not None]
        if xs:
            bars = ax.bar(xs, ys, width, label=name, color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=8)
    ax.set_ylabel("frames per second")
    p = report["params"]
    ax.set_title(
        f"Throughput by model, clip and runner ({p['mode']}, {p['device']}, batch {p['batch']}/{p['task_batch']})"
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def live_latency(report: dict[str, Any], path: Path) -> str | None:
    lat = report["results"].get("live", {}).get("latency")
    if not _ok(lat) or not lat["windows"]:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    mids = [(w["from_s"] + w["to_s"]) / 2 for w in lat["windows"]]
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(mids, [w[key] for w in lat["windows"]], style, label=key)
    ax.axhline(lat["p99_limit_ms"], color="red", ls="--", lw=1, label=f"p99 limit {lat['p99_limit_ms']} ms")
    ax.set_xlabel("seconds into the measurement (5-s windows)")
    ax.set_ylabel("capture -> publish, ms")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Live latency: {lat['streams']} RTSP x {lat['stream_fps']} fps, trend {lat['trend_ms_per_min']:+.0f} ms/min"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def rss(report: dict[str, Any], path: Path) -> str | None:
    sk = report["results"].get("live", {}).get("soak")
    if not _ok(sk) or not sk["samples"]:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ts, vs = zip(*sk["samples"], strict=True)
    ax.plot(ts, vs, ".-", lw=1, label="RSS")
    ax.axvline(sk["warmup_s"], color="gray", ls=":", label="end of warm-up")
    ax.axhline(sk["rss_after_warmup_mb"] + 20, color="red", ls="--", lw=1, label="after warm-up + 20 MB")
    ax.set_xlabel("seconds")
    ax.set_ylabel("resident set size, MB")
    ax.set_title(f"Soak: {sk['streams']} x {sk['stream_fps']} fps, growth {sk['growth_mb']:+.1f} MB")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def capacity(report: dict[str, Any], path: Path) -> str | None:
    cap = report["results"].get("live", {}).get("capacity")
    if not _ok(cap) or not cap["tries"]:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for passed, color, label in ((True, "#55a868", "pass"), (False, "#c44e52", "fail")):
        pts = [(t["n"], 100 * (t["drop_rate"] or 0)) for t in cap["tries"] if t["pass"] is passed]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, label=label, zorder=3)
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="1 % drops")
    ax.axvline(cap["theoretical_limit"], color="black", ls=":", label=f"limit {cap['theoretical_limit']}")
    ax.axvline(cap["target_streams"], color="red", ls=":", label=f"target {cap['target_streams']}")
    hi = max([t["n"] for t in cap["tries"]] + [math.ceil(cap["theoretical_limit"])])
    ax.set_xlim(0.5 if cap["target_streams"] >= 1 else 0, hi + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"streams ({cap['stream_fps']} fps each)")
    ax.set_ylabel("drops, % of decoded frames")
    ax.set_title(f"Capacity: {cap['capacity']} streams")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[dict[str, Any], Path], str | None]] = {
    "fps.png": fps_bars,
    "live_latency.png": live_latency,
    "rss.png": rss,
    "capacity.png": capacity,
}


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Every plot whose data is in ``report``, into ``out``; returns their paths."""
    written = []
    for name, draw in PLOTS.items():
        try:
            path = draw(report, out / name)
        except Exception as exc:  # one broken plot must not cost the others
            _logger.error("plot %s failed: %s", name, exc)
            continue
        if path:
            written.append(path)
    return written
