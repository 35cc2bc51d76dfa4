"""Result sinks: ZeroMQ publisher, JSONL file, annotated video, snapshot JPEGs."""

from .base import EndOfStream, Sink, SinkRunner
from .jsonl import JsonlSink
from .snapshot import SnapshotSink
from .video import VideoSink
from .zmq_pub import ZmqSink

__all__ = ["EndOfStream", "Sink", "SinkRunner", "JsonlSink", "SnapshotSink", "VideoSink", "ZmqSink"]
