"""What the run report keeps per source: time buckets that merge as a run grows, and run totals.

Memory stays bounded in week-long runs: each bucket keeps at most :data:`LABELS_PER_BUCKET`
classes (the rest only in its total), and a source keeps at most ``max_buckets`` of them (adjacent
ones merge, doubling their width, see :class:`~.sink.ReportSink`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque

import numpy as np

from ...messages import EndOfStream

__all__ = ["Bucket", "StreamTotals", "LABELS_PER_BUCKET", "OTHER", "interval", "rates", "copy_totals"]

LABELS_PER_BUCKET = 16  # classes tracked per bucket (a 1000-class model must not cost 1000 per bucket)
OTHER = "(other)"
_EVENTS = 64  # latest state changes kept per source, for the markers on the fps plot


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
class StreamTotals:
    """One source's buckets, run totals, state changes and end."""

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


def interval(st: StreamTotals) -> float:
    """Mean time between one source's results; 0 before two moments. The results of the first
    moment came with no interval before them (a batch arrives at once), so they are not counted."""
    span, n = st.last_t - st.first_t, st.total.frames - st.first_n
    return span / n if span > 0 and n > 0 else 0.0


def rates(
    rows: list[tuple[float, Bucket]], w: float, span: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = np.array([s for s, _ in rows], dtype=np.float64)
    dur = np.minimum(starts + w, span[1]) - np.maximum(starts, span[0])
    ok = dur >= 0.5 * w - 1e-9
    dur = np.where(ok if ok.any() else dur > 0, dur, np.nan)  # a source shorter than a bucket: its span
    frames, dropped = (np.array([getattr(b, k) for _, b in rows], dtype=np.float64) for k in ("frames", "dropped"))
    return starts, frames / dur, dropped / dur


def copy_totals(st: StreamTotals | None) -> StreamTotals:
    """A stream's totals and events, without its buckets."""
    st = st or StreamTotals()
    return dataclasses.replace(
        st, buckets={}, total=st.total.copy(), states=Counter(st.states), events=deque(st.events)
    )
