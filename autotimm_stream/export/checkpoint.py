"""AutoTimm checkpoints -> bundles, offline and without unsafe unpickling.

AutoTimm's own loading breaks in ways this module works around (../shared/notes/autotimm.md):

- the backbone is stored as a model-name string that AutoTimm rebuilds with ``pretrained=True``
  (a hub download, fatal offline): we rebuild it with ``pretrained=False`` and load the weights;
- ``compile_model=True`` (the default) stores keys as ``backbone._orig_mod.*``: we strip
  ``._orig_mod``, build uncompiled and load **strict**, so weights can never silently stay random;
- detectors need pycocotools just to be constructed (their default metric): we pass ``metrics=[]``;
- the checkpoint holds no preprocessing: we derive it the way AutoTimm's DataModule validated
  (:mod:`.eval_transform`).

Only ``torch.load(weights_only=True)`` is used. A DataModule may have pickled AutoTimm config
dataclasses into the checkpoint; those (and only those) are allow-listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import pathlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from .. import __version__
from ..errors import ConfigError, ModelError, first_line
from ..runtime.bundle import BundleMeta
from ..tasks import Task
from .checkpoint_info import TASK_CLASSES, CheckpointInfo
from .eval_transform import preprocessing, transform_config
from .timm import check_image_size, export_module, parse_classes

__all__ = ["CheckpointInfo", "inspect_checkpoint", "load_autotimm_model", "export_checkpoint", "TASK_CLASSES"]

_logger = logging.getLogger(__name__)

# hparams AutoTimm adds for bookkeeping that its constructors do not accept.
_BOOKKEEPING = ("backbone_name", "username", "timestamp", "batch_size")
_ORIG_MOD = re.compile(r"(^|\.)_orig_mod\.")
_HASH_CHUNK = 1 << 20
_PATH_CLASSES = ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _allowed_global(name: str) -> Any | None:
    """The AutoTimm config dataclass (or pathlib path class) ``name`` (``module.Class``) names; else None.

    Dataclasses are rebuilt from their fields without calling any code of the checkpoint's choosing;
    functions, modules and other classes stay refused.
    """
    module_name, _, attr = name.rpartition(".")
    if module_name in ("pathlib", "pathlib._local") and attr in _PATH_CLASSES:
        # a DataModule given data_dir=Path(...) pickles the path: plain data, safe to rebuild
        return getattr(pathlib, attr)
    if not module_name.startswith("autotimm."):
        return None
    try:
        import importlib

        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        return obj
    return None


def _torch_load(path: str) -> dict[str, Any]:
    where = f"checkpoint {path!r}"
    if not os.path.exists(path):
        raise ConfigError(f"{where} not found; expected an AutoTimm/Lightning .ckpt file")
    if os.path.isdir(path):
        raise ConfigError(f"{where} is a folder; expected an AutoTimm/Lightning .ckpt file")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{where} is not a PyTorch checkpoint (not a torch.save zip archive); is the file complete?")
    allowed: list[Any] = []
    for _ in range(16):  # one retry per allow-listed global at most
        try:
            with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            match = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
            obj = _allowed_global(match.group(1)) if match else None
            if obj is None or obj in allowed:
                what = match.group(1) if match else first_line(exc)
                raise ModelError(
                    f"{where} needs unsafe unpickling ({what}); only AutoTimm config dataclasses are "
                    "allowed. Re-save it with trainer.save_checkpoint(path, weights_only=True)"
                ) from None
            allowed.append(obj)
        except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{where} cannot be read ({first_line(exc)}); is the file complete?") from None
    else:  # pragma: no cover - 16 distinct dataclasses would be absurd
        raise ModelError(f"{where} pickles too many objects; re-save it with weights_only=True")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelError(
            f"{where} is not a Lightning checkpoint (no 'state_dict'); expected a .ckpt written by an AutoTimm Trainer"
        )
    return ckpt


def _kind(hp: dict[str, Any], keys: list[str]) -> str | None:
    if "detection_arch" in hp:
        return "ObjectDetector"
    if "mask_size" in hp and "roi_pool_size" in hp:
        return "InstanceSegmentor"
    if "head_type" in hp:
        return "SemanticSegmentor"
    if "multi_label" in hp:
        return "ImageClassifier"
    if str(hp.get("model_name", "")).startswith("yolox") and any(k.startswith("neck.") for k in keys):
        return "YOLOXDetector"
    return None


def inspect_checkpoint(path: str | os.PathLike[str], ckpt: dict[str, Any] | None = None) -> CheckpointInfo:
    """Identify an AutoTimm checkpoint: task class, head, class count, image size, hash."""
    path = os.fspath(path)
    ckpt = ckpt if ckpt is not None else _torch_load(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    keys = list(ckpt["state_dict"])
    kind = _kind(hp, keys)
    if kind is None:
        raise ModelError(
            f"checkpoint {path!r} is not from a supported AutoTimm task (hparams {sorted(hp)[:8]}...); "
            f"expected one of {sorted(TASK_CLASSES)}"
        )
    task, head = TASK_CLASSES[kind]
    if kind == "ObjectDetector":
        head = str(hp.get("detection_arch", "fcos"))
    elif kind == "SemanticSegmentor":
        head = str(hp.get("head_type", "deeplabv3plus"))
    elif kind == "ImageClassifier" and hp.get("multi_label"):
        task = Task.MULTILABEL
    num_classes = hp.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"checkpoint {path!r} has no valid num_classes in its hparams (got {num_classes!r})")
    dm = ckpt.get("datamodule_hyper_parameters")
    dm = dict(dm) if isinstance(dm, Mapping) and dm else None
    tc = transform_config(dm, task, f"checkpoint {path!r}") if dm else None
    size = (tc or dm or {}).get("image_size")
    versions = {"autotimm_stream": __version__}
    for key in ("pytorch-lightning_version", "lightning_version"):
        if key in ckpt:
            versions["lightning"] = str(ckpt[key])
    return CheckpointInfo(
        path=path,
        kind=kind,
        task=task,
        head=head,
        num_classes=num_classes,
        hparams=hp,
        image_size=int(size) if isinstance(size, int) else None,
        compiled=any(_ORIG_MOD.search(k) for k in keys),
        sha256=_sha256(path),
        versions=versions,
        datamodule=dm,
        transform_config=tc,
    )


def _constructor_kwargs(cls: type, info: CheckpointInfo) -> dict[str, Any]:
    from autotimm import BackboneConfig, FeatureBackboneConfig

    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in info.hparams.items() if k in params and k not in _BOOKKEEPING}
    dropped = sorted(set(info.hparams) - set(kwargs) - set(_BOOKKEEPING))
    if dropped:
        _logger.debug("hparams not taken by %s: %s", cls.__name__, dropped)
    backbone = kwargs.get("backbone")
    if backbone is not None:
        name = backbone if isinstance(backbone, str) else getattr(backbone, "model_name", None)
        if isinstance(backbone, dict):
            name = backbone.get("model_name")
        if not name:
            raise ModelError(f"checkpoint {info.path!r}: cannot tell the backbone's timm name from {backbone!r}")
        config = BackboneConfig if info.kind == "ImageClassifier" else FeatureBackboneConfig
        kwargs["backbone"] = config(model_name=name, pretrained=False)  # never the hub
    kwargs.update(compile_model=False, seed=None, deterministic=False)
    kwargs.pop("compile_kwargs", None)
    if "metrics" in params and info.task is Task.DETECTION:
        # ObjectDetector/InstanceSegmentor: the default mAP metric needs pycocotools, [] means none.
        # YOLOXDetector refuses [] ("At least one MetricConfig is required"); its None means none.
        kwargs["metrics"] = None if info.kind == "YOLOXDetector" else []
    return kwargs


def load_autotimm_model(
    path: str | os.PathLike[str], ckpt: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the checkpoint's AutoTimm model, uncompiled, weights loaded strictly, in eval mode."""
    try:
        import autotimm
    except ImportError:
        raise ConfigError(
            "exporting an AutoTimm checkpoint needs the autotimm package; install it with "
            "pip install 'autotimm-stream[autotimm]' (running a bundle does not need it)"
        ) from None
    path = os.fspath(path)
    ckpt = ckpt if ckpt is not None else _torch_load(path)
    info = inspect_checkpoint(path, ckpt)
    cls = getattr(autotimm, info.kind)
    info.versions["autotimm"] = getattr(autotimm, "__version__", "unknown")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AutoTimm warns about seeds and compile options we set on purpose
        try:
            model = cls(**_constructor_kwargs(cls, info))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(
                f"checkpoint {path!r}: AutoTimm cannot rebuild its {info.kind} ({first_line(exc)})"
            ) from None
    state = {_ORIG_MOD.sub(r"\1", k): v for k, v in ckpt["state_dict"].items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        first = lines[0] if lines else first_line(exc)
        raise ModelError(
            f"checkpoint {path!r}: its weights do not fit the {info.kind} its hparams describe "
            f"(num_classes={info.num_classes}): {len(lines)} shape mismatches, e.g. {first}"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith(("val_metrics.", "test_metrics.", "train_metrics."))]
    unexpected = [
        k for k in result.unexpected_keys if not k.startswith(("val_metrics.", "test_metrics.", "train_metrics."))
    ]
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path!r} does not fit the {info.kind} its hparams describe: "
            f"{len(missing)} missing weights (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return model.eval(), info


