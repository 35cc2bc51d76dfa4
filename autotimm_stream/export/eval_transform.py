"""The preprocessing an AutoTimm checkpoint was validated with, derived as AutoTimm's DataModules do.

A checkpoint holds no preprocessing, only its DataModule's hyper-parameters (when Lightning saved
them). Classifiers: the DataModule's ``TransformConfig`` when it pickled one, else its default
resize + centre crop with ImageNet statistics, else (no DataModule recorded) AutoTimm's inference
transform: the backbone's timm data config at 224; with the albumentations backend, AutoTimm's
squash + centre crop (``squash_crop``). Detectors: letterbox with 114 grey; segmentors: squash; both
resize with OpenCV (albumentations), as AutoTimm's pipelines do.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..runtime.preprocess import INTERPOLATIONS
from ..tasks import Task
from .checkpoint_info import CheckpointInfo

__all__ = ["preprocessing", "transform_config"]

_logger = logging.getLogger(__name__)

# autotimm.data.transforms: every DataModule's default eval transform and fallback statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# default_eval_transforms resizes the short side to int(size * 256 / 224): crop_pct 224/256 (exact in
# binary, and floor(size / (224 / 256)) == int(size * 256 / 224) for every size).
DEFAULT_EVAL_CROP_PCT = 224 / 256


def transform_config(dm: dict[str, Any], task: Task, where: str) -> dict[str, Any] | None:
    """The fields of the DataModule's ``TransformConfig``, when AutoTimm's DataModule applied it.

    Every AutoTimm DataModule gives ``transform_config`` priority over its own arguments (its
    ``image_size``, ``transform_backend``...) when it is built with a ``backbone`` too; the backbone is
    not saved, so we take it as given (a TransformConfig alone changes nothing in a DataModule).
    Detection and segmentation datasets call their transforms albumentations-style, so there a
    TransformConfig can only have been applied with ``backend="albumentations"``; with the default
    ``"torchvision"`` training would have failed, so the DataModule's own transforms were used.
    """
    tc = dm.get("transform_config")
    if tc is None:
        return None
    if dataclasses.is_dataclass(tc) and not isinstance(tc, type):
        fields = dataclasses.asdict(tc)
    elif isinstance(tc, Mapping):
        fields = dict(tc)
    else:
        _logger.warning("%s: ignoring its DataModule's transform_config %r (not a TransformConfig)", where, tc)
        return None
    if not task.classifies and fields.get("backend", "torchvision") != "albumentations":
        return None
    return fields


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    backbone = model.backbone
    assert isinstance(backbone, torch.nn.Module), "AutoTimm task models hold their timm backbone as a module"
    return backbone


def _backbone_name(info: CheckpointInfo) -> str:
    hp = info.hparams
    backbone = hp.get("backbone")
    if isinstance(backbone, Mapping):
        backbone = backbone.get("model_name")
    elif backbone is not None and not isinstance(backbone, str):
        backbone = getattr(backbone, "model_name", None)
    return str(backbone or hp.get("model_name") or "")


def _transform_stats(tc: dict[str, Any], backbone: str | torch.nn.Module) -> dict[str, Any]:
    """mean, std, interpolation and crop_pct as autotimm's ``get_transforms_from_backbone`` resolves them."""
    if tc.get("use_timm_config", True):
        from autotimm.data.timm_transforms import resolve_backbone_data_config

        return resolve_backbone_data_config(
            backbone,
            override_mean=tc.get("mean"),
            override_std=tc.get("std"),
            override_interpolation=tc.get("interpolation"),
            override_crop_pct=tc.get("crop_pct"),
        )
    return {
        "mean": tc.get("mean") or IMAGENET_MEAN,
        "std": tc.get("std") or IMAGENET_STD,
        "interpolation": tc.get("interpolation") or "bicubic",
        "crop_pct": tc.get("crop_pct") or 0.875,
    }


