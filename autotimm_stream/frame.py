"""The two currencies of the pipeline: a decoded :class:`Frame` goes in, a :class:`Result` comes out."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Frame", "FrameFlags", "Result", "Prediction", "Detection", "STAGES"]

# Stage names of the per-frame timings, in pipeline order (milliseconds each).
STAGES = ("decode", "queue", "preprocess", "wait", "infer", "post", "publish")


class FrameFlags(enum.IntFlag):
    """Conditions a frame was captured under; carried into its result."""

    NONE = 0
    CORRUPT = 1  # the decoder reported an error while producing this frame
    AFTER_GAP = 2  # frames were lost (dropped or undecodable) right before this one
    NO_PTS = 4  # the container gave no timestamp; ``pts`` was derived from the frame rate


@dataclass(slots=True, eq=False)
class Frame:
    """One decoded picture of one source.

    Attributes:
        source_id: id of the source, as named in the config.
        index: 0-based position of the frame in its source (counts every decoded frame, kept or not).
        pts: presentation time in seconds from the start of the source (``None`` if unknown).
        capture_ns: wall-clock time the frame left the decoder, ns since the epoch.
        image: ``uint8`` RGB array of shape ``[H, W, 3]``.
        flags: :class:`FrameFlags`.
        decode_ms: time spent decoding and converting this frame.
        time_base: the source's time base, so sinks can write exact timestamps.
        enqueued_ns: ``time.monotonic_ns()`` when the frame entered its ring buffer.
    """

    source_id: str
    index: int
    pts: float | None
    capture_ns: int
    image: np.ndarray
    flags: FrameFlags = FrameFlags.NONE
    decode_ms: float = 0.0
    time_base: Any = None
    pts_raw: int | None = None
    enqueued_ns: int = 0

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}".strip()
            raise ValueError(f"Frame.image must be a uint8 RGB array of shape [H, W, 3], got {got}")
        if self.index < 0:
            raise ValueError(f"Frame.index must be >= 0, got {self.index}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


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
            "box": [round(v, 2) for v in self.box],
            "class_id": self.class_id,
            "label": self.label,
            "score": round(self.score, 6),
        }


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
    task: str
    classes: list[Prediction] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    mask: np.ndarray | None = None
    class_fractions: list[tuple[int, str, float]] = field(default_factory=list)  # (id, name, fraction)
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    done_ns: int = 0  # time.monotonic_ns() when post-processing finished
    model: str = ""  # name of the model that produced it
    model_version: str = ""  # first 12 hex digits of the bundle file's SHA-256
    _record: dict[str, Any] | None = field(default=None, init=False, repr=False)  # cache of to_json()

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
        if self.task == "detection":
            return {"detections": [d.to_json() for d in self.detections]}
        if self.task == "segmentation":
            return {
                "class_fractions": [
                    {"class_id": i, "label": name, "fraction": round(frac, 6)} for i, name, frac in self.class_fractions
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
            "flags": [flag.name.lower() for flag in FrameFlags if flag and flag in f.flags],
            "task": self.task,
            "model": self.model,
            "model_version": self.model_version,
            "batch_size": self.batch_size,
            **self._task_record(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


def now_ns() -> int:
    """Wall-clock time in ns since the epoch."""
    return time.time_ns()


def ms_since(start_monotonic_ns: int) -> float:
    """Milliseconds elapsed since a ``time.monotonic_ns()`` reading."""
    return (time.monotonic_ns() - start_monotonic_ns) / 1e6
