"""Decoded video frame -> uint8 RGB array, the way a source's ``color_conversion`` says.

- ``ffmpeg``: exactly the pixels ``ffmpeg -i clip.mp4 frames/%04d.png`` writes (read back as RGB),
  for every pixel format, size and colour tag: the CLI converts with the scale filter it inserts
  before the PNG encoder (swscale, bicubic), and this runs that filter in a PyAV filter graph.
  PyAV's own ``to_ndarray(format="rgb24")`` agrees for even-sized 8-bit frames but not for odd
  sizes or deeper formats (up to 9 grey levels), hence the graph.
- ``fast`` (the default): plain BT.601 (or unflagged, which FFmpeg also reads as BT.601)
  limited-range yuv420p frames of even size go through OpenCV's ``cvtColor``; every other frame
  as in ``ffmpeg``. OpenCV is within 3 grey levels of FFmpeg where luma is at or above video
  black (Y >= 16); below it OpenCV clamps luma to black, up to 21 levels apart at Y = 0.

Measurements (differences on real footage, cost per frame): docs/colour.md.
"""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

from ..config import ColorConversion

__all__ = ["COLOR_CONVERSIONS", "RgbConverter", "to_rgb"]

COLOR_CONVERSIONS: tuple[ColorConversion, ...] = ("fast", "ffmpeg")
# AVColorSpace values that mean BT.601 or "unspecified"; AVColorRange: unspecified or limited (MPEG)
_BT601 = frozenset({2, 5, 6})
_LIMITED = frozenset({0, 1})
# the scaler flags of the CLI's auto-inserted scale filter (FFmpeg 5.1 to 9.0: swscale's default, bicubic)
_CLI_SCALE = "flags=bicubic"
_GRAPH_TIME_BASE = Fraction(1, 90000)  # the graph only converts: timestamps pass through unread


def _opencv_applies(frame: av.VideoFrame) -> bool:
    return (
        frame.format.name == "yuv420p"
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and int(frame.colorspace) in _BT601
        and int(frame.color_range) in _LIMITED
    )


class RgbConverter:
    """Turns a source's decoded frames into contiguous ``uint8 [H, W, 3]`` RGB arrays.

    One per capture thread (not thread-safe): it keeps a filter graph, built at the first frame
    that needs it and again whenever the frames' size, pixel format or colour tags change (a live
    stream that comes back at another resolution).
    """

    def __init__(self, mode: ColorConversion = "fast"):
        if mode not in COLOR_CONVERSIONS:
            raise ValueError(f"color_conversion must be one of {list(COLOR_CONVERSIONS)}, got {mode!r}")
        self.mode = mode
        self._graph: av.filter.Graph | None = None
        self._key: tuple[int, int, str, int, int] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.mode == "fast" and _opencv_applies(frame):
            return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
        return self._like_ffmpeg_cli(frame)

    def _like_ffmpeg_cli(self, frame: av.VideoFrame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range))
        if self._graph is None or key != self._key:
            self._graph, self._key = self._build(*key), key
        self._graph.push(frame)
        out = self._graph.pull()
        assert isinstance(out, av.VideoFrame)  # a video graph gives video frames
        return np.ascontiguousarray(out.to_ndarray())  # rows of odd widths come padded

    @staticmethod
    def _build(width: int, height: int, pix_fmt: str, colorspace: int, color_range: int) -> av.filter.Graph:
        graph = av.filter.Graph()
        # one thread, as OpenCV's (app/build.py): each source converts on its own capture thread
        graph.threads = 1
        # the buffer is told the frames' colour tags, as the CLI's is (else it warns on every new tag)
        buffer = graph.add(
            "buffer",
            video_size=f"{width}x{height}",
            pix_fmt=pix_fmt,
            time_base=str(_GRAPH_TIME_BASE),
            pixel_aspect="1/1",
            colorspace=str(colorspace),
            range=str(color_range),
        )
        graph.link_nodes(buffer, graph.add("scale", _CLI_SCALE), graph.add("format", "rgb24"), graph.add("buffersink"))
        graph.configure()
        return graph


def to_rgb(frame: av.VideoFrame, mode: ColorConversion = "fast") -> np.ndarray:
    """One frame as ``mode`` converts it (sources keep an :class:`RgbConverter` instead: no graph per frame)."""
    return RgbConverter(mode)(frame)
