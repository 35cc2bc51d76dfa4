"""Build bundles: trace a network (a timm model, or any module) and store it with its metadata."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

from .. import __version__
from ..errors import ConfigError, ModelError, first_line
from ..runtime.bundle import BundleMeta
from ..runtime.load import FORMATS, flatten_outputs
from ..runtime.runner import check_outputs
from ..tasks import Task
from .save import save_bundle

__all__ = ["export_module", "export_timm", "parse_classes", "FlatOutputs"]

_logger = logging.getLogger(__name__)


def parse_classes(spec: str | None, num_classes: int | None) -> list[str]:
    """Class names from ``a,b,c``, from a file with one name per line, or ``class_0..`` from a count."""
    names: list[str]
    if spec:
        if os.path.isfile(spec):
            with open(spec, encoding="utf-8") as fh:
                names = [line.strip() for line in fh if line.strip()]
        else:
            names = [n.strip() for n in spec.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"--classes: no class names in {spec!r}; give 'a,b,c' or a file with one name per line")
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"--classes gives {len(names)} names but --num-classes is {num_classes}; make them agree")
        return names
    if not num_classes or num_classes < 1:
        raise ConfigError("export needs --classes (names) or --num-classes (a positive count)")
    return [f"class_{i}" for i in range(num_classes)]


class FlatOutputs(torch.nn.Module):
    """Wraps a network so it returns a flat tuple of tensors (lists of per-level maps flattened).

    Tracing, ``torch.export`` and ONNX all want flat outputs; the bundle's ``outputs`` names them.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.model(x))


def check_image_size(image_size: object) -> None:
    """Refuse an export size that is not a whole number >= 1; only None means the model's own size
    (a falsy 0 must not pass for "default")."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(
            f"image_size (--image-size): expected a whole number of pixels >= 1, got {image_size!r}; "
            "pass None (omit --image-size) for the model's own size"
        )


def export_module(
    model: torch.nn.Module,
    meta: BundleMeta,
    path: str | os.PathLike[str],
    fmt: str = "torchscript",
    device: str = "cpu",
) -> BundleMeta:
    """Save ``model`` (eval mode, CPU, fp32) as a bundle of format ``fmt`` with ``meta`` inside.

    The network is first run on a dummy batch of the bundle's input size and its outputs checked
    against what the task and head promise, so a bundle that would fail at run time is never written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    flat = FlatOutputs(model.eval().cpu().float()).eval()
    h, w = meta.input_size
    example = torch.zeros(2, 3, h, w)
    try:
        with torch.inference_mode():
            out = flat(example)
    except RuntimeError as exc:
        raise ModelError(
            f"the network fails on a [2, 3, {h}, {w}] input ({first_line(exc)}); try another --image-size"
        ) from None
    problem = check_outputs(meta, out, 2)
    if problem:
        raise ModelError(f"{problem}; make --classes match the head")
    meta.versions = {"torch": torch.__version__, "autotimm_stream": __version__, **meta.versions}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            # Python-side shape checks (e.g. GroupNorm's batch-size check) are recorded as
            # constants; harmless here, since the input size is fixed by the bundle.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            with torch.no_grad():
                network = torch.jit.trace(flat, example, check_trace=False)
    else:
        network = flat
    if fmt == "aoti":
        meta.compiled_for = torch.device(device).type
    save_bundle(network, meta, path, fmt=fmt, example=example, device=device)
    _logger.info("wrote %s (%s, %s, %d classes)", path, fmt, meta.task, meta.num_classes)
    return meta


def export_timm(
    model_name: str,
    path: str | os.PathLike[str],
    class_names: list[str],
    *,
    task: Task | str = Task.CLASSIFICATION,
    image_size: int | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    top_k: int = 5,
    threshold: float = 0.5,
    fmt: str = "torchscript",
    device: str = "cpu",
) -> BundleMeta:
    """Build a bundle from a timm model name (``pretrained=False``; weights from ``state_dict`` if given)."""
    import timm

    if top_k < 1:
        raise ConfigError(f"--top-k must be 1 or more (classes listed per result), got {top_k}")
    check_image_size(image_size)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": len(class_names)}
    try:
        try:
            # fixed-size models (ViTs) must be built at the export size; convnets take no img_size
            extra: dict[str, Any] = {"img_size": image_size} if image_size is not None else {}
            model = timm.create_model(model_name, **kwargs, **extra)
        except TypeError:
            model = timm.create_model(model_name, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError('Unknown model ...')
        raise ConfigError(f"{exc}; list names with `python -c 'import timm; print(timm.list_models())'`") from None
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = image_size if image_size is not None else int(cfg["input_size"][-1])
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        _logger.warning("timm crop_mode %r is not supported; using a centre crop", crop_mode)
    meta = BundleMeta(
        task=Task(task),
        class_names=list(class_names),
        input_size=(size, size),
        # timm's squash: Resize((s, s)) then CenterCrop, s = floor(size / crop_pct)
        resize="squash_crop" if crop_mode == "squash" else "center_crop",
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        model_name=model_name,
        top_k=min(top_k, len(class_names)),
        threshold=threshold,
        versions={"timm": timm.__version__},
        origin={"kind": "timm", "name": model_name, "pretrained": False},
    )
    return export_module(model, meta, path, fmt=fmt, device=device)
