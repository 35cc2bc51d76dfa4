"""Result sinks: ZeroMQ publisher, JSONL file, annotated video."""

from .base import EndOfStream, Sink, SinkRunner
from .jsonl import JsonlSink
from .video import VideoSink
from .zmq_pub import ZmqSink

__all__ = ["EndOfStream", "Sink", "SinkRunner", "JsonlSink", "VideoSink", "ZmqSink"]
