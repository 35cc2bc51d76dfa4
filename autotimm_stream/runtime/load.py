"""Bundle formats, read side: detect a bundle's format, read its metadata, load a callable network.

Three formats, one contract: a loaded network is called with a ``[B, 3, H, W]`` tensor on its
device and returns a tuple of tensors (the bundle's ``outputs``, in order). The rest of the engine
never asks which format it got.

- ``torchscript``: ``torch.jit`` archive. What users deploy today; frozen and optimised for
  inference at load time. torch 2.14 marks ``torch.jit`` deprecated (FutureWarning), hence:
- ``export``: a ``torch.export`` ExportedProgram (``.pt2``), the forward-looking format; batch
  dimension dynamic.
- ``onnx``: an ONNX model run by onnxruntime (CPU, or CUDA when its provider is present); the
  only format that can carry int8 convolutions from dynamic quantization.
- ``aoti``: the ``export`` program compiled ahead of time by AOTInductor for one device type
  (``torch._inductor.aoti_compile_and_package``), metadata added to the package; tied to the
  torch version and the device type (its CUDA path is unverified: README, "Model bundles").
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import ModelError, first_line
from .bundle import META_FILE, BundleMeta

__all__ = [
    "FORMATS",
    "ONNX_META_KEY",
    "Network",
    "detect_format",
    "flatten_outputs",
    "load_bundle",
    "load_program",
    "quiet_jit",
    "read_meta",
]

_logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "export", "onnx", "aoti")
ONNX_META_KEY = "autotimm_stream"


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.14 deprecates torch.jit.*
        yield


def _check_file(path: str) -> None:
    hint = "expected a file made by `autotimm-stream export`"
    if not os.path.exists(path):
        raise ModelError(f"model bundle {path!r} not found; {hint} (check model.path)")
    if os.path.isdir(path):
        raise ModelError(f"model bundle {path!r} is a folder; {hint}")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Which of :data:`FORMATS` the file at ``path`` holds (by content, not by name)."""
    path = os.fspath(path)
    _check_file(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any("/data/aotinductor/" in n for n in names):
            return "aoti"
        if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
            return "export"
        if any(n.endswith("/data.pkl") or "/code/" in n for n in names):
            return "torchscript"
        raise ModelError(
            f"model bundle {path!r} is a zip archive but neither TorchScript, torch.export nor AOTInductor; "
            "expected a file made by `autotimm-stream export`"
        )
    with open(path, "rb") as fh:
        head = fh.read(64)
    # ONNX files are protobuf ModelProto: field 1 (ir_version, varint) comes first: tag byte 0x08.
    if head[:1] == b"\x08" and _looks_like_onnx(path):
        return "onnx"
    raise ModelError(
        f"model bundle {path!r} is not a TorchScript, torch.export or ONNX file; "
        "expected a file made by `autotimm-stream export`"
    )


def _looks_like_onnx(path: str) -> bool:
    try:
        import onnx
    except ImportError:
        return True  # cannot check without onnx; loading will say what is missing
    try:
        onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure means "not ONNX"
        return False
    return True


def _no_meta(path: str) -> ModelError:
    return ModelError(
        f"model bundle {path!r} has no autotimm-stream metadata (a plain model file?); "
        "rebuild it with `autotimm-stream export`, which stores task, classes and preprocessing"
    )


def read_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read a bundle's metadata without loading the network."""
    path = os.fspath(path)
    fmt = detect_format(path)
    where = f"model bundle {path!r}"
    if fmt == "onnx":
        import onnx

        model = onnx.load(path, load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if ONNX_META_KEY not in props:
            raise _no_meta(path)
        return BundleMeta.from_json(props[ONNX_META_KEY], where=where)
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(f"extra/{META_FILE}")]
        if not names:
            raise _no_meta(path)
        return BundleMeta.from_json(zf.read(names[0]), where=where)


def load_program(path: str) -> torch.export.ExportedProgram:
    with open(path, "rb") as fh:
        return torch.export.load(fh)


def flatten_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    """A network's output as a flat tuple of tensors: nested lists flattened, ``None`` left out
    (a YOLOX head's missing centerness)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    flat: list[torch.Tensor] = []
    for item in out:
        if item is not None:
            flat.extend(flatten_outputs(item))
    return tuple(flat)


class Network:
    """A bundle's network, loaded on a device: ``network(x) -> tuple of tensors``.

    Args:
        path: the bundle file.
        device: where inputs live and outputs are returned.
        dtype: weights and inputs: float32, bfloat16 or float16 (torch formats; ONNX and
            AOTInductor bundles run as exported, in float32).
        channels_last: NHWC-strided weights (torch formats).
        optimize: freeze and optimise TorchScript for inference.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        optimize: bool = True,
    ):
        self.path = os.fspath(path)
        self.format = detect_format(self.path)
        self.meta = read_meta(self.path)
        self.device = device
        if self.meta.quantization and device.type != "cpu":
            mode = self.meta.quantization.get("mode", "quantized")
            if self.format != "onnx":
                raise ModelError(
                    f"model bundle {self.path!r} is {mode} for the CPU; run it with device cpu, "
                    "or export it without --quantize for CUDA"
                )
            _logger.warning("%s is %s for the CPU; onnxruntime runs its integer ops there", self.path, mode)
        if self.meta.quantization and dtype != torch.float32:
            raise ModelError(
                f"model bundle {self.path!r} is quantized ({self.meta.quantization.get('mode', 'int8')}); "
                "run it with model.precision fp32, or export it without --quantize for bf16/fp16"
            )
        self.input_dtype = dtype
        self.onnx_session: Any = None  # the onnxruntime InferenceSession of an ``onnx`` bundle
        try:
            self._call = getattr(self, f"_load_{self.format}")(dtype, channels_last, optimize)
        except ModelError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(
                f"model bundle {self.path!r} ({self.format}) cannot be loaded ({first_line(exc)}); re-export it"
            ) from None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._call(x)

    def _load_torchscript(self, dtype: torch.dtype, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        with quiet_jit():
            module = torch.jit.load(self.path, map_location=self.device).eval()
            if dtype != torch.float32:
                module = module.to(dtype)
            if channels_last:
                module = module.to(memory_format=torch.channels_last)
            if optimize:
                module = torch.jit.freeze(module)
                if self.device.type == "cpu":
                    module = torch.jit.optimize_for_inference(module)
        return lambda x: flatten_outputs(module(x))

    def _load_export(self, dtype: torch.dtype, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        program = load_program(self.path)
        module = program.module().to(self.device)
        if dtype != torch.float32:
            module = module.to(dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return lambda x: flatten_outputs(module(x))

    def _load_aoti(self, dtype: torch.dtype, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        built = self.meta.compiled_for or "cpu"
        if built != self.device.type:
            raise ModelError(
                f"model bundle {self.path!r} is AOTInductor code compiled for {built}, but the model runs on "
                f"{self.device.type}; use model.device {built!r} or export it again with --device {self.device.type}"
            )
        if dtype != torch.float32 or channels_last:
            _logger.warning("precision/channels_last do not apply to an AOTInductor package; it runs as compiled")
        self.input_dtype = torch.float32
        index = -1  # the loader's "current device"
        if self.device.type == "cuda":
            # the package's loader probes the device: CUDA must be initialised (and the right
            # device current) first, or loading can fail deep inside the C++ runtime
            torch.cuda.init()
            index = torch.cuda.current_device() if self.device.index is None else self.device.index
            torch.cuda.set_device(index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner = torch._inductor.aoti_load_package(self.path, device_index=index)
        return lambda x: flatten_outputs(runner(x.float().contiguous()))

    def _load_onnx(self, dtype: torch.dtype, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                f"model bundle {self.path!r} is ONNX, which needs onnxruntime; "
                "install it (pip install 'autotimm-stream[onnx]') or export another --format"
            ) from None
        if dtype != torch.float32:
            _logger.warning("%s is not applied to ONNX bundles; running the model as exported", dtype)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        threads = torch.get_num_threads()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # onnxruntime's pool threads spin after each run by default: fastest when nothing else runs
        # (model only), but in the engine they keep decoding and preprocessing off the cores the
        # model is waiting on (measured in benchmarks/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        self.onnx_session = session
        input_name = session.get_inputs()[0].name
        device = self.device

        def call(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feed = {input_name: x.detach().float().contiguous().cpu().numpy()}
            return tuple(torch.from_numpy(o).to(device) for o in session.run(None, feed))

        self.input_dtype = torch.float32
        return call


def load_bundle(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", **kwargs: Any
) -> tuple[Network, BundleMeta]:
    """Load a bundle's network (on ``device``) and its metadata."""
    net = Network(path, torch.device(device), **kwargs)
    return net, net.meta
