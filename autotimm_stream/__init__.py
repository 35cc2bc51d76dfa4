"""autotimm-stream: real-time video inference for AutoTimm-trained models.

Source -> RingBuffer -> Batcher(ModelRunner, Postprocessor) -> Result -> Sink*
"""

from __future__ import annotations

__version__ = "0.1.0"

from .batching import Batcher, BatchPolicy  # noqa: E402
from .errors import ConfigError, ModelError, SinkError, SourceError, StreamError  # noqa: E402
from .frame import Frame, FrameFlags, Prediction, Result  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .ringbuffer import Policy, RingBuffer  # noqa: E402
from .runtime.bundle import BundleMeta, load_bundle, read_meta  # noqa: E402
from .runtime.runner import ModelRunner  # noqa: E402

__all__ = [
    "__version__",
    "Batcher",
    "BatchPolicy",
    "BundleMeta",
    "ConfigError",
    "Frame",
    "FrameFlags",
    "ModelError",
    "ModelRunner",
    "Pipeline",
    "Policy",
    "Prediction",
    "Result",
    "RingBuffer",
    "SinkError",
    "SourceError",
    "StreamError",
    "load_bundle",
    "read_meta",
]
