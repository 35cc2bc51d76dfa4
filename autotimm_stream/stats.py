"""Bounded-memory counters and latency statistics for the run summary."""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

__all__ = ["Ewma", "StageStats"]

_RESERVOIR = 4096  # latest samples kept for percentiles; memory stays bounded in week-long runs


class Ewma:
    """Exponentially weighted mean of recent values (any unit); 0 until the first sample, which it
    takes as it is. Not locked: one thread adds, others may read ``value``."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.value = 0.0

    def add(self, x: float) -> None:
        self.value = x if self.value == 0.0 else self.value + self.alpha * (x - self.value)


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

    def summary(self) -> dict[str, Any]:
        with self._lock:
            recent = np.array(self._recent, dtype=np.float64).reshape(-1, 2)
            count, mean = self.count, self.mean
        if not recent.size:
            return {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
        # percentiles per frame, as count and mean are (bounded: reservoir x batch size values)
        per_frame = np.repeat(recent[:, 0], recent[:, 1].astype(np.int64))
        p50, p95, p99 = np.percentile(per_frame, [50, 95, 99])
        return {
            "count": count,
            "mean": round(mean, 3),
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
        }
