"""autotimm-stream: real-time video inference for AutoTimm-trained models.

    Source -> RingBuffer -> Worker(Batcher, ModelRunner, Postprocessor) -> Result -> Sink*

See docs/architecture.md for the layers and where to add a source, a sink or a task.

The public names below load on first use, so light entry points (``autotimm-stream listen``)
start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Batcher": "batching",
    "BatchPolicy": "config",
    "BundleMeta": "runtime.bundle",
    "ConfigError": "errors",
    "ControlServer": "app.control",
    "Detection": "messages",
    "EndOfStream": "messages",
    "FileSource": "sources",
    "FolderSource": "sources",
    "Frame": "frame",
    "FrameFlags": "frame",
    "LiveOptions": "config",
    "LiveSource": "sources",
    "ModelError": "errors",
    "ModelRunner": "runtime.runner",
    "Pipeline": "pipeline",
    "PipelineStats": "stats",
    "Policy": "ringbuffer",
    "Prediction": "messages",
    "ReconnectPolicy": "config",
    "Result": "messages",
    "RingBuffer": "ringbuffer",
    "RunConfig": "config",
    "Sink": "sinks.base",
    "SinkError": "errors",
    "Source": "sources.base",
    "SourceError": "errors",
    "SourceState": "messages",
    "SourceStats": "stats",
    "StatusEvent": "messages",
    "StreamError": "errors",
    "StreamSpec": "sources",
    "Task": "tasks",
    "build_pipeline": "app",
    "build_source": "app",
    "load_bundle": "runtime.load",
    "load_config": "config",
    "read_meta": "runtime.load",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autotimm_stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
