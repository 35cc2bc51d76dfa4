"""Bundle formats, write side: save a network with its metadata inside, or replace the metadata.

See :mod:`autotimm_stream.runtime.load` for what each format is; every write is atomic (a
temporary file beside the target, then a rename).
"""

from __future__ import annotations

import os
import warnings
import zipfile

import torch

from ..errors import ModelError
from ..fileio import write_atomic
from ..runtime.bundle import META_FILE, BundleMeta
from ..runtime.load import FORMATS, ONNX_META_KEY, detect_format, flatten_outputs, load_program, quiet_jit

__all__ = ["save_bundle", "replace_meta", "MAX_EXPORT_BATCH"]

MAX_EXPORT_BATCH = 256  # upper bound of the dynamic batch dimension in ``export`` bundles


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
            with quiet_jit():
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
        program = load_program(path)
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
        with quiet_jit():
            module = torch.jit.load(path, map_location="cpu")

        def write(tmp: str) -> None:
            with quiet_jit():
                torch.jit.save(module, tmp, _extra_files={META_FILE: text})

        write_atomic(out, write)


def _save_onnx(network: torch.nn.Module, example: torch.Tensor, meta: BundleMeta, text: str, path: str) -> None:
    import onnx

    with torch.no_grad():
        names = meta.outputs or [f"output_{i}" for i in range(len(flatten_outputs(network(example))))]
    raw = f"{path}.raw.onnx"
    try:
        # The TorchScript-based exporter (deprecated in torch 2.14, still exact here): the
        # torch.export-based one (dynamo=True) needs onnxscript and takes ~10x longer.
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
