"""autotimm-stream: real-time video inference for AutoTimm-trained models.

    Source -> RingBuffer -> Batcher(ModelRunner, Postprocessor) -> Result -> Sink*

The public names below load on first use, so light entry points (``autotimm-stream listen``)
start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Batcher": "batching",
    "BatchPolicy": "batching",
    "BundleMeta": "runtime.bundle",
    "ConfigError": "errors",
    "Frame": "frame",
    "FrameFlags": "frame",
    "ModelError": "errors",
    "ModelRunner": "runtime.runner",
    "Pipeline": "pipeline",
    "Policy": "ringbuffer",
    "Prediction": "frame",
    "Result": "frame",
    "RingBuffer": "ringbuffer",
    "SinkError": "errors",
    "SourceError": "errors",
    "StreamError": "errors",
    "load_bundle": "runtime.formats",
    "read_meta": "runtime.formats",
    "ControlServer": "control",
    "FileSource": "sources",
    "FolderSource": "sources",
    "LiveSource": "sources",
    "ReconnectPolicy": "sources",
    "SourceState": "sources",
    "StatusEvent": "sources",
    "StreamSpec": "sources",
    "build_pipeline": "app",
    "build_source": "app",
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
