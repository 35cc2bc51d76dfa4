"""The preprocessing a checkpoint's bundle gets is the eval transform AutoTimm validated it with.

Each case builds the real AutoTimm objects a user would (an ``ImageClassifier`` with
``pretrained=False``, the DataModule it was trained with), saves the checkpoint as Lightning does
(``datamodule_hyper_parameters`` = the DataModule's hparams, its ``TransformConfig`` pickled), exports
it, and runs the same RGB frames through AutoTimm's own eval transform (the DataModule's
``eval_transforms``, or ``create_inference_transform`` when no DataModule was recorded) and through
the engine's preprocessing from the bundle's metadata. The two tensors must be equal, bit for bit
(``torch.equal``): the engine resizes with the same library arithmetic and normalises in the same order.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autotimm_stream.export.checkpoint import export_checkpoint, inspect_checkpoint
from autotimm_stream.runtime.load import read_meta
from autotimm_stream.runtime.preprocess import preprocess_batch

BACKBONE = "test_resnet"  # timm config: 160 px, mean/std 0.5, crop_pct 0.95, bilinear
FRAME_SIZES = [(150, 200), (180, 120)]  # (height, width): landscape and portrait


def _classifier(multi_label: bool = False) -> Any:
    from autotimm import BackboneConfig, ImageClassifier

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AutoTimm warns about seed options it was not given
        return ImageClassifier(
            backbone=BackboneConfig(model_name=BACKBONE, pretrained=False),
            num_classes=3,
            multi_label=multi_label,
            compile_model=False,
            deterministic=False,
        )


def _save(path: Path, model: Any, datamodule: Any | None) -> Path:
    """What ``Trainer.save_checkpoint(weights_only=True)`` writes for ``model`` (and ``datamodule``)."""
    ckpt: dict[str, Any] = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    if datamodule is not None:
        ckpt["datamodule_hyper_parameters"] = dict(datamodule.hparams)
        ckpt["datamodule_hparams_name"] = "kwargs"
    torch.save(ckpt, path)
    return path


def _frames(seed: int = 3) -> list[np.ndarray]:
    """Smooth RGB frames (gradients + blobs): resampling differences stay at the grey-level scale."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in FRAME_SIZES:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], axis=-1)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 40)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, size=3)
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def _assert_matches_autotimm(bundle: Path, autotimm_transform: Any) -> None:
    from PIL import Image

    meta = read_meta(bundle)
    spec = meta.preprocess_spec()
    for frame in _frames():
        want = autotimm_transform(Image.fromarray(frame))[None]
        got = preprocess_batch([frame], spec)
        assert got.shape == want.shape, f"engine input {tuple(got.shape)}, AutoTimm's {tuple(want.shape)}"
        assert torch.equal(got, want), f"max |diff| {float((got - want).abs().max())} for {frame.shape}"


# -- classifiers: every way AutoTimm builds a classification eval transform -----------------------------
def test_no_datamodule_uses_autotimm_default_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No DataModule recorded: AutoTimm's inference transform (TransformConfig defaults: 224 px,
    the backbone's timm statistics), not timm's own input size (160 for test_resnet); and say so."""
    from autotimm import create_inference_transform
    from autotimm.data.transform_config import TransformConfig

    model = _classifier()
    ckpt = _save(tmp_path / "cls.ckpt", model, None)
    caplog.set_level(logging.WARNING, logger="autotimm_stream.runtime.checkpoint")
    meta = export_checkpoint(ckpt, tmp_path / "cls.pt")
    assert meta.input_size == (TransformConfig().image_size,) * 2 == (224, 224)
    assert meta.origin["image_size_from"] == "default"
    assert any("does not record its training image size" in r.getMessage() for r in caplog.records)
    _assert_matches_autotimm(tmp_path / "cls.pt", create_inference_transform(model.backbone))


@pytest.mark.parametrize(
    "transform_config",
    [
        {"image_size": 96, "crop_pct": 0.8},  # timm statistics, own size and crop
        {"image_size": 80, "use_timm_config": False},  # ImageNet statistics, bicubic, 0.875
        {"image_size": 72, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25), "interpolation": "bicubic"},
    ],
    ids=["timm-config", "no-timm-config", "overrides"],
)
def test_datamodule_transform_config_decides(tmp_path: Path, transform_config: dict[str, Any]) -> None:
    """A pickled TransformConfig wins over the DataModule's own image_size (224 here), as in AutoTimm."""
    from autotimm import ImageDataModule
    from autotimm.data.transform_config import TransformConfig

    tc = TransformConfig(**transform_config)
    dm = ImageDataModule(data_dir=str(tmp_path / "data"), transform_config=tc, backbone=BACKBONE, num_workers=0)
    assert dm.hparams["image_size"] == 224 != tc.image_size
    ckpt = _save(tmp_path / "cls.ckpt", _classifier(), dm)
    assert inspect_checkpoint(ckpt).image_size == tc.image_size
    meta = export_checkpoint(ckpt, tmp_path / "cls.pt")
    assert meta.input_size == (tc.image_size, tc.image_size)
    assert meta.origin["image_size_from"] == "checkpoint"
    assert meta.origin["preprocessing_from"] == "datamodule transform_config"
    _assert_matches_autotimm(tmp_path / "cls.pt", dm.eval_transforms)


