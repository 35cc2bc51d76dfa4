"""Frame sources: each runs a capture thread that fills one ring buffer."""

from .base import Source, SourceInfo
from .file import FileSource, probe_video

__all__ = ["Source", "SourceInfo", "FileSource", "probe_video"]
