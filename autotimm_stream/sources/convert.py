"""Decoded video frame -> uint8 RGB array, as cheaply as correctness allows.

Plain BT.601 (or unflagged, which FFmpeg also treats as BT.601) limited-range yuv420p frames go
through OpenCV's SIMD ``cvtColor``, about 4x cheaper than FFmpeg's swscale and within 3 grey
levels of it; everything else (BT.709, full range, other pixel formats) goes through swscale,
which honours the frame's colour metadata (benchmarks/README.md).
"""

from __future__ import annotations

import av
import cv2
import numpy as np

__all__ = ["to_rgb"]

# AVColorSpace values that mean BT.601 or "unspecified"; AVColorRange: unspecified or limited (MPEG)
_BT601 = frozenset({2, 5, 6})
_LIMITED = frozenset({0, 1})


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as a contiguous ``uint8 [H, W, 3]`` RGB array."""
    if (
        frame.format.name == "yuv420p"
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and int(frame.colorspace) in _BT601
        and int(frame.color_range) in _LIMITED
    ):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")