def _interpolation(name: str, where: str) -> str:
    """AutoTimm's interpolation name -> the engine's (torchvision maps unknown names to bicubic)."""
    name = str(name).lower()
    if name in INTERPOLATIONS:
        return name
    if name == "lanczos":
        _logger.warning("%s: AutoTimm resized with lanczos, which the engine lacks; using bicubic", where)
    return "bicubic"


def _albumentations_warning(where: str, size: int, resize: str) -> None:
    resized = int(size * 256 / 224)
    _logger.warning(
        "%s: its DataModule validated with albumentations: squash to %dx%d, then centre-crop %d; the "
        "bundle uses %s instead, so every part of the frame gets a %s (a crop would drop its edges)",
        *(where, resized, resized, size, resize, "mask" if resize == "squash" else "detection"),
    )


def _classification_preprocessing(model: torch.nn.Module, info: CheckpointInfo, size: int) -> dict[str, Any]:
    """The eval transform of the DataModule recorded in ``info`` (autotimm.data), as bundle fields.

    - TransformConfig: ``get_transforms_from_backbone``: Resize(int(size / crop_pct)) + CenterCrop,
      statistics from the TransformConfig, then the backbone's timm config (``use_timm_config``);
    - DataModule without one: ``default_eval_transforms``: Resize(int(size * 256 / 224)), bilinear,
      CenterCrop, ImageNet mean/std whatever the backbone;
    - no DataModule: ``create_inference_transform``'s defaults, i.e. the backbone's timm config.
    AutoTimm ignores timm's ``crop_mode``: always a centre crop.
    """
    where = f"checkpoint {info.path!r}"
    dm, tc = info.datamodule, info.transform_config
    if tc is not None:
        stats = _transform_stats(tc, _backbone_name(info) or _backbone(model))
        backend, origin = tc.get("backend", "torchvision"), "datamodule transform_config"
    elif dm is not None:
        stats = {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bilinear",
            "crop_pct": DEFAULT_EVAL_CROP_PCT,
        }
        backend, origin = dm.get("transform_backend", "torchvision"), "datamodule defaults"
    else:
        stats = _transform_stats({}, _backbone(model))
        backend, origin = "torchvision", "timm data config"
    prep: dict[str, Any] = {
        "resize": "center_crop",
        "crop_pct": float(stats["crop_pct"]),
        "interpolation": _interpolation(stats["interpolation"], where),
        "transform_backend": "torchvision",  # Resize on PIL images, ToTensor, Normalize
        "mean": tuple(float(v) for v in stats["mean"]),
        "std": tuple(float(v) for v in stats["std"]),
        "_from": origin,
    }
    if backend == "albumentations":  # A.Resize (cv2 INTER_LINEAR) to int(size * 256 / 224) square, A.CenterCrop
        prep.update(
            resize="squash_crop",
            crop_pct=DEFAULT_EVAL_CROP_PCT,
            interpolation="bilinear",
            transform_backend="albumentations",
        )
    return prep


def preprocessing(model: torch.nn.Module, info: CheckpointInfo, image_size: int | None) -> dict[str, Any]:
    """The bundle's preprocessing fields, as AutoTimm trained and validated this task."""
    size = image_size or info.image_size or info.task.default_image_size
    source = "--image-size" if image_size else "checkpoint" if info.image_size else "default"
    if info.task.classifies:
        prep = _classification_preprocessing(model, info, size)
        return {"input_size": (size, size), **prep, "_size_source": source}
    prep = {
        "input_size": (size, size),
        # albumentations LongestMaxSize + centred PadIfNeeded(114) / Resize, cv2 INTER_LINEAR
        "resize": "letterbox" if info.task is Task.DETECTION else "squash",
        "interpolation": "bilinear",
        "transform_backend": "albumentations",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "_from": "datamodule defaults",
        "_size_source": source,
    }
    if info.transform_config is not None:  # albumentations TransformConfig (see _transform_config)
        stats = _transform_stats(info.transform_config, _backbone_name(info) or _backbone(model))
        prep.update(mean=tuple(stats["mean"]), std=tuple(stats["std"]), _from="datamodule transform_config")
        _albumentations_warning(f"checkpoint {info.path!r}", size, prep["resize"])
    return prep
