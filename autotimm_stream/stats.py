"""Run statistics: bounded-memory latency counters, and the typed snapshot every reader shares.

:class:`PipelineStats` (with a :class:`SourceStats` per source) is produced in one place,
``Pipeline.stats()``; the summary JSON, the control channel, the Prometheus collector, the
heartbeats, the progress bar, the printed summary and the run report all read it.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Ewma",
    "StageStats",
    "StageSummary",
    "LiveStats",
    "SourceStats",
    "ReplacedStats",
    "PipelineStats",
]

_RESERVOIR = 4096  # latest samples kept for percentiles; memory stays bounded in week-long runs


class Ewma:
    """Exponentially weighted mean of recent values (any unit); 0 until the first sample, which it
    takes as it is. Not locked: one thread adds, others may read ``value``."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.value = 0.0

    def add(self, x: float) -> None:
        self.value = x if self.value == 0.0 else self.value + self.alpha * (x - self.value)


@dataclass(frozen=True, slots=True)
class StageSummary:
    """Count, mean and recent percentiles of one stage, in milliseconds per frame."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "p50": self.p50, "p95": self.p95, "p99": self.p99}


class StageStats:
    """Count, mean and recent percentiles of one stage's latency, in milliseconds. Thread-safe."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        # (ms, frames) of the latest records: a batch stage's value stands for each of its frames
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=_RESERVOIR)
        self._lock = threading.Lock()

    def add(self, ms: float, n: int = 1) -> None:
        """Record ``ms`` for ``n`` frames at once (a batch stage counts once per frame)."""
        with self._lock:
            self.count += n
            self.total += ms * n
            self._recent.append((ms, n))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self) -> StageSummary:
        with self._lock:
            recent = np.array(self._recent, dtype=np.float64).reshape(-1, 2)
            count, mean = self.count, self.mean
        if not recent.size:
            return StageSummary()
        # percentiles per frame, as count and mean are (bounded: reservoir x batch size values)
        per_frame = np.repeat(recent[:, 0], recent[:, 1].astype(np.int64))
        p50, p95, p99 = np.percentile(per_frame, [50, 95, 99])
        return StageSummary(count, round(mean, 3), round(float(p50), 3), round(float(p95), 3), round(float(p99), 3))


@dataclass(frozen=True, slots=True)
class LiveStats:
    """What a reconnecting source counts beyond frames."""

    sessions: int  # sessions opened
    reconnects: int  # sessions lost after they ran
    failed_attempts: int  # connection attempts that failed, in total
    fps: float | None  # the stream's frame rate, once known

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "failed_attempts": self.failed_attempts,
            "fps": self.fps,
        }


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source at one moment."""

    source_id: str
    uri: str  # where its frames come from, credentials redacted
    state: str | None  # a SourceState value; None before the source started
    states_entered: dict[str, int]  # state -> times entered
    frames_decoded: int
    frames_out: int  # results delivered
    drops: dict[str, int]  # reason -> frames lost before inference
    queue_depth: int  # frames waiting in its ring buffer
    queue_capacity: int
    removed: bool  # removed at run time (its last results may still be on their way)
    error: str | None
    live: LiveStats | None = None  # reconnecting sources only

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def to_json(self) -> dict[str, Any]:
        """The source's record in the run summary."""
        out: dict[str, Any] = {
            "uri": self.uri,
            "frames_decoded": self.frames_decoded,
            "frames_out": self.frames_out,
            "drops": dict(self.drops),
            "state": self.state,
            "states_entered": dict(self.states_entered),
            "error": self.error,
        }
        if self.live is not None:
            out.update(self.live.to_json())
        return out


@dataclass(slots=True)
class ReplacedStats:
    """Totals of the earlier sources of an id that was removed and added again."""

    sessions: int = 0
    frames_decoded: int = 0
    frames_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def add(self, frames_decoded: int, frames_out: int, drops: dict[str, int]) -> None:
        self.sessions += 1
        self.frames_decoded += frames_decoded
        self.frames_out += frames_out
        self.drops = dict(collections.Counter(self.drops) + collections.Counter(drops))

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "frames_decoded": self.frames_decoded,
            "frames_out": self.frames_out,
            "drops": dict(self.drops),
        }


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A whole run at one moment: frames, sources, stage latencies, sinks and the run's state."""

    frames: int  # results delivered, replaced sources included
    elapsed_s: float
    batch_size_mean: float
    sources: dict[str, SourceStats]  # every source of the run by id (removed ones too), oldest first
    current: tuple[str, ...]  # ids of the sources the pipeline runs now
    replaced: dict[str, ReplacedStats]
    stages: dict[str, StageSummary]  # the worker's stages (decode .. post)
    sink_stages: dict[str, StageSummary]  # stages sinks measure (publish)
    sinks: dict[str, dict[str, Any]]  # each sink's own statistics, by sink name
    torch_threads: dict[str, int]
    support_priority: str  # "low" or "normal", as decided at start
    error: str | None  # what broke the run (the worker's error, or a sink's once closed)
    failure: str | None = None  # the first line of the worker's or any sink's error so far (health checks)
    started: bool = False
    done: bool = False  # the worker has delivered everything
    stopping: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def drops(self) -> int:
        return sum(s.dropped for s in self.sources.values()) + sum(
            sum(r.drops.values()) for r in self.replaced.values()
        )

    @property
    def current_sources(self) -> list[SourceStats]:
        return [self.sources[sid] for sid in self.current if sid in self.sources]

    @property
    def all_stages(self) -> dict[str, StageSummary]:
        """Every stage in pipeline order, the sinks' (publish) last."""
        return {**self.stages, **self.sink_stages}

    def to_json(self) -> dict[str, Any]:
        """The run summary (``summary.json``, control ``stats``)."""
        return {
            "frames": self.frames,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
            "batch_size_mean": round(self.batch_size_mean, 2),
            "sources": {sid: s.to_json() for sid, s in self.sources.items()},
            # earlier sources whose id was added again (``sources`` shows the latest one)
            "replaced": {sid: r.to_json() for sid, r in self.replaced.items()},
            "drops": self.drops,
            "stages_ms": {name: s.to_json() for name, s in self.stages.items()},
            "sinks": {name: dict(s) for name, s in self.sinks.items()},
            "torch_threads": dict(self.torch_threads),
            "support_priority": self.support_priority,
            "error": self.error,
        }
