"""Writes annotated H.264 video, one file per source, timestamps taken from the source.

The output stream uses the source's time base and each frame keeps its source PTS, so the video
plays at the right speed even when frames were dropped. The MP4 is fragmented and flushed per
fragment, so a killed engine leaves a playable file missing at most about a second.

A source removed and added again under the same id gets a new file (``_2``, ``_3``... before the
extension), never overwriting the first; :meth:`VideoSink.stats` lists every file, the first of a
source under its id and later ones under ``<id>#2``, ``<id>#3``...
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Any

import av
import cv2

from ..config import VideoConfig
from ..errors import SinkError
from ..fileio import unused_path
from ..messages import EndOfStream, Result
from .annotate import draw_result
from .base import Sink

__all__ = ["VideoSink", "video_path"]

_logger = logging.getLogger(__name__)
_FALLBACK_TB = Fraction(1, 90000)


def video_path(template: str, source_id: str, several: bool) -> str:
    """``template`` with ``{source}`` filled in; with several sources and no placeholder, ``_<id>`` is added."""
    if "{source}" in template:
        return template.format(source=source_id)
    if not several:
        return template
    root, ext = os.path.splitext(template)
    return f"{root}_{source_id}{ext or '.mp4'}"


class _Writer:
    def __init__(
        self, path: str, width: int, height: int, time_base: Fraction, fps: float | None, options: dict[str, str]
    ):
        self.path = path
        self.key = ""  # the file's key in VideoSink.stats (the source id, or "<id>#N" for a later session)
        # delay_moov, not empty_moov: the moov goes out with the first fragment, once the first
        # timestamp is known, so a video whose first frame is not at 0 (leading frames dropped, a
        # live stream's connect delay) starts with an edit list at that time instead of being
        # shifted to 0 by the muxer.
        self.container = av.open(
            path,
            "w",
            format="mp4",
            options={
                "movflags": "frag_keyframe+delay_moov+default_base_moof",
                "flush_packets": "1",
                "frag_duration": "1000000",
            },
        )
        rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
        self.stream = self.container.add_stream("libx264", rate=rate, options=options)
        self.stream.width = width - width % 2  # yuv420p needs even sizes
        self.stream.height = height - height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = time_base
        # The encoder's clock must be the source's too: a 1/fps clock would round variable-rate
        # timestamps together and the muxer would refuse the duplicates.
        self.stream.codec_context.time_base = time_base
        self.time_base = time_base
        self.last_pts: int | None = None
        self.frames = 0

    def write(self, result: Result) -> None:
        f = result.frame
        if f.pts_raw is not None and f.time_base == self.time_base:
            pts = int(f.pts_raw)
        else:
            pts = int(round((f.pts or 0.0) / self.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # the muxer refuses non-increasing timestamps
        self.last_pts = pts
        image = draw_result(result)
        if image.shape[0] != self.stream.height or image.shape[1] != self.stream.width:
            if image.shape[0] - self.stream.height in (0, 1) and image.shape[1] - self.stream.width in (0, 1):
                image = image[: self.stream.height, : self.stream.width]  # odd size: yuv420p drops a row
            else:  # a live stream came back at another size: keep one file, one size
                image = cv2.resize(image, (self.stream.width, self.stream.height), interpolation=cv2.INTER_AREA)
        vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        vf.pts = pts
        vf.time_base = self.time_base
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


class VideoSink(Sink):
    """Annotated H.264 (yuv420p, browser-playable) MP4 per source.

    ``paths`` and ``frames`` hold every file written, keyed by source id, or ``<id>#N`` for the
    N-th time a source was added (whose file gets a ``_N`` suffix, so none is overwritten).

    Args:
        path_template: the file, or with ``{source}`` one per source (also in a folder name).
        settings: the config's ``sinks.video`` (``crf``, ``preset``; its filename is not read here).
        several_sources: name the file of each source after it even without ``{source}``.
        fps: frame rate per source id, when known (the stream's declared rate).
    """

    name = "video"

    def __init__(
        self,
        path_template: str,
        settings: VideoConfig | None = None,
        *,
        several_sources: bool = False,
        fps: dict[str, float | None] | None = None,
    ):
        settings = settings or VideoConfig()
        self.path_template = path_template
        self.several = several_sources
        self.fps = fps or {}
        self.options = {"crf": str(settings.crf), "preset": settings.preset, "tune": "zerolatency"}
        self._writers: dict[str, _Writer] = {}
        self.paths: dict[str, str] = {}  # key (see the class docstring) -> file
        self.frames: dict[str, int] = {}  # key -> frames written, once the file is closed
        self._sessions: dict[str, int] = {}  # source -> files started for it
        self._used: set[str] = set()

    def open(self) -> None:
        # the folder the files go in, up to the first part named after the source, if any; it and
        # the subfolders of the filename ("videos/annotated.mp4", "{source}/annotated.mp4") are
        # made when a source's first frame arrives, so what must be writable now is the nearest
        # folder that exists
        folder = os.path.dirname(os.path.abspath(self.path_template.split("{source}")[0] + "x"))
        existing = folder
        while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise SinkError(
                f"sinks.video.filename: {existing!r} is not a folder, but {self.path_template!r} needs one there; "
                "pick a filename whose folders are not existing files"
            )
        if not os.access(existing, os.W_OK):
            raise SinkError(
                f"sinks.video: cannot write into {existing!r}, where {self.path_template!r} goes; expected a "
                "writable folder: pick a writable output_dir (or a sinks.video.filename in a writable folder)"
            )

    def _writer(self, r: Result) -> _Writer:
        w = self._writers.get(r.source_id)
        if w is None:
            # a source removed and added again: never overwrite its file
            path = unused_path(video_path(self.path_template, r.source_id, self.several), self._used)
            self._used.add(path)
            tb = r.frame.time_base if isinstance(r.frame.time_base, Fraction) else _FALLBACK_TB
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                w = _Writer(path, r.frame.width, r.frame.height, tb, self.fps.get(r.source_id), self.options)
            except (OSError, av.error.FFmpegError) as exc:
                raise SinkError(f"sinks.video: cannot create {path!r} ({exc})") from None
            n = self._sessions[r.source_id] = self._sessions.get(r.source_id, 0) + 1
            w.key = r.source_id if n == 1 else f"{r.source_id}#{n}"
            self._writers[r.source_id] = w
            self.paths[w.key] = path
        return w

    def write(self, results: list[Result]) -> None:
        for r in results:
            self._writer(r).write(r)

    def end_of_stream(self, eos: EndOfStream) -> None:
        w = self._writers.pop(eos.source_id, None)
        if w is not None:
            self._close(w)

    def _close(self, w: _Writer) -> None:
        self.frames[w.key] = w.frames
        w.close()
        _logger.info("video %s: %d frames", w.path, w.frames)

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        for w in writers.values():
            try:
                self._close(w)
            except (OSError, av.error.FFmpegError) as exc:
                _logger.error("video %s: close failed: %s", w.path, exc)

    def stats(self) -> dict[str, Any]:
        return {"paths": dict(self.paths), "frames": dict(self.frames)}

    def summary_lines(self) -> list[str]:
        return [f"video: {p}" for p in self.paths.values()]
