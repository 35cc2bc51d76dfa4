"""Runs a bundle's network on one device: preprocessing, forward, warm-up.

Device and precision are decided once, here. On the CPU the network is frozen and optimised for
inference (constant-folded weights, fused conv+bn); on CUDA it can run in fp16 and channels_last.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..preprocess import preprocess_batch
from .bundle import load_bundle

__all__ = ["ModelRunner", "resolve_device"]

_logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"model.device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"model.device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {name!r}")
    return device


class ModelRunner:
    """A loaded bundle, ready for batched inference.

    Args:
        path: the bundle file.
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        fp16: run in half precision (CUDA only; ignored with a warning on the CPU).
        channels_last: feed NHWC-strided input (fast on CUDA tensor cores and for some CPU convs).
        optimize: freeze and optimise the TorchScript graph for inference.
        threads: torch intra-op threads (``None`` keeps torch's default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        fp16: bool = False,
        channels_last: bool = False,
        optimize: bool = True,
        threads: int | None = None,
    ):
        self.device = resolve_device(device)
        if fp16 and self.device.type != "cuda":
            _logger.warning("fp16 needs CUDA; running in fp32 on %s", self.device)
            fp16 = False
        self.dtype = torch.float16 if fp16 else torch.float32
        self.channels_last = channels_last
        if threads:
            torch.set_num_threads(threads)
        module, self.meta = load_bundle(path, self.device)
        self.path = os.fspath(path)
        if fp16:
            module = module.half()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        if optimize:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                module = torch.jit.freeze(module)
                if self.device.type == "cpu":
                    module = torch.jit.optimize_for_inference(module)
        self.module = module
        self.spec = self.meta.preprocess_spec()

    @property
    def meta_name(self) -> str:
        return self.meta.model_name or os.path.basename(self.path)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames -> normalised model input on the device."""
        return preprocess_batch(images, self.spec, self.device, self.dtype, self.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output for a preprocessed batch (float32)."""
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), iterations: int = 2) -> None:
        """Run dummy batches so the first real frames do not pay for graph optimisation."""
        h, w = self.spec.size
        for b in batch_sizes:
            x = torch.zeros((b, 3, h, w), dtype=self.dtype, device=self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                for _ in range(iterations):
                    out = self.forward(x)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(
                    f"model bundle {self.path!r} fails on a [{b}, 3, {h}, {w}] input, the size its metadata "
                    f"declares ({first}); re-export it with the right --image-size"
                ) from None
            if out.ndim != 2 or out.shape[1] != self.meta.num_classes:
                raise ModelError(
                    f"model bundle {self.path!r} outputs shape {tuple(out.shape)} but lists "
                    f"{self.meta.num_classes} classes; expected [batch, {self.meta.num_classes}]: re-export it"
                )
        self.synchronize()
