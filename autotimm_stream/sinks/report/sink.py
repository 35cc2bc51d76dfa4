"""A run report: per-stream fps, latency, outputs and drops over time, as Markdown with PNG plots.

:class:`ReportSink` aggregates results as they come (on its sink thread) into per-second buckets
per source; :meth:`ReportSink.render` writes ``report.md`` and its plots at the end of a run.
Memory stays bounded in week-long runs: when the buckets would span more than ``max_buckets``,
adjacent ones merge (the width doubles), so the plots still cover the whole run; latency
percentiles come from a fixed-size uniform sample; each bucket keeps at most
:data:`~.buckets.LABELS_PER_BUCKET` classes (the rest only in its total). The plots are drawn
by :mod:`.plots`.

Time axis: seconds since the first result reached this sink, on ``time.monotonic`` (wall-clock
steps cannot tear the buckets). Latency: ``Result.done_ns - Frame.enqueued_ns``, both monotonic and
taken by the pipeline (the frame enters its ring buffer as it leaves the decoder), so it is
capture to result, without the queueing of any one sink.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...config import ReportConfig
from ...fileio import write_bytes_atomic
from ...messages import EndOfStream, Result, StatusEvent
from ...stats import PipelineStats, StageSummary
from ...tasks import Task
from ..base import Sink
from .buckets import OTHER, Bucket, StreamTotals, copy_totals, interval, rates
from .plots import OUTPUT_UNITS, write_plots

__all__ = ["ReportSink"]

_logger = logging.getLogger(__name__)

RESERVOIR = 4096  # latency samples kept for the histogram and percentiles
MAX_LABELS = 1024  # classes with a run-wide total
MAX_SOURCES = 256  # sources reported (ids added over the control channel could be endless)
_PLOT_LABELS = 8
_SOURCES_HEADER = "| source | frames out | decoded | fps | gaps | drops by reason | states entered | reconnects | end |"


def _outputs(r: Result) -> list[tuple[str, float]]:
    """What a result counts for in the outputs plot (see plots.OUTPUT_UNITS)."""
    if r.task is Task.DETECTION:
        return [(d.label, 1.0) for d in r.detections]
    if r.task is Task.SEGMENTATION:
        return [(c.label, c.fraction) for c in r.class_fractions]
    if r.task is Task.MULTILABEL:
        return [(p.label, 1.0) for p in r.classes]
    return [(r.classes[0].label, 1.0)] if r.classes else []


def _latency_ms(r: Result) -> float:
    if r.done_ns and r.frame.enqueued_ns:
        return max(0.0, (r.done_ns - r.frame.enqueued_ns) / 1e6)
    return max(0.0, (time.time_ns() - r.frame.capture_ns) / 1e6)  # a result not made by a pipeline


class ReportSink(Sink):
    """Aggregates results into bounded per-source time buckets; :meth:`render` writes the report.

    ``settings``: the config's ``sinks.report`` (``bucket_s``, ``max_buckets``). ``reservoir``:
    latency samples kept for the percentiles. ``clock`` (seconds, monotonic) is injectable for
    tests. ``write`` never touches the disk.
    """

    name = "report"

    def __init__(
        self,
        settings: ReportConfig | None = None,
        *,
        reservoir: int = RESERVOIR,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ):
        settings = settings or ReportConfig()
        if reservoir < 1:
            raise ValueError(f"ReportSink needs reservoir >= 1, got {reservoir}")
        self.bucket_s = settings.bucket_s
        self.max_buckets = settings.max_buckets
        self._reservoir = reservoir
        self._clock = clock
        self._rng = random.Random(seed)  # the sample, hence the percentiles, are reproducible
        self._lock = threading.Lock()
        self._streams: dict[str, StreamTotals] = {}
        self._samples: list[float] = []
        self._labels: dict[str, float] = {}  # class -> summed value (objects, hits, pixel shares)
        self._full = False  # MAX_SOURCES reached
        self._t0: float | None = None
        self._wall0_ns = 0
        self.last_t = 0.0
        self.frames = 0
        self.task: Task | None = None
        self.model = ""
        self.model_version = ""  # the bundle's SHA-256 prefix, when the pipeline sets it
        self.path: str | None = None  # the last report written

    # -- aggregation (sink thread) ------------------------------------------------------------------
    def _stream(self, source_id: str) -> StreamTotals | None:
        st = self._streams.get(source_id)
        if st is None:
            if len(self._streams) >= MAX_SOURCES:
                if not self._full:
                    self._full = True
                    _logger.warning(
                        "report: more than %d sources; %s and later ones are left out", MAX_SOURCES, source_id
                    )
                return None
            st = self._streams[source_id] = StreamTotals()
        return st

    def _bucket_index(self, t: float) -> int:
        while int(t // self.bucket_s) >= self.max_buckets:
            self.bucket_s *= 2
            for st in self._streams.values():
                merged: dict[int, Bucket] = {}
                for k, b in sorted(st.buckets.items()):
                    merged.setdefault(k // 2, Bucket()).merge(b)
                st.buckets = merged
        return int(t // self.bucket_s)

    def write(self, results: list[Result]) -> None:
        if not results:
            return
        now = self._clock()
        with self._lock:
            if self._t0 is None:
                self._t0, self._wall0_ns = now, time.time_ns()
                r0 = results[0]
                self.task, self.model = r0.task, r0.model
                self.model_version = r0.model_version
            t = max(0.0, now - self._t0)
            self.last_t = max(self.last_t, t)
            k = self._bucket_index(t)
            for r in results:
                st = self._stream(r.source_id)
                if st is not None:
                    self._add(st, k, t, r)

    def _add(self, st: StreamTotals, k: int, t: float, r: Result) -> None:
        b = st.buckets.setdefault(k, Bucket())
        i, last = r.index, st.last_index
        gap = i - last - 1 if last is not None and i > last else i  # else: first result, or a re-added source
        st.last_index = i
        if not st.total.frames:
            st.first_t, st.first_n = t, 0
        if t == st.first_t:
            st.first_n += 1
        st.last_t, ms = t, _latency_ms(r)
        st.total.add(gap, ms)
        b.add(gap, ms)
        for label, value in _outputs(r):
            b.add_output(label, value)
            key = label if label in self._labels or len(self._labels) < MAX_LABELS else OTHER
            self._labels[key] = self._labels.get(key, 0.0) + value
        self.frames += 1
        if len(self._samples) < self._reservoir:  # Algorithm R: a uniform sample of the whole run
            self._samples.append(ms)
        else:
            j = self._rng.randrange(self.frames)
            if j < self._reservoir:
                self._samples[j] = ms

    def status(self, event: StatusEvent) -> None:
        with self._lock:
            st = self._stream(event.source_id)
            if st is not None:
                st.states[event.state.value] += 1
                st.events.append((event.at_ns, event.state.value))

    def end_of_stream(self, eos: EndOfStream) -> None:
        with self._lock:
            st = self._stream(eos.source_id)
            if st is not None:
                st.eos = eos
                st.ended_t = None if self._t0 is None else self._clock() - self._t0

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "bucket_s": self.bucket_s, "path": self.path}

    # -- reading ------------------------------------------------------------------------------------
    def _rows(self, source_id: str) -> tuple[list[tuple[float, Bucket]], float, tuple[float, float]]:
        """Under the lock: one source's buckets (copies, empty ones included), the width, its active span."""
        st, w = self._streams.get(source_id), self.bucket_s
        if st is None or not st.buckets:
            return [], w, (0.0, 0.0)
        lo, hi = min(st.buckets), max(st.buckets)
        rows = [(k * w, st.buckets[k].copy() if k in st.buckets else Bucket()) for k in range(lo, hi + 1)]
        step = interval(st)
        return rows, w, (st.first_t, st.last_t + step)

    def buckets(self, source_id: str) -> list[tuple[float, Bucket]]:
        """Copies of one source's buckets, ``(start_s, bucket)`` in time order, empty ones included."""
        with self._lock:
            return self._rows(source_id)[0]

    def rates(self, source_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bucket: start (s), frames out per second, frames dropped per second.

        A source's first and last buckets are partial: their rate is over the part it was active
        (extended by one mean frame interval); under half a bucket they are NaN, unless no bucket
        of the source is longer.
        """
        with self._lock:
            return rates(*self._rows(source_id))

    # -- the report ---------------------------------------------------------------------------------
    def render(self, out_dir: str | os.PathLike[str], stats: PipelineStats | None = None) -> str:
        """Write ``report.md`` and its PNG plots into ``out_dir`` (atomically); returns the report's path.

        ``stats`` (``Pipeline.stats()``) adds run time, decoded frames, drops by reason, states and
        stage latencies. Safe to call while the run goes on.
        """
        out = os.fspath(out_dir)
        os.makedirs(out, exist_ok=True)
        sources = stats.sources if stats is not None else {}
        with self._lock:
            ids = list(sources)
            ids += [s for s in self._streams if s not in ids]
            streams = {s: copy_totals(self._streams.get(s)) for s in ids}
            rows = {s: self._rows(s) for s in ids if streams[s].total.frames}
            samples, labels = np.array(self._samples), self._top_labels()
        drops = {s: _by_reason(stats, s, streams[s]) for s in ids}
        images, note = {}, ""
        if rows:
            try:
                images = write_plots(
                    out, task=self.task, wall0_ns=self._wall0_ns, streams=streams, rows=rows,
                    rates={s: rates(*r)[1:] for s, r in rows.items()}, samples=samples, labels=labels,
                    drops=drops, other=OTHER,
                )  # fmt: skip
            except ImportError:
                note = "Plots skipped: matplotlib is not installed (`pip install matplotlib`)."
                _logger.warning("report: %s", note)
        path = os.path.join(out, "report.md")
        write_bytes_atomic(path, self._markdown(stats, streams, samples, drops, images, note).encode("utf-8"))
        self.path = path
        _logger.info("report written to %s", path)
        return path

    def summary_lines(self) -> list[str]:
        return [f"report: {self.path}"] if self.path else []

    def _top_labels(self) -> list[str]:
        skip = {OTHER.lower(), "background"} if self.task is Task.SEGMENTATION else {OTHER.lower()}
        ranked = sorted(self._labels.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
        return [k for k, _ in ranked if k.lower() not in skip][:_PLOT_LABELS]

    def _markdown(
        self,
        stats: PipelineStats | None,
        streams: dict[str, StreamTotals],
        samples: np.ndarray,
        drops: dict[str, dict[str, int]],
        images: dict[str, str],
        note: str,
    ) -> str:
        started = datetime.datetime.fromtimestamp(self._wall0_ns / 1e9).isoformat(" ", "seconds")
        lines = ["# Run report", ""]
        if self.frames:
            lines.append(f"- First result: {started} (local time); last result {self.last_t:.1f} s later")
        if stats is not None:
            lines.append(
                f"- Run time: {stats.elapsed_s:.1f} s, {stats.frames} frames, "
                f"{round(stats.fps, 2)} fps, {stats.drops} dropped"
            )
        version = f", bundle {self.model_version}" if self.model_version else ""
        lines.append(f"- Model: {self.model or 'unknown'} ({self.task or 'no results'}{version})")
        lines.append(f"- Time buckets: {self.bucket_s:g} s (they merge as a run grows, so memory stays bounded)")
        if stats is not None and stats.error:
            lines.append(f"- **The run ended with an error:** {stats.error}")
        if not self.frames:
            lines += ["", "**No frames were inferred in this run**: nothing to plot."]
        lines += ["", "## Sources", "", _SOURCES_HEADER, "|---|---:|---:|---:|---:|---|---|---:|---|"]
        for s, st in streams.items():
            info = stats.sources.get(s) if stats is not None else None
            span, tot = st.last_t - st.first_t, st.total
            states = (info.states_entered if info is not None else None) or dict(st.states)
            end = (info.state if info is not None else None) or ""
            if st.eos is not None:
                end += f" ({st.eos.reason}" + (f" at {st.ended_t:.1f} s)" if st.ended_t is not None else ")")
            cells = [
                s, tot.frames, info.frames_decoded if info is not None else "–",
                f"{1 / interval(st):.1f}" if span > 0 else "–",
                tot.dropped, ", ".join(f"{k} {v}" for k, v in drops[s].items()) or "none",
                ", ".join(f"{k} {v}" for k, v in states.items()) or "–", states.get("reconnecting", 0),
                end.strip() or "–",
            ]  # fmt: skip
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines += [
            "",
            "fps: while the source produced results; gaps: frames missing between results (lost before inference).",
        ]
        stages: dict[str, StageSummary] = stats.all_stages if stats is not None else {}
        if stages:
            lines += ["", "## Stage latency (ms)", "", "| stage | frames | mean | p50 | p95 | p99 |"]
            lines.append("|---|---:|---:|---:|---:|---:|")
            for name, v in stages.items():
                ms = " | ".join(f"{x:.2f}" for x in (v.mean, v.p50, v.p95, v.p99))
                lines.append(f"| {name} | {v.count} | {ms} |")
            lines += ["", "Batch stages (preprocess, infer, post) count each frame's share of its batch."]
        if self.frames:
            p50, p95, p99 = np.percentile(samples, [50, 95, 99])
            tots = [st.total for st in streams.values()]
            mean = sum(t.lat_sum for t in tots) / max(1, sum(t.lat_n for t in tots))
            worst = max(t.lat_max for t in tots)
            lines += ["", "## Capture → result latency", ""]
            lines.append(
                f"Over {self.frames} frames: mean {mean:.1f} ms, p50 {p50:.1f}, p95 {p95:.1f}, p99 {p99:.1f}, "
                f"max {worst:.1f} ms (percentiles from a uniform sample of {len(samples)} frames)."
            )
        captions = {
            "fps": ("Throughput", "Frames out per second per stream; dotted lines mark reconnects and failures."),
            "latency": ("Latency", "Capture → result latency: histogram with p50/p95/p99, and its mean over time."),
            "outputs": ("Outputs", f"What the model saw over time: {OUTPUT_UNITS[self.task] if self.task else 'per frame'}."),
            "drops": ("Drops", "Frames dropped before inference per second (gaps in frame indices), and every "
                      "drop of the run by reason (buffer_full, stale, decode_error, until_keyframe, shutdown)."),
        }  # fmt: skip
        for key, name in images.items():
            title, caption = captions[key]
            lines += ["", f"## {title}", "", f"![{title}]({name})", "", f"*{caption}*"]
        if note:
            lines += ["", note]
        return "\n".join(lines) + "\n"


def _by_reason(stats: PipelineStats | None, source_id: str, st: StreamTotals) -> dict[str, int]:
    """Drops by reason: the run statistics' (taken last), else the end-of-stream's."""
    info = stats.sources.get(source_id) if stats is not None else None
    if info is not None:
        return dict(info.drops)
    return dict(st.eos.drops) if st.eos is not None else {}
