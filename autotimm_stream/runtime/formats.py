"""Bundle formats: write a network with its metadata, read the metadata, load a callable network.

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
  (``torch._inductor.aoti_compile_and_package``), metadata added to the package. On the CPU it
  equals TorchScript but is no faster (and compiles for 10-60 s); CUDA is where it should pay
  (a helper measured ~2x at batch 1 on an H200), but torch 2.11's AOTI loader segfaulted on every
  CUDA package in this project's GPU runs (even a one-conv model in the process that compiled it),
  so that path is unverified. Tied to the torch version and device.
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
from ..fileio import write_atomic
from .bundle import META_FILE, BundleMeta

__all__ = [
    "FORMATS",
    "Network",
    "detect_format",
    "flatten_outputs",
    "read_meta",
    "replace_meta",
    "save_bundle",
    "load_bundle",
]

_logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "export", "onnx", "aoti")
ONNX_META_KEY = "autotimm_stream"
MAX_EXPORT_BATCH = 256  # upper bound of the dynamic batch dimension in ``export`` bundles


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
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


def save_bundle(
    network: torch.nn.Module,
    meta: BundleMeta,
    path: str | os.PathLike[str],
    fmt: str = "torchscript",
    example: torch.Tensor | None = None,
    device: str = "cpu",
) -> None:
    """Write ``network`` with ``meta`` inside to ``path``, atomically (temp file, then rename).

    ``device``: ``aoti`` only, where the package is compiled for (network and example move there).

    ``network`` is a ``torch.jit.ScriptModule`` for ``torchscript`` (saved as is), or an eager
    module returning a tuple of tensors for ``export`` and ``onnx`` (exported here on ``example``,
    batch dimension dynamic).
    """
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise ModelError(f"bundle format must be one of {FORMATS}, got {fmt!r}")
    text = meta.to_json()
    if fmt == "torchscript":
        if not isinstance(network, torch.jit.ScriptModule):
            raise TypeError("save_bundle(fmt='torchscript') needs a torch.jit.ScriptModule; trace the network first")

        def write(tmp: str) -> None:
            with _quiet_jit():
                torch.jit.save(network, tmp, _extra_files={META_FILE: text})

        write_atomic(path, write)
        return
    if example is None:
        h, w = meta.input_size
        example = torch.zeros(2, 3, h, w)
    if fmt == "aoti":
        write_atomic(path, lambda tmp: _save_aoti(network, example, text, tmp, torch.device(device)))
        return
    if fmt == "export":
        program = _export_program(network, example)
        # The archive would otherwise carry the example batch (2x3x640x640 floats: ~10 MB for a detector).
        program.example_inputs = None
        write_atomic(path, lambda tmp: _save_export(program, text, tmp))
        return
    write_atomic(path, lambda tmp: _save_onnx(network, example, meta, text, tmp))


def _save_export(program: torch.export.ExportedProgram, text: str, path: str) -> None:
    # A file object, not a name: torch.export warns about names that do not end in ``.pt2``.
    with open(path, "wb") as fh:
        torch.export.save(program, fh, extra_files={META_FILE: text})


def _export_program(network: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``network`` traced by torch.export on ``example``, the batch dimension left dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with torch.no_grad():
        return torch.export.export(network, (example,), dynamic_shapes=({0: batch},), strict=False)


def _save_aoti(network: torch.nn.Module, example: torch.Tensor, text: str, path: str, device: torch.device) -> None:
    program = _export_program(network.to(device), example.to(device))
    package = f"{path}.pt2"  # AOTInductor insists on the .pt2 suffix
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=package)
        with zipfile.ZipFile(package, "a") as zf:
            root = zf.namelist()[0].split("/")[0]
            zf.writestr(f"{root}/extra/{META_FILE}", text)
        os.replace(package, path)
    finally:
        if os.path.exists(package):
            os.unlink(package)


def _load_program(path: str) -> torch.export.ExportedProgram:
    with open(path, "rb") as fh:
        return torch.export.load(fh)


def replace_meta(path: str | os.PathLike[str], meta: BundleMeta, out: str | os.PathLike[str] | None = None) -> None:
    """Write the bundle at ``path`` again, network unchanged, with ``meta`` inside (to ``out``, default in place)."""
    path = os.fspath(path)
    out = os.fspath(out) if out is not None else path
    fmt = detect_format(path)
    text = meta.to_json()
    if fmt == "onnx":
        import onnx

        model = onnx.load(path)
        kept = [p for p in model.metadata_props if p.key != ONNX_META_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, text
        write_atomic(out, lambda tmp: onnx.save(model, tmp))
    elif fmt == "export":
        program = _load_program(path)
        write_atomic(out, lambda tmp: _save_export(program, text, tmp))
    elif fmt == "aoti":

        def rewrite(tmp: str) -> None:
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
                for item in src.infolist():
                    if item.filename.endswith(f"extra/{META_FILE}"):
                        dst.writestr(item, text)
                    else:
                        dst.writestr(item, src.read(item.filename))

        write_atomic(out, rewrite)
    else:
        with _quiet_jit():
            module = torch.jit.load(path, map_location="cpu")

        def write(tmp: str) -> None:
            with _quiet_jit():
                torch.jit.save(module, tmp, _extra_files={META_FILE: text})

        write_atomic(out, write)


def _save_onnx(network: torch.nn.Module, example: torch.Tensor, meta: BundleMeta, text: str, path: str) -> None:
    import onnx

    with torch.no_grad():
        names = meta.outputs or [f"output_{i}" for i in range(len(flatten_outputs(network(example))))]
    raw = f"{path}.raw.onnx"
    try:
        # The TorchScript-based exporter: deprecated in torch 2.14 (DeprecationWarning) but present,
        # exact here (outputs within 3e-5 of eager for classifier, FCOS and FCN), ~0.5 s per model
        # and no extra dependency. The torch.export-based one (dynamo=True) gives the same results
        # but needs onnxscript and takes 5-10 s per model.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                network,
                (example,),
                raw,
                input_names=["input"],
                output_names=names,
                dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=17,
                dynamo=False,
            )
        model = onnx.load(raw)  # pulls in external data, if the exporter wrote any
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, text
        onnx.save(model, path)  # one self-contained file
    finally:
        for leftover in (raw, f"{raw}.data"):
            if os.path.exists(leftover):
                os.unlink(leftover)


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
        fp16: half precision weights and inputs (CUDA).
        channels_last: NHWC-strided weights (torch formats).
        optimize: freeze and optimise TorchScript for inference.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: torch.device,
        fp16: bool = False,
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
        self.input_dtype = torch.float16 if fp16 else torch.float32
        self.onnx_session: Any = None  # the onnxruntime InferenceSession of an ``onnx`` bundle
        try:
            self._call = getattr(self, f"_load_{self.format}")(fp16, channels_last, optimize)
        except ModelError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(
                f"model bundle {self.path!r} ({self.format}) cannot be loaded ({first_line(exc)}); re-export it"
            ) from None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._call(x)

    def _load_torchscript(self, fp16: bool, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        with _quiet_jit():
            module = torch.jit.load(self.path, map_location=self.device).eval()
            if fp16:
                module = module.half()
            if channels_last:
                module = module.to(memory_format=torch.channels_last)
            if optimize:
                module = torch.jit.freeze(module)
                if self.device.type == "cpu":
                    module = torch.jit.optimize_for_inference(module)
        return lambda x: flatten_outputs(module(x))

    def _load_export(self, fp16: bool, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        program = _load_program(self.path)
        module = program.module().to(self.device)
        if fp16:
            module = module.half()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return lambda x: flatten_outputs(module(x))

    def _load_aoti(self, fp16: bool, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        built = self.meta.compiled_for or "cpu"
        if built != self.device.type:
            raise ModelError(
                f"model bundle {self.path!r} is AOTInductor code compiled for {built}, but the model runs on "
                f"{self.device.type}; use model.device {built!r} or export it again with --device {self.device.type}"
            )
        if fp16 or channels_last:
            _logger.warning("fp16/channels_last do not apply to an AOTInductor package; it runs as compiled")
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

    def _load_onnx(self, fp16: bool, channels_last: bool, optimize: bool) -> Callable[..., Any]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                f"model bundle {self.path!r} is ONNX, which needs onnxruntime; "
                "install it (pip install 'autotimm-stream[onnx]') or export another --format"
            ) from None
        if fp16:
            _logger.warning("fp16 is not applied to ONNX bundles; running the model as exported")
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        threads = torch.get_num_threads()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # onnxruntime's pool threads spin after each run by default: fastest when nothing else runs
        # (model only), but in the engine they keep decoding and preprocessing off the cores the
        # model is waiting on. Paired engine runs on 2 cores (benchmarks/README.md): detector
        # 69.5 -> 78.8 fps (3 of 3 pairs), segmentor 7.4 -> 8.7 (2 of 2), resnet18 within noise.
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
