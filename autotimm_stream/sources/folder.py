"""Still images in a folder, read in name order as the frames of a video."""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from fractions import Fraction

import cv2

from ..errors import SourceError
from ..frame import FrameFlags
from ..ringbuffer import RingBuffer
from .base import Source, SourceInfo

__all__ = ["FolderSource", "IMAGE_EXTENSIONS"]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class FolderSource(Source):
    """Every image of a folder (sorted by name, filtered by ``pattern``) at ``fps``.

    Image ``i`` gets PTS ``i / fps``. Images may differ in size. A file OpenCV cannot decode is
    skipped and counted as a ``decode_error`` drop; the next image carries ``CORRUPT | AFTER_GAP``.
    """

    def __init__(
        self,
        source_id: str,
        folder: str,
        buffer: RingBuffer,
        *,
        pattern: str = "*",
        fps: float = 25.0,
        realtime: bool = False,
    ):
        super().__init__(source_id, buffer)
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.folder = str(folder)
        self.pattern = pattern
        self.fps = fps
        self.realtime = realtime
        self.files: list[str] = []

    def describe(self) -> str:
        return os.path.join(self.folder, self.pattern)

    def open(self) -> SourceInfo:
        where = f"source {self.source_id!r}"
        if not os.path.isdir(self.folder):
            raise SourceError(f"{where}: {self.folder!r} is not a folder; expected a folder of images")
        names = sorted(
            n
            for n in os.listdir(self.folder)
            if fnmatch.fnmatch(n, self.pattern) and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        )
        if not names:
            raise SourceError(
                f"{where}: no images matching {self.pattern!r} in {self.folder!r}; expected files ending in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
            )
        self.files = [os.path.join(self.folder, n) for n in names]
        first = self._read(self.files[0])
        h, w = first.shape[:2] if first is not None else (0, 0)
        self.info = SourceInfo(w, h, self.fps, Fraction(1, 90000), len(self.files))
        return self.info

    @staticmethod
    def _read(path: str):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _run(self) -> None:
        pending = FrameFlags.NONE
        wall0 = time.monotonic()
        tb = Fraction(1, 90000)
        for i, path in enumerate(self.files):
            if self.halted.is_set():
                return
            t0 = time.perf_counter()
            image = self._read(path)
            if image is None:
                self.buffer.drop("decode_error")
                pending |= FrameFlags.CORRUPT | FrameFlags.AFTER_GAP
                _logger.warning("source %s: %s is not an image OpenCV can read; skipped", self.source_id, path)
                continue
            pts = i / self.fps
            if self.realtime:
                delay = pts - (time.monotonic() - wall0)
                if delay > 0 and self.halted.wait(delay):
                    return
            flags, pending = pending, FrameFlags.NONE
            decode_ms = (time.perf_counter() - t0) * 1e3
            if not self._deliver(image, pts, flags, decode_ms, tb, int(round(pts / tb)), index=i):
                return
