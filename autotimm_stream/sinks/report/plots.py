"""The run report's PNG plots (:class:`~.sink.ReportSink` draws them at render time).

Plots use matplotlib's ``Figure`` and the Agg canvas, never ``pyplot``: no global state, safe off the
main thread, headless. matplotlib is imported only when a figure is made, so the report works
without it: :func:`write_plots` then raises ``ImportError`` before it writes anything.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...fileio import write_atomic
from ...tasks import Task
from .buckets import Bucket, StreamTotals

__all__ = ["OUTPUT_UNITS", "REPORT_FILES", "write_plots"]

REPORT_FILES = {k: f"report_{k}.png" for k in ("fps", "latency", "outputs", "drops")}
OUTPUT_UNITS = {
    Task.DETECTION: "objects per frame, by class",
    Task.CLASSIFICATION: "share of frames whose top class it is",
    Task.MULTILABEL: "share of frames in which the class is predicted",
    Task.SEGMENTATION: "mean share of the frame's pixels (background left out)",
}
_PLOT_SOURCES = 6
_X_LABEL = "seconds since the first result"


def write_plots(
    out: str,
    *,
    task: Task | None,
    wall0_ns: int,
    streams: Mapping[str, StreamTotals],
    rows: Mapping[str, tuple[list[tuple[float, Bucket]], float, tuple[float, float]]],
    rates: Mapping[str, tuple[np.ndarray, np.ndarray]],
    samples: np.ndarray,
    labels: Sequence[str],
    drops: Mapping[str, Mapping[str, int]],
    other: str,
) -> dict[str, str]:
    """Draw the report's plots and save each into ``out`` (atomically) as its :data:`REPORT_FILES` name.

    Per source (``rows`` holds only those with frames, in report order): ``streams`` its totals and
    state events, ``rows`` its buckets, bucket width and active span, ``rates`` its frames out and
    frames dropped per second per bucket, ``drops`` its drops by reason. ``samples``: the latency
    sample (ms); ``labels``: the classes plotted, the rest summed under ``other``; ``wall0_ns``: the
    wall clock of the first result, to place state events. Returns ``{plot: file name}``.
    """
    colour = {s: f"C{i % 10}" for i, s in enumerate(rows)}
    mid = {s: np.array([a for a, _ in r[0]]) + r[1] / 2 for s, r in rows.items()}
    figs = {
        "fps": _fps_figure(streams, rows, rates, mid, colour, wall0_ns),
        "latency": _latency_figure(rows, samples, mid, colour),
        "outputs": _outputs_figure(task, streams, rows, mid, labels, other),
        "drops": _drops_figure(rows, rates, mid, colour, drops),
    }
    for key, fig in figs.items():
        write_atomic(os.path.join(out, REPORT_FILES[key]), functools.partial(_save_png, fig))
    return {k: REPORT_FILES[k] for k in figs}


def _save_png(fig: Any, path: str) -> None:
    fig.savefig(path, format="png")


def _figure(h: float, **space: float) -> Any:  # fixed margins: a layout engine draws everything twice
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, h), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / h, top=1 - 0.4 / h, **space)
    return fig


def _line(ax: Any, t: np.ndarray, y: np.ndarray, **kw: Any) -> None:
    ax.plot(t, y, marker="." if np.count_nonzero(np.isfinite(y)) < 3 else None, **kw)


def _fps_figure(streams: Mapping, rows: Mapping, rates: Mapping, mid: dict, colour: dict, wall0_ns: int) -> Any:
    fig = _figure(3.6)
    ax = fig.add_subplot()
    for s in rows:
        _line(ax, mid[s], rates[s][0], color=colour[s], label=s)
        for at_ns, state in streams[s].events:
            if state in ("reconnecting", "failed"):
                ax.axvline((at_ns - wall0_ns) / 1e9, color=colour[s], linestyle=":", linewidth=1)
    ax.set(xlabel=_X_LABEL, ylabel="frames out per second", ylim=(0, None))
    width = next(iter(rows.values()))[1]
    ax.set_title(f"Throughput per stream (bucket {width:g} s; dotted: reconnecting or failed)")
    ax.legend(fontsize="small")
    return fig


def _latency_figure(rows: Mapping, samples: np.ndarray, mid: dict, colour: dict) -> Any:
    fig = _figure(3.6, wspace=0.25)
    ax, ax2 = fig.subplots(1, 2, width_ratios=(3, 2))
    ax.hist(samples, bins=50, color="C0", alpha=0.8)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        v = float(np.percentile(samples, q))
        ax.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.1f} ms")
    ax.set(xlabel="capture → result latency (ms)", ylabel="frames (sample)", title="Latency")
    ax.legend(fontsize="small")
    for s, (r, _, _) in rows.items():
        _line(ax2, mid[s], np.array([b.lat_sum / b.lat_n if b.lat_n else np.nan for _, b in r]), color=colour[s])
    ax2.set(xlabel=_X_LABEL, ylabel="mean latency (ms)", title="Latency over time", ylim=(0, None))
    return fig


def _outputs_figure(
    task: Task | None, streams: Mapping, rows: Mapping, mid: dict, labels: Sequence[str], other: str
) -> Any:
    shown = sorted(rows, key=lambda s: -streams[s].total.frames)[:_PLOT_SOURCES]
    fig = _figure(1.0 + 2.0 * len(shown), hspace=0.15)
    for ax, s in zip(fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0], shown):
        r = rows[s][0]
        n = np.array([b.frames or np.nan for _, b in r])
        for i, label in enumerate(labels):
            _line(ax, mid[s], np.array([b.outputs.get(label, 0.0) for _, b in r]) / n, color=f"C{i}", label=label)
        rest = np.array([b.out_total - sum(b.outputs.get(k, 0.0) for k in labels) for _, b in r]) / n
        if task is not Task.SEGMENTATION and np.nanmax(rest, initial=0.0) > 1e-9:
            _line(ax, mid[s], rest, color="0.5", linestyle="--", label=other)
        ax.set(ylabel=s, ylim=(0, None))
        if labels:
            ax.legend(fontsize="x-small", loc="upper right", ncols=3)
    ax.set_xlabel(_X_LABEL)
    fig.suptitle(f"{task}: {OUTPUT_UNITS[task] if task else 'per frame'}")
    return fig


def _drops_figure(rows: Mapping, rates: Mapping, mid: dict, colour: dict, drops: Mapping) -> Any:
    fig = _figure(6.0, hspace=0.55)
    ax, ax2 = fig.subplots(2, 1, height_ratios=(3, 2))
    for s in rows:
        _line(ax, mid[s], rates[s][1], color=colour[s], label=s)
    ax.set(xlabel=_X_LABEL, ylabel="frames dropped per second", ylim=(0, None))
    ax.set_title("Frames dropped before inference, over time (gaps in frame indices)")
    ax.legend(fontsize="small")
    reasons = sorted({k for d in drops.values() for k in d})
    left = np.zeros(len(drops))
    for i, reason in enumerate(reasons):
        v = np.array([d.get(reason, 0) for d in drops.values()], dtype=np.float64)
        ax2.barh(list(drops), v, left=left, color=f"C{i}", label=reason)
        left += v
    ax2.set(xlabel="frames dropped, by reason (whole run)", title="Drops by reason")
    if reasons:
        ax2.legend(fontsize="small")
    else:
        ax2.text(0.5, 0.5, "no frame dropped", transform=ax2.transAxes, ha="center", va="center")
        ax2.set(xticks=[], yticks=[])
    return fig
