"""What the engine tells its sinks: a :class:`Result` per frame, a :class:`StatusEvent` per state
change of a source, an :class:`EndOfStream` after a source's last result.

Sources raise status events, the worker makes results and ends of streams, sinks consume all three
(ZeroMQ publishes them as ``<task>/``, ``status/`` and ``eos/`` topics, docs/protocol.md).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .frame import Frame, FrameFlags
from .tasks import TASKS, Task

__all__ = [
    "STAGES",
    "SourceState",
    "FINAL_STATES",
    "StatusEvent",
    "EndOfStream",
    "Prediction",
    "Detection",
    "ClassFraction",
    "TaskOutputs",
    "Result",
]

# Stage names of the per-frame timings, in pipeline order (milliseconds each).
STAGES = ("decode", "queue", "preprocess", "wait", "infer", "post", "publish")


class SourceState(str, enum.Enum):
    """Where a source is in its life."""

    CONNECTING = "connecting"  # opening (first time)
    RUNNING = "running"  # frames flowing
    RECONNECTING = "reconnecting"  # lost; waiting out the backoff before the next attempt
    STOPPED = "stopped"  # ended normally (stop requested, removed, or a file's last frame)
    FAILED = "failed"  # gave up (an error, or reconnect attempts exhausted)


FINAL_STATES = frozenset({SourceState.STOPPED, SourceState.FAILED})


@dataclass(slots=True)
class StatusEvent:
    """One state change of one source (published on ``status/<source_id>``)."""

    source_id: str
    state: SourceState
    previous: SourceState | None
    reason: str = ""  # why, in words (credentials redacted)
    attempt: int = 0  # consecutive failed connection attempts so far
    retry_in_s: float | None = None  # RECONNECTING: the backoff before the next attempt
    at_ns: int = field(default_factory=time.time_ns)  # wall clock, ns since the epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "state": self.state.value,
            "previous": None if self.previous is None else self.previous.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "retry_in_s": None if self.retry_in_s is None else round(self.retry_in_s, 3),
            "at_ns": self.at_ns,
        }


@dataclass(slots=True)
class EndOfStream:
    """A source has delivered its last result."""

    source_id: str
    frames: int  # results delivered for this source
    reason: str = "end"  # "end" (source finished), "stopped", "removed" or "error"
    drops: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Prediction:
    """One scored class: ``class_id`` into the model's class list, its name and its score."""

    class_id: int
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "label": self.label, "score": round(self.score, 6)}


@dataclass(slots=True)
class Detection:
    """One detected object: ``box`` is ``(x1, y1, x2, y2)`` in source-frame pixels."""

    box: tuple[float, float, float, float]
    class_id: int
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 3) for v in self.box],  # 1e-3 px: AutoTimm's boxes to the last pixel fraction that matters
            "class_id": self.class_id,
            "label": self.label,
            "score": round(self.score, 6),
        }


class ClassFraction(NamedTuple):
    """The share of a frame's pixels that one class covers (segmentation)."""

    class_id: int
    label: str
    fraction: float


@dataclass(slots=True)
class TaskOutputs:
    """What post-processing concluded about one frame; the task decides which fields are set."""

    classes: list[Prediction] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    mask: np.ndarray | None = None
    class_fractions: list[ClassFraction] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Result:
    """What the engine concluded about one frame.

    A task only changes which output fields are set:

    - ``classes``: the top-K (classification) or every class above its threshold (multi-label),
      best first;
    - ``detections``: objects, best first, boxes in source-frame pixels (detection);
    - ``mask``: ``uint8 [H, W]`` class ids at source resolution and ``class_fractions``, the share
      of the frame's pixels per class (segmentation). The mask is not part of :meth:`to_json`;
      sinks that carry it (ZMQ) send it as a binary frame.
    """

    frame: Frame
    task: Task
    classes: list[Prediction] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    mask: np.ndarray | None = None
    class_fractions: list[ClassFraction] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    done_ns: int = 0  # time.monotonic_ns() when post-processing finished
    model: str = ""  # name of the model that produced it
    model_version: str = ""  # first 12 hex digits of the bundle file's SHA-256
    _record: dict[str, Any] | None = field(default=None, init=False, repr=False)  # cache of to_json()

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            try:
                self.task = Task(self.task)
            except ValueError:
                raise ValueError(f"Result.task must be one of {TASKS}, got {self.task!r}") from None

    @classmethod
    def of(cls, frame: Frame, task: Task, outputs: TaskOutputs, **fields: Any) -> Result:
        """The result of ``frame`` from its post-processed ``outputs`` (plus timings and model fields)."""
        return cls(
            frame,
            task,
            classes=outputs.classes,
            detections=outputs.detections,
            mask=outputs.mask,
            class_fractions=outputs.class_fractions,
            **fields,
        )

    @property
    def source_id(self) -> str:
        return self.frame.source_id

    @property
    def index(self) -> int:
        return self.frame.index

    def to_json(self) -> dict[str, Any]:
        """The JSON-able record of this result, built once and shared by every sink: do not mutate it."""
        if self._record is None:
            self._record = self._build_record()
        return self._record

    def _task_record(self) -> dict[str, Any]:
        if self.task is Task.DETECTION:
            return {"detections": [d.to_json() for d in self.detections]}
        if self.task is Task.SEGMENTATION:
            return {
                "class_fractions": [
                    {"class_id": c.class_id, "label": c.label, "fraction": round(c.fraction, 6)}
                    for c in self.class_fractions
                ]
            }
        return {"classes": [p.to_json() for p in self.classes]}

    def _build_record(self) -> dict[str, Any]:
        f = self.frame
        return {
            "source_id": f.source_id,
            "frame_index": f.index,
            "pts": None if f.pts is None else round(f.pts, 6),
            "capture_ns": f.capture_ns,
            "width": f.width,
            "height": f.height,
            "flags": [flag.name.lower() for flag in FrameFlags if flag and flag in f.flags and flag.name],
            "task": self.task.value,
            "model": self.model,
            "model_version": self.model_version,
            "batch_size": self.batch_size,
            **self._task_record(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }
