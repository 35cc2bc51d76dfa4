"""Frame sources: each runs a capture thread that fills one ring buffer."""

from .base import Source, SourceInfo
from .file import FileSource, probe_video
from .folder import FolderSource
from .live import LiveSource, StreamSpec, camera_spec, redact_url, rtsp_spec, testsrc_spec

__all__ = [
    "Source",
    "SourceInfo",
    "FileSource",
    "FolderSource",
    "LiveSource",
    "StreamSpec",
    "camera_spec",
    "probe_video",
    "redact_url",
    "rtsp_spec",
    "testsrc_spec",
]