def _decode(model: torch.nn.Module, info: CheckpointInfo) -> dict[str, Any]:
    if info.task is not Task.DETECTION:
        return {}
    return {
        "score_thresh": float(getattr(model, "score_thresh", 0.05)),
        "nms_thresh": float(getattr(model, "nms_thresh", 0.5)),
        "max_detections": int(getattr(model, "max_detections_per_image", 100)),
        "strides": [int(s) for s in getattr(model, "strides")],  # noqa: B009 (a tensor or a list: no type)
    }


def _output_names(info: CheckpointInfo, levels: int) -> list[str]:
    if info.task is Task.DETECTION:
        groups = ("cls", "reg", "ctr") if info.head == "fcos" else ("cls", "reg")
        return [f"{g}_l{i}" for g in groups for i in range(levels)]
    return ["logits"]


def export_checkpoint(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    classes: str | list[str] | None = None,
    fmt: str = "torchscript",
    quantize: str | None = None,
    top_k: int = 5,
    device: str = "cpu",
) -> BundleMeta:
    """Build a bundle of format ``fmt`` from an AutoTimm checkpoint; returns its metadata.

    Args:
        path: the ``.ckpt`` file.
        out: where to write the bundle.
        image_size: network input size (square); default: the checkpoint's DataModule size (its
            TransformConfig's, when it has one), else AutoTimm's default for the task (224
            classification, 640 detection, 512 segmentation).
        classes: names as ``"a,b,c"``, a file with one per line, or a list; default ``class_0..``.
        fmt: ``torchscript``, ``export`` (torch.export), ``onnx`` or ``aoti`` (AOTInductor).
        quantize: ``"int8"``: dynamic int8 quantization for the CPU; the accuracy change against
            the fp32 network is measured and stored in the bundle's ``quantization`` field.
        top_k: classification: how many classes each result lists.
        device: ``aoti`` only: the device the package is compiled for (``cpu`` or ``cuda``).
    """
    check_image_size(image_size)  # before anything loads; preprocessing() reads a falsy 0 as "default"
    path = os.fspath(path)
    model, info = load_autotimm_model(path)
    names = (
        list(classes) if isinstance(classes, list) else parse_classes(classes, None if classes else info.num_classes)
    )
    if len(names) != info.num_classes:
        raise ConfigError(
            f"--classes gives {len(names)} names but the checkpoint's {info.kind} head has {info.num_classes} "
            "classes; give one name per class, in training order"
        )
    prep = preprocessing(model, info, image_size)
    size_source = prep.pop("_size_source")
    prep_source = prep.pop("_from")
    decode = _decode(model, info)
    # Lightning's `trainer` property raises outside a Trainer unless it believes it is being
    # scripted; tracing and export probe every attribute, so say so (as LightningModule.to_torchscript does).
    setattr(model, "_jit_is_scripting", True)  # noqa: B010 (not a declared attribute of nn.Module)
    import timm

    hp = info.hparams
    backbone = hp.get("backbone") if isinstance(hp.get("backbone"), str) else hp.get("model_name", "")
    meta = BundleMeta(
        task=info.task,
        class_names=names,
        head=info.head,
        outputs=_output_names(info, len(decode.get("strides", ()))),
        decode=decode,
        model_name=f"{info.kind}:{backbone}" if backbone else info.kind,
        top_k=min(top_k, len(names)),
        threshold=float(hp.get("threshold", 0.5)) if info.task is Task.MULTILABEL else 0.5,
        versions={**info.versions, "timm": timm.__version__},
        origin={
            "kind": "autotimm",
            "class": info.kind,
            "checkpoint": os.path.basename(path),
            "sha256": info.sha256,
            "compiled": info.compiled,
            "image_size_from": size_source,
            "preprocessing_from": prep_source,
            "backbone": backbone,
        },
        **prep,
    )
    if size_source == "default":
        _logger.warning(
            "%s does not record its training image size; using %d (AutoTimm's default for %s). "
            "Pass --image-size if it was trained at another size.",
            path,
            prep["input_size"][0],
            info.task,
        )
    if quantize:
        from .quantize import export_quantized

        return export_quantized(model, meta, out, fmt=fmt, mode=quantize)
    return export_module(model, meta, out, fmt=fmt, device=device)
