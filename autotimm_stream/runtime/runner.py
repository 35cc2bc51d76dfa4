"""Runs a bundle's network on one device: preprocessing, forward, warm-up.

Device and precision are decided once, here. On the CPU a TorchScript network is frozen and
optimised for inference (constant-folded weights, fused conv+bn); on CUDA it can run in fp16 and
channels_last. Which format the bundle holds is :mod:`.formats`' business, not the runner's.

On CUDA, preprocessing (the pinned host-to-device copy and the resize) runs on its own CUDA stream
and the forward pass on another, so the engine's preprocessing thread readies batch n+1 on the GPU
while batch n is in the network (on the one default stream they would take turns). Tensors cross
streams safely: the consuming stream waits for the producing one (an event, not a host wait) and
records itself on the tensor (``Tensor.record_stream``), so the caching allocator does not hand
its memory to new work while an older kernel still reads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..config import DEVICE_HINT, parse_device
from ..errors import ConfigError, ModelError, first_line
from ..tasks import Task
from .bundle import BundleMeta
from .load import Network
from .preprocess import FIDELITIES, RESIZE_ON, exact_for, preprocess_batch

__all__ = ["PRECISIONS", "ModelRunner", "cpu_has_bf16", "resolve_device", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of native bfloat16 arithmetic (AVX512-BF16: Zen 4, Cooper Lake on; AMX: Sapphire Rapids on)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a configuration error."""
    try:
        kind, _ = parse_device(name)
    except ValueError:
        raise ConfigError(f"model.device: {DEVICE_HINT}, got {name!r}") from None
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (its flags name AVX512-BF16 or AMX-BF16).

    oneDNN also runs bf16 on CPUs without them, emulated and slower than fp32, so torch's own
    "supported" answer is not the one that matters. Without ``/proc/cpuinfo`` (not Linux), torch's
    answer is used.
    """
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _BF16_FLAGS)
    except OSError:
        pass
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype ``precision`` (one of PRECISIONS) runs in on ``device``, or a ConfigError saying why not.

    fp16 on the CPU falls back to fp32 with a warning (torch's CPU fp16 convolutions are slow);
    bf16 needs a CPU with native bf16 or a CUDA GPU that supports it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"model.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        _logger.warning("fp16 needs CUDA; running in fp32 on %s (bf16 is the CPU's reduced precision)", device)
        return torch.float32
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"model.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16"
            )
        if device.type == "cpu" and not cpu_has_bf16():
            raise ConfigError(
                "model.precision: bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX: AMD Zen 4, Intel "
                "Cooper Lake or later); this one has neither, and emulated bf16 is slower than fp32: use fp32"
            )
    return _DTYPES[precision]


def file_version(path: str) -> str:
    """The first 12 hex digits of a file's SHA-256: names exactly which weights produced a result."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class ModelRunner:
    """A loaded bundle, ready for batched inference.

    Args:
        path: the bundle file.
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        precision: ``fp32``, ``bf16`` (CPUs with native bf16, CUDA) or ``fp16`` (CUDA; fp32 with a
            warning on the CPU): the weights' and the input's dtype. Outputs come back in fp32.
        fp16: the older switch for ``precision="fp16"``.
        channels_last: feed NHWC-strided input (fast on CUDA tensor cores and for some CPU convs;
            always on for bf16 on the CPU, where oneDNN's bf16 convolutions need it to be fast).
        optimize: freeze and optimise the TorchScript graph for inference.
        threads: torch intra-op threads (``None`` keeps torch's default).
        fidelity: ``exact`` resizes and normalises with the training library's arithmetic, bit for
            bit; ``fast`` allows torch's faster kernels (one grey level); ``auto`` is exact where
            that is cheap (:func:`.preprocess.exact_for`).
        resize_on: CUDA: where exact resizing runs, ``device`` or ``host``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        precision: str = "fp32",
        fp16: bool = False,
        channels_last: bool = False,
        optimize: bool = True,
        threads: int | None = None,
        fidelity: str = "auto",
        resize_on: str = "device",
    ):
        self.device = resolve_device(device)
        if fp16 and precision not in ("fp32", "fp16"):
            raise ConfigError(f"model.fp16 is true but model.precision is {precision!r}; set only model.precision")
        self.precision = "fp16" if fp16 else precision
        self.dtype = resolve_precision(self.precision, self.device)
        if self.dtype == torch.float32:
            self.precision = "fp32"
        # measured: bf16 resnet18 and the demo detector on 2 cores, 7.0 / 19.8 ms per batch of 4 in
        # channels_last against 16.9 / 35.9 contiguous (fp32: 16.0 / 39.4)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            channels_last = True
        self.channels_last = channels_last
        if resize_on not in RESIZE_ON:
            raise ConfigError(f"model.resize_on must be one of {RESIZE_ON}, got {resize_on!r}")
        if fidelity not in FIDELITIES:
            raise ConfigError(f"model.fidelity must be one of {FIDELITIES}, got {fidelity!r}")
        self.resize_on = resize_on
        if threads:
            torch.set_num_threads(threads)
        self.network = Network(path, self.device, dtype=self.dtype, channels_last=channels_last, optimize=optimize)
        self.meta: BundleMeta = self.network.meta
        self.format = self.network.format
        self.dtype = self.network.input_dtype
        self.path = os.fspath(path)
        self.spec = self.meta.preprocess_spec()
        self.exact = exact_for(fidelity, self.spec, self.device)
        if fidelity == "auto" and not self.exact:
            _logger.info(
                "%s: resizing with torch's antialiased kernel, within one grey level of Pillow's "
                "(model.fidelity: exact for Pillow itself, bit for bit, at 4-6x the CPU cost)",
                self.meta_name,
            )
        self.model_version = file_version(self.path)
        cuda = self.device.type == "cuda"
        self._prep_stream = torch.cuda.Stream(self.device) if cuda else None
        self._infer_stream = torch.cuda.Stream(self.device) if cuda else None

    @property
    def meta_name(self) -> str:
        return self.meta.model_name or os.path.basename(self.path)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames -> normalised model input on the device, ready when this returns."""
        if self._prep_stream is None:
            return preprocess_batch(
                images, self.spec, self.device, self.dtype, self.channels_last, self.exact, self.resize_on
            )
        with torch.cuda.stream(self._prep_stream):
            x = preprocess_batch(
                images, self.spec, self.device, self.dtype, self.channels_last, self.exact, self.resize_on
            )
        self._prep_stream.synchronize()  # waits for this batch's copy and resize only, not the model
        return x

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The network's raw outputs for a preprocessed batch (float32, on the device).

        ``x`` may be several preprocessed parts of one batch (frames that joined it late): they are
        concatenated here. On CUDA the work is queued on the runner's inference stream and the
        caller's current stream is made to wait for it, so the outputs can be used as any tensor
        (:meth:`synchronize` waits for them on the host).
        """
        parts = [x] if isinstance(x, torch.Tensor) else list(x)
        if self._infer_stream is None:
            with torch.inference_mode():
                out = self.network(parts[0] if len(parts) == 1 else torch.cat(parts))
            return tuple(o.float() for o in out)
        caller = torch.cuda.current_stream(self.device)
        # input made on the caller's stream (warm-up zeros, a caller's own tensors) must be written
        # before the network reads it; the engine's come ready from preprocess()
        self._infer_stream.wait_stream(caller)
        with torch.cuda.stream(self._infer_stream), torch.inference_mode():
            for part in parts:  # made on the preprocessing stream
                part.record_stream(self._infer_stream)
            out = tuple(o.float() for o in self.network(parts[0] if len(parts) == 1 else torch.cat(parts)))
        caller.wait_stream(self._infer_stream)  # no host wait: the caller's next kernels queue behind these
        for o in out:
            if o.is_cuda:  # an ONNX session's outputs may come back on the CPU
                o.record_stream(caller)
        return out

    def synchronize(self) -> None:
        """Wait on the host for the forward passes queued so far (CUDA; a no-op on the CPU)."""
        if self._infer_stream is not None:
            self._infer_stream.synchronize()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), iterations: int = 2) -> None:
        """Run dummy batches so the first real frames do not pay for graph optimisation.

        Also checks that the network's outputs are what the bundle's task and head promise, so a
        mislabelled bundle fails here with a clear message rather than mid-stream.
        """
        h, w = self.spec.size
        for b in batch_sizes:
            x = torch.zeros((b, 3, h, w), dtype=self.dtype, device=self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                for _ in range(iterations):
                    out = self.forward(x)
            except RuntimeError as exc:
                if "out of memory" in str(exc).lower():
                    raise ModelError(
                        f"model bundle {self.path!r}: a batch of {b} at {h}x{w} does not fit in {self.device}'s "
                        f"memory ({first_line(exc)}); lower batching.max_batch or use a smaller --image-size"
                    ) from None
                raise ModelError(
                    f"model bundle {self.path!r} fails on a [{b}, 3, {h}, {w}] input, the size its metadata "
                    f"declares ({first_line(exc)}); re-export it with the right --image-size"
                ) from None
            problem = check_outputs(self.meta, out, b)
            if problem:
                raise ModelError(f"model bundle {self.path!r}: {problem}; re-export it")
        self.synchronize()


def check_outputs(meta: BundleMeta, out: tuple[torch.Tensor, ...], batch: int) -> str | None:
    """What is wrong with ``out`` as the raw output of ``meta``'s network on ``batch`` frames, or None."""
    c = meta.num_classes
    shapes = [tuple(o.shape) for o in out]
    if meta.task.classifies:
        if len(out) != 1 or shapes[0] != (batch, c):
            return f"the network outputs {shapes} but the metadata expects one [{batch}, {c}] tensor ({c} classes)"
    elif meta.task is Task.SEGMENTATION:
        if len(out) != 1 or out[0].ndim != 4 or shapes[0][:2] != (batch, c):
            return f"the network outputs {shapes} but the metadata expects one [{batch}, {c}, h, w] tensor of logits"
    elif meta.task is Task.DETECTION:
        levels = len(meta.decode["strides"])
        per_level = 3 if meta.head == "fcos" else 2
        if len(out) != per_level * levels:
            return (
                f"the network has {len(out)} outputs but a {meta.head} head over strides "
                f"{meta.decode['strides']} has {per_level * levels}"
            )
        for i, o in enumerate(out):
            want = (c, 4, 1)[i // levels]
            if o.ndim != 4 or o.shape[0] != batch or o.shape[1] != want:
                return f"output {i} has shape {tuple(o.shape)}; expected [{batch}, {want}, h, w]"
    return None
