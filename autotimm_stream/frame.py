"""What a source hands the engine: a decoded :class:`Frame` (its result is a :class:`~.messages.Result`)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Frame", "FrameFlags", "now_ns", "ms_since"]


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


def now_ns() -> int:
    """Wall-clock time in ns since the epoch."""
    return time.time_ns()


def ms_since(start_monotonic_ns: int) -> float:
    """Milliseconds elapsed since a ``time.monotonic_ns()`` reading."""
    return (time.monotonic_ns() - start_monotonic_ns) / 1e6