@pytest.mark.parametrize("multi_label", [False, True], ids=["ImageDataModule", "MultiLabelImageDataModule"])
def test_plain_datamodule_uses_its_default_eval_transform(tmp_path: Path, multi_label: bool) -> None:
    """No TransformConfig: Resize(int(size * 256 / 224)) bilinear, CenterCrop, ImageNet mean/std,
    whatever the backbone's timm config says (test_resnet's is 0.5/0.5, crop_pct 0.95)."""
    from autotimm import ImageDataModule, MultiLabelImageDataModule

    if multi_label:
        dm = MultiLabelImageDataModule(train_csv=str(tmp_path / "train.csv"), image_size=64, num_workers=0)
    else:
        dm = ImageDataModule(data_dir=str(tmp_path / "data"), image_size=64, num_workers=0)
    ckpt = _save(tmp_path / "cls.ckpt", _classifier(multi_label), dm)
    meta = export_checkpoint(ckpt, tmp_path / "cls.pt")
    assert meta.input_size == (64, 64)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert (meta.interpolation, meta.crop_pct) == ("bilinear", 224 / 256)
    assert meta.origin["preprocessing_from"] == "datamodule defaults"
    _assert_matches_autotimm(tmp_path / "cls.pt", dm.eval_transforms)


@pytest.mark.parametrize("use_transform_config", [False, True])
def test_albumentations_datamodule_is_matched(tmp_path: Path, use_transform_config: bool) -> None:
    """albumentations eval: squash to int(size * 256 / 224) square, centre-crop, OpenCV bilinear,
    whatever the frame's aspect (``squash_crop``)."""
    from autotimm import ImageDataModule
    from autotimm.data.transform_config import TransformConfig

    if use_transform_config:
        tc = TransformConfig(image_size=64, backend="albumentations", use_timm_config=False)
        dm = ImageDataModule(data_dir=str(tmp_path / "data"), transform_config=tc, backbone=BACKBONE)
        transform = dm.eval_transforms
    else:
        dm = ImageDataModule(data_dir=str(tmp_path / "data"), image_size=64, transform_backend="albumentations")
        transform = dm.eval_transforms
    meta = export_checkpoint(_save(tmp_path / "cls.ckpt", _classifier(), dm), tmp_path / "cls.pt")
    assert (meta.resize, meta.transform_backend, meta.interpolation, meta.crop_pct) == (
        "squash_crop",
        "albumentations",
        "bilinear",
        224 / 256,
    )
    for frame in _frames():  # landscape and portrait: the aspect is not kept, as AutoTimm does not
        want = transform(image=frame)["image"][None]
        got = preprocess_batch([frame], meta.preprocess_spec())
        assert got.shape == want.shape
        assert torch.equal(got, want), f"max |diff| {float((got - want).abs().max())} for {frame.shape}"


# -- detectors: a TransformConfig only counts with the albumentations backend ------------------------
def _detection_ckpt(path: Path, datamodule: Any) -> Path:
    hp = {"backbone": BACKBONE, "num_classes": 3, "detection_arch": "fcos"}
    torch.save(
        {"state_dict": {}, "hyper_parameters": hp, "datamodule_hyper_parameters": dict(datamodule.hparams)}, path
    )
    return path


def test_detection_torchvision_transform_config_is_not_applied(tmp_path: Path) -> None:
    """With the default (torchvision) backend AutoTimm's detection datasets cannot call the eval
    transform a TransformConfig builds (they pass image=, bboxes=, labels=): a checkpoint exists
    only if the DataModule used its own transforms, at its own image_size."""
    from autotimm import DetectionDataModule
    from autotimm.data.timm_transforms import get_transforms_from_backbone
    from autotimm.data.transform_config import TransformConfig

    tc = TransformConfig(image_size=300)
    with pytest.raises(TypeError):
        get_transforms_from_backbone(BACKBONE, tc, is_train=False, task="detection")(
            image=np.zeros((8, 8, 3), np.uint8), bboxes=[], labels=[]
        )
    dm = DetectionDataModule(data_dir=str(tmp_path), image_size=96, transform_config=tc, num_workers=0)
    info = inspect_checkpoint(_detection_ckpt(tmp_path / "det.ckpt", dm))
    assert info.image_size == 96


def test_detection_albumentations_transform_config_sets_the_size(tmp_path: Path) -> None:
    from autotimm import DetectionDataModule
    from autotimm.data.transform_config import TransformConfig

    tc = TransformConfig(image_size=300, backend="albumentations")
    dm = DetectionDataModule(data_dir=str(tmp_path), image_size=96, transform_config=tc, num_workers=0)
    info = inspect_checkpoint(_detection_ckpt(tmp_path / "det.ckpt", dm))
    assert info.image_size == 300 and info.transform_config is not None
