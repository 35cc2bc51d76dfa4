"""Video files decoded with PyAV on a capture thread."""

from __future__ import annotations

import logging
import os
import time
from fractions import Fraction

import av

from ..config import ColorConversion
from ..errors import SourceError
from ..frame import FrameFlags
from ..ringbuffer import RingBuffer
from .base import Source, SourceInfo
from .convert import RgbConverter

__all__ = ["FileSource", "probe_video"]

_logger = logging.getLogger(__name__)


def _open_container(path: str, source_id: str) -> av.container.InputContainer:
    where = f"source {source_id!r}"
    if not os.path.exists(path):
        raise SourceError(f"{where}: no such file {path!r}; expected an existing video file (check the path)")
    if os.path.isdir(path):
        raise SourceError(f"{where}: {path!r} is a folder; expected a video file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{where}: {path!r} is not readable; fix its permissions or run as its owner")
    try:
        container = av.open(path, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"{where}: {path!r} is not a video FFmpeg can read ({exc}); expected a video file such as MP4/MKV/AVI"
        ) from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{where}: {path!r} has no video stream; expected a file with at least one video track")
    return container


def probe_video(path: str, source_id: str = "probe") -> SourceInfo:
    """Open ``path`` just long enough to describe its first video stream (raises SourceError)."""
    with _open_container(path, source_id) as container:
        return _describe(container.streams.video[0])


def _describe(stream: av.video.stream.VideoStream) -> SourceInfo:
    rate = stream.average_rate or stream.guessed_rate
    frames = stream.frames or None
    if frames is None and stream.duration is not None and stream.time_base is not None and rate:
        frames = int(round(float(stream.duration * stream.time_base) * float(rate)))
    return SourceInfo(
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=float(rate) if rate else None,
        time_base=stream.time_base,
        frames=frames,
    )


class FileSource(Source):
    """Decodes every frame of a video file, in order, into the ring buffer.

    PTS are taken from the container (seconds from the first frame's PTS, so files whose stream
    starts at a non-zero PTS still begin at 0). Undecodable packets are skipped and counted as
    ``decode_error`` drops; the next frame carries ``CORRUPT | AFTER_GAP``. Frames the decoder
    marks as concealed carry ``CORRUPT``. With ``realtime`` the
    source paces itself at the file's own speed, which makes a file behave like a live camera.
    ``color_conversion`` says how frames become RGB (:mod:`.convert`).
    """

    def __init__(
        self,
        source_id: str,
        path: str,
        buffer: RingBuffer,
        *,
        decode_threads: int = 0,
        realtime: bool = False,
        color_conversion: ColorConversion = "fast",
    ):
        super().__init__(source_id, buffer)
        self.path = str(path)
        self.decode_threads = decode_threads
        self.realtime = realtime
        self.to_rgb = RgbConverter(color_conversion)
        self._container: av.container.InputContainer | None = None

    def describe(self) -> str:
        return self.path

    def open(self) -> SourceInfo:
        if self._container is None:
            self._container = _open_container(self.path, self.source_id)
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.decode_threads
            self.info = _describe(stream)
        assert self.info is not None
        return self.info

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _run(self) -> None:
        assert self._container is not None
        stream = self._container.streams.video[0]
        time_base: Fraction = stream.time_base or Fraction(1, 90000)
        fps = self.info.fps if self.info and self.info.fps else 25.0
        start_pts: int | None = None
        pending = FrameFlags.NONE
        wall0 = time.monotonic()
        t0 = time.perf_counter()
        for packet in self._container.demux(stream):
            if self.halted.is_set():
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.buffer.drop("decode_error")
                pending |= FrameFlags.CORRUPT | FrameFlags.AFTER_GAP
                _logger.warning("source %s: undecodable packet skipped (%s)", self.source_id, exc)
                continue
            for vframe in decoded:
                image = self.to_rgb(vframe)
                decode_ms = (time.perf_counter() - t0) * 1e3
                flags, pending = pending, FrameFlags.NONE
                if vframe.is_corrupt:  # the decoder concealed damage in this very frame
                    flags |= FrameFlags.CORRUPT
                if vframe.pts is None:
                    flags |= FrameFlags.NO_PTS
                    pts = self.frames_decoded / fps
                    raw = None
                else:
                    if start_pts is None:
                        start_pts = vframe.pts
                    raw = vframe.pts - start_pts
                    pts = float(raw * time_base)
                if self.realtime:
                    delay = pts - (time.monotonic() - wall0)
                    if delay > 0 and self.halted.wait(delay):
                        return
                if not self._deliver(image, pts, flags, decode_ms, time_base, raw):
                    return
                t0 = time.perf_counter()
