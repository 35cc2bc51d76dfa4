"""Result sinks: ZeroMQ publisher, JSONL file, annotated video, snapshot JPEGs, run report, metrics."""

from .base import Sink, SinkContext, SinkGroup, SinkRunner
from .jsonl import JsonlSink
from .metrics import MetricsSink
from .report import ReportSink
from .snapshot import SnapshotSink
from .video import VideoSink
from .zmq_pub import ZmqSink

__all__ = [
    "Sink",
    "SinkContext",
    "SinkGroup",
    "SinkRunner",
    "JsonlSink",
    "MetricsSink",
    "ReportSink",
    "SnapshotSink",
    "VideoSink",
    "ZmqSink",
]
