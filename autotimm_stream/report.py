"""A run report: per-stream fps, latency, outputs and drops over time, as Markdown with PNG plots.

:class:`ReportSink` aggregates results as they come (on its sink thread) into per-second buckets
per source; :meth:`ReportSink.render` writes ``report.md`` and its plots at the end of a run.
Memory stays bounded in week-long runs: when the buckets would span more than ``max_buckets``,
adjacent ones merge (the width doubles), so the plots still cover the whole run; latency
percentiles come from a fixed-size uniform sample; each bucket keeps at most
:data:`LABELS_PER_BUCKET` classes (the rest only in its total). The plots are drawn by
:mod:`autotimm_stream.report_plots`.

Time axis: seconds since the first result reached this sink, on ``time.monotonic`` (wall-clock
steps cannot tear the buckets). Latency: ``Result.done_ns - Frame.enqueued_ns``, both monotonic and
taken by the pipeline (the frame enters its ring buffer as it leaves the decoder), so it is
capture to result, without the queueing of any one sink.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .fileio import write_bytes_atomic
from .frame import Result
from .report_plots import OUTPUT_UNITS, REPORT_FILES, write_plots
from .sinks.base import EndOfStream, Sink
from .sources.base import StatusEvent

__all__ = ["ReportSink", "Bucket", "REPORT_FILES"]

_logger = logging.getLogger(__name__)

BUCKET_S = 1.0  # initial bucket width, seconds
MAX_BUCKETS = 3600  # per source; beyond this adjacent buckets merge (an hour at 1 s, a week at 256 s)
RESERVOIR = 4096  # latency samples kept for the histogram and percentiles
LABELS_PER_BUCKET = 16  # classes tracked per bucket (a 1000-class model must not cost 1000 per bucket)
MAX_LABELS = 1024  # classes with a run-wide total
MAX_SOURCES = 256  # sources reported (ids added over the control channel could be endless)
_EVENTS = 64  # latest state changes kept per source, for the markers on the fps plot
_PLOT_LABELS = 8
OTHER = "(other)"
_SOURCES_HEADER = "| source | frames out | decoded | fps | gaps | drops by reason | states entered | reconnects | end |"


@dataclasses.dataclass(slots=True)
class Bucket:
    """What one source produced during one time bucket."""

    frames: int = 0
    dropped: int = 0  # frames lost before inference, seen as gaps in the frame indices
    lat_n: int = 0
    lat_sum: float = 0.0  # ms
    lat_max: float = 0.0  # ms
    out_total: float = 0.0  # sum over frames of every class's value (objects, top-1 hits, pixel shares)
    outputs: dict[str, float] = dataclasses.field(default_factory=dict)  # per class; at most LABELS_PER_BUCKET

    def add(self, gap: int, ms: float) -> None:
        self.frames, self.dropped = self.frames + 1, self.dropped + gap
        self.lat_n, self.lat_sum, self.lat_max = self.lat_n + 1, self.lat_sum + ms, max(self.lat_max, ms)

    def add_output(self, label: str, value: float) -> None:
        self.out_total += value
        if label in self.outputs or len(self.outputs) < LABELS_PER_BUCKET:
            self.outputs[label] = self.outputs.get(label, 0.0) + value

    def merge(self, other: Bucket) -> None:
        for name in ("frames", "dropped", "lat_n", "lat_sum", "out_total"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lat_max = max(self.lat_max, other.lat_max)
        for k, v in other.outputs.items():
            self.outputs[k] = self.outputs.get(k, 0.0) + v
        if len(self.outputs) > LABELS_PER_BUCKET:  # the smallest fall back into the total only
            self.outputs = dict(sorted(self.outputs.items(), key=lambda kv: -kv[1])[:LABELS_PER_BUCKET])

    def copy(self) -> Bucket:
        return dataclasses.replace(self, outputs=dict(self.outputs))


@dataclasses.dataclass(slots=True)
class _Stream:
    buckets: dict[int, Bucket] = dataclasses.field(default_factory=dict)
    total: Bucket = dataclasses.field(default_factory=Bucket)  # the whole run (no outputs)
    first_t: float = 0.0
    first_n: int = 0  # results delivered at first_t (a whole batch arrives at one moment)
    last_t: float = 0.0
    last_index: int | None = None
    states: Counter[str] = dataclasses.field(default_factory=Counter)
    events: deque[tuple[int, str]] = dataclasses.field(default_factory=lambda: deque(maxlen=_EVENTS))  # (at_ns, state)
    eos: EndOfStream | None = None
    ended_t: float | None = None


def _interval(st: _Stream) -> float:
    """Mean time between one source's results; 0 before two moments. The results of the first
    moment came with no interval before them (a batch arrives at once), so they are not counted."""
    span, n = st.last_t - st.first_t, st.total.frames - st.first_n
    return span / n if span > 0 and n > 0 else 0.0


def _outputs(r: Result) -> list[tuple[str, float]]:
    if r.task == "detection":
        return [(d.label, 1.0) for d in r.detections]
    if r.task == "segmentation":
        return [(name, frac) for _, name, frac in r.class_fractions]
    if r.task == "multilabel":
        return [(p.label, 1.0) for p in r.classes]
    return [(r.classes[0].label, 1.0)] if r.classes else []


def _latency_ms(r: Result) -> float:
    if r.done_ns and r.frame.enqueued_ns:
        return max(0.0, (r.done_ns - r.frame.enqueued_ns) / 1e6)
    return max(0.0, (time.time_ns() - r.frame.capture_ns) / 1e6)  # a result not made by a pipeline


class ReportSink(Sink):
    """Aggregates results into bounded per-source time buckets; :meth:`render` writes the report.

    ``clock`` (seconds, monotonic) is injectable for tests. ``write`` never touches the disk.
    """

    name = "report"

    def __init__(
        self,
        *,
        bucket_s: float = BUCKET_S,
        max_buckets: int = MAX_BUCKETS,
        reservoir: int = RESERVOIR,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ):
        if bucket_s <= 0 or max_buckets < 2 or reservoir < 1:
            raise ValueError(
                f"ReportSink needs bucket_s > 0, max_buckets >= 2, reservoir >= 1; "
                f"got {bucket_s}, {max_buckets}, {reservoir}"
            )
        self.bucket_s = bucket_s
        self.max_buckets = max_buckets
        self._reservoir = reservoir
        self._clock = clock
        self._rng = random.Random(seed)  # the sample, hence the percentiles, are reproducible
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._samples: list[float] = []
        self._labels: Counter[str] = Counter()
        self._full = False  # MAX_SOURCES reached
        self._t0: float | None = None
        self._wall0_ns = 0
        self.last_t = 0.0
        self.frames = 0
        self.task = ""
        self.model = ""
        self.model_version = ""  # the bundle's SHA-256 prefix, when the pipeline sets it
        self.path: str | None = None  # the last report written

    # -- aggregation (sink thread) ------------------------------------------------------------------
    def _stream(self, source_id: str) -> _Stream | None:
        st = self._streams.get(source_id)
        if st is None:
            if len(self._streams) >= MAX_SOURCES:
                if not self._full:
                    self._full = True
                    _logger.warning(
                        "report: more than %d sources; %s and later ones are left out", MAX_SOURCES, source_id
                    )
                return None
            st = self._streams[source_id] = _Stream()
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
                self.model_version = getattr(r0, "model_version", "")
            t = max(0.0, now - self._t0)
            self.last_t = max(self.last_t, t)
            k = self._bucket_index(t)
            for r in results:
                st = self._stream(r.source_id)
                if st is not None:
                    self._add(st, k, t, r)

    def _add(self, st: _Stream, k: int, t: float, r: Result) -> None:
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
            self._labels[key] += value
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
        step = _interval(st)
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
            return _rates(*self._rows(source_id))

    # -- the report ---------------------------------------------------------------------------------
    def render(self, out_dir: str | os.PathLike[str], summary: dict[str, Any] | None = None) -> str:
        """Write ``report.md`` and its PNG plots into ``out_dir`` (atomically); returns the report's path.

        ``summary`` is :meth:`Pipeline.summary`: it adds run time, decoded frames, drops by reason,
        states and stage latencies. Safe to call while the run goes on.
        """
        out, summary = os.fspath(out_dir), summary or {}
        os.makedirs(out, exist_ok=True)
        with self._lock:
            ids = list(summary.get("sources", {}))
            ids += [s for s in self._streams if s not in ids]
            streams = {s: _copy(self._streams.get(s)) for s in ids}
            rows = {s: self._rows(s) for s in ids if streams[s].total.frames}
            samples, labels = np.array(self._samples), self._top_labels()
        drops = {s: _by_reason(summary, s, streams[s]) for s in ids}
        images, note = {}, ""
        if rows:
            try:
                images = write_plots(
                    out, task=self.task, wall0_ns=self._wall0_ns, streams=streams, rows=rows,
                    rates={s: _rates(*r)[1:] for s, r in rows.items()}, samples=samples, labels=labels,
                    drops=drops, other=OTHER,
                )  # fmt: skip
            except ImportError:
                note = "Plots skipped: matplotlib is not installed (`pip install matplotlib`)."
                _logger.warning("report: %s", note)
        path = os.path.join(out, "report.md")
        write_bytes_atomic(path, self._markdown(summary, streams, samples, drops, images, note).encode("utf-8"))
        self.path = path
        _logger.info("report written to %s", path)
        return path

    def _top_labels(self) -> list[str]:
        skip = {OTHER.lower(), "background"} if self.task == "segmentation" else {OTHER.lower()}
        return [k for k, _ in self._labels.most_common() if k.lower() not in skip][:_PLOT_LABELS]

    def _markdown(self, summary: dict, streams: dict, samples: np.ndarray, drops: dict, images: dict, note: str) -> str:
        started = datetime.datetime.fromtimestamp(self._wall0_ns / 1e9).isoformat(" ", "seconds")
        lines = ["# Run report", ""]
        if self.frames:
            lines.append(f"- First result: {started} (local time); last result {self.last_t:.1f} s later")
        if summary.get("elapsed_s") is not None:
            lines.append(
                f"- Run time: {summary['elapsed_s']:.1f} s, {summary.get('frames', self.frames)} frames, "
                f"{summary.get('fps', 0)} fps, {summary.get('drops', 0)} dropped"
            )
        version = f", bundle {self.model_version}" if self.model_version else ""
        lines.append(f"- Model: {self.model or 'unknown'} ({self.task or 'no results'}{version})")
        lines.append(f"- Time buckets: {self.bucket_s:g} s (they merge as a run grows, so memory stays bounded)")
        if summary.get("error"):
            lines.append(f"- **The run ended with an error:** {summary['error']}")
        if not self.frames:
            lines += ["", "**No frames were inferred in this run**: nothing to plot."]
        lines += ["", "## Sources", "", _SOURCES_HEADER, "|---|---:|---:|---:|---:|---|---|---:|---|"]
        for s, st in streams.items():
            info = summary.get("sources", {}).get(s, {})
            span, tot = st.last_t - st.first_t, st.total
            states = info.get("states_entered") or dict(st.states)
            end = info.get("state") or ""
            if st.eos is not None:
                end += f" ({st.eos.reason}" + (f" at {st.ended_t:.1f} s)" if st.ended_t is not None else ")")
            cells = [
                s, tot.frames, info.get("frames_decoded", "–"), f"{1 / _interval(st):.1f}" if span > 0 else "–",
                tot.dropped, ", ".join(f"{k} {v}" for k, v in drops[s].items()) or "none",
                ", ".join(f"{k} {v}" for k, v in states.items()) or "–", states.get("reconnecting", 0),
                end.strip() or "–",
            ]  # fmt: skip
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines += [
            "",
            "fps: while the source produced results; gaps: frames missing between results (lost before inference).",
        ]
        stages = dict(summary.get("stages_ms") or {})
        zmq = (summary.get("sinks") or {}).get("zmq") or {}
        if isinstance(zmq.get("publish_ms"), dict):
            stages["publish"] = zmq["publish_ms"]
        if stages:
            lines += ["", "## Stage latency (ms)", "", "| stage | frames | mean | p50 | p95 | p99 |"]
            lines.append("|---|---:|---:|---:|---:|---:|")
            for name, v in stages.items():
                ms = " | ".join(f"{float(v.get(k, 0.0)):.2f}" for k in ("mean", "p50", "p95", "p99"))
                lines.append(f"| {name} | {v.get('count', 0)} | {ms} |")
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
            "outputs": ("Outputs", f"What the model saw over time: {OUTPUT_UNITS.get(self.task, 'per frame')}."),
            "drops": ("Drops", "Frames dropped before inference per second (gaps in frame indices), and every "
                      "drop of the run by reason (buffer_full, stale, decode_error, until_keyframe, shutdown)."),
        }  # fmt: skip
        for key, name in images.items():
            title, caption = captions[key]
            lines += ["", f"## {title}", "", f"![{title}]({name})", "", f"*{caption}*"]
        if note:
            lines += ["", note]
        return "\n".join(lines) + "\n"


def _rates(rows: list[tuple[float, Bucket]], w: float, span: tuple[float, float]) -> tuple[np.ndarray, ...]:
    starts = np.array([s for s, _ in rows], dtype=np.float64)
    dur = np.minimum(starts + w, span[1]) - np.maximum(starts, span[0])
    ok = dur >= 0.5 * w - 1e-9
    dur = np.where(ok if ok.any() else dur > 0, dur, np.nan)  # a source shorter than a bucket: its span
    frames, dropped = (np.array([getattr(b, k) for _, b in rows], dtype=np.float64) for k in ("frames", "dropped"))
    return starts, frames / dur, dropped / dur


def _copy(st: _Stream | None) -> _Stream:
    """A stream's totals and events, without its buckets."""
    st = st or _Stream()
    return dataclasses.replace(
        st, buckets={}, total=st.total.copy(), states=Counter(st.states), events=deque(st.events)
    )


def _by_reason(summary: dict[str, Any], source_id: str, st: _Stream) -> dict[str, int]:
    """Drops by reason: the summary's (taken last), else the end-of-stream's."""
    info = summary.get("sources", {}).get(source_id)
    if info is not None and "drops" in info:
        return dict(info["drops"])
    return dict(st.eos.drops) if st.eos is not None else {}
