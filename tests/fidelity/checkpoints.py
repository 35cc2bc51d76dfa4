"""Sensitive AutoTimm checkpoints for the exactness suite, made the way users make them.

Each case is a real AutoTimm task model (``pretrained=False``), trained a few Lightning steps on
generated scenes by ``tests/autotimm_factory.py``'s helpers and saved with
``trainer.save_checkpoint(path, weights_only=True)``, plus the real AutoTimm DataModule the user
validated it with. The DataModule's hyper-parameters go into the checkpoint exactly where a
fitted DataModule's go (``datamodule_hyper_parameters`` / ``datamodule_hparams_name``, as
Lightning's checkpoint connector writes them), pickled ``TransformConfig`` included.

The DataModule's validation set is the suite's frames (a dataset folder laid out as that
DataModule expects, holding copies of the PNG files), so :mod:`.reference` asks AutoTimm's own
dataset for each frame's network input: its image loader, its eval transform.

The cases are chosen to be sensitive (``test_exactness.test_sensitivity`` measures it): many
detections near a low score threshold, segmentors whose masks move when the input moves by one
grey level.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.autotimm_factory import (
    CLASSES,
    SEG_CLASSES,
    Made,
    _classification_batch,
    _detector,
    _fit,
    _scene_batch,
    uncompiled,
)

from .frames import FRAMES

__all__ = ["Case", "CASES", "Cases", "record_datamodule"]

CLS_SIZE = 64  # classifiers' DataModule image_size
DET_SIZE = 128  # detectors' DataModule image_size
SEG_SIZE = 256  # segmentors': logits at 64x64 (DeepLabV3+) and 8x8 (FCN)


@dataclass
class Case:
    """A checkpoint, the trained model it was saved from, and the DataModule it was validated with."""

    name: str
    task: str  # "classification", "detection" or "segmentation"
    made: Made  # .path: the .ckpt; .model: the trained model (eval mode); .classes
    datamodule: Any  # the AutoTimm DataModule recorded in the checkpoint; its val set is the frames
    backend: str  # how its datasets read images: "torchvision" (PIL) or "albumentations" (OpenCV)

    @property
    def val_dataset(self) -> Any:
        return self.datamodule.val_dataset


def _made(name: str, model: Any, path: Path, classes: list[str], size: int, compiled: bool) -> Made:
    return Made(name, path, uncompiled(model), classes, size, None, compiled, dict(model.hparams))


def record_datamodule(path: Path, datamodule: Any) -> None:
    """Store ``datamodule``'s hyper-parameters in the checkpoint at ``path``, as Lightning does when
    a Trainer fitted with that DataModule saves a checkpoint (``_checkpoint_connector.dump_checkpoint``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt[datamodule.CHECKPOINT_HYPER_PARAMS_NAME] = datamodule._hparams_name
    ckpt[datamodule.CHECKPOINT_HYPER_PARAMS_KEY] = dict(datamodule.hparams)
    torch.save(ckpt, path)


# -- the DataModules' validation sets: the frames, laid out as each DataModule reads them --------------
def _copy_frames(frames: Path, dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in FRAMES:
        shutil.copyfile(frames / spec.name, dest / spec.name)
    return [spec.name for spec in FRAMES]


def _image_folder(frames: Path, root: Path) -> Path:
    """ImageDataModule's folder mode: ``train/<class>/`` and ``val/<class>/`` (one class, the frames)."""
    for split in ("train", "val"):
        _copy_frames(frames, root / split / "frames")
    return root


def _coco(frames: Path, root: Path) -> Path:
    """DetectionDataModule's COCO mode: ``val2017/`` and ``annotations/instances_val2017.json``.

    Each frame is annotated with one box covering it all: COCODetectionDataset skips images without
    boxes, and the transformed box tells where the letterbox put the frame in the network input.
    """
    from PIL import Image

    names = _copy_frames(frames, root / "val2017")
    images, annotations = [], []
    for i, name in enumerate(names, start=1):
        with Image.open(root / "val2017" / name) as im:
            w, h = im.size
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        annotations.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, w, h], "area": w * h, "iscrowd": 0}
        )
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


def _png_segmentation(frames: Path, root: Path) -> Path:
    """SegmentationDataModule's ``png`` format: ``val/images/`` and ``val/masks/`` (all background)."""
    import cv2

    names = _copy_frames(frames, root / "val" / "images")
    (root / "val" / "masks").mkdir(parents=True, exist_ok=True)
    for name in names:
        h, w = cv2.imread(str(root / "val" / "images" / name)).shape[:2]
        cv2.imwrite(str(root / "val" / "masks" / name), np.zeros((h, w), np.uint8))
    return root


# -- the cases --------------------------------------------------------------------------------------------
def _classifier(
    out: Path, frames: Path, name: str, seed: int, lr: float = 1e-2, steps: int = 8, **dm_kwargs: Any
) -> Case:
    from autotimm import BackboneConfig, ImageClassifier, ImageDataModule

    data = _image_folder(frames, out / name / "data")
    dm = ImageDataModule(data_dir=str(data), image_size=CLS_SIZE, batch_size=8, num_workers=0, **dm_kwargs)
    dm.setup("fit")
    torch.manual_seed(seed)
    model = ImageClassifier(
        backbone=BackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=len(CLASSES),
        lr=lr,
        compile_model=False,
        deterministic=False,
    )
    path = out / f"{name}.ckpt"
    _fit(model, [_classification_batch(8, CLS_SIZE, seed=seed * 10 + s, multi=False) for s in range(2)], steps, path)
    record_datamodule(path, dm)
    made = _made(name, model, path, CLASSES, CLS_SIZE, False)
    return Case(name, "classification", made, dm, dm.transform_backend)


def make_cls_torchvision(out: Path, frames: Path) -> Case:
    """The default DataModule: torchvision backend, ``Resize(int(64 * 256 / 224))`` bilinear (PIL),
    ``CenterCrop(64)``, ImageNet statistics."""
    return _classifier(out, frames, "cls_torchvision", 21)


def make_cls_timm_bicubic(out: Path, frames: Path) -> Case:
    """A ``TransformConfig`` with the backbone: test_resnet's timm statistics (mean and std 0.5,
    crop_pct 0.95) and bicubic resizing (PIL)."""
    from autotimm import TransformConfig

    tc = TransformConfig(image_size=CLS_SIZE, interpolation="bicubic")
    return _classifier(out, frames, "cls_timm_bicubic", 22, transform_config=tc, backbone="test_resnet")


def make_cls_albumentations(out: Path, frames: Path) -> Case:
    """``transform_backend="albumentations"``: OpenCV reads, ``A.Resize`` squash to 73x73
    (INTER_LINEAR), ``A.CenterCrop(64)``, ImageNet statistics."""
    return _classifier(out, frames, "cls_albumentations", 23, transform_backend="albumentations")


def _detection_case(out: Path, frames: Path, name: str, model: Any, steps: int, dynamo_off: bool) -> Case:
    from autotimm import DetectionDataModule

    data = _coco(frames, out / name / "data")
    dm = DetectionDataModule(data_dir=str(data), image_size=DET_SIZE, batch_size=4, num_workers=0)
    dm.setup("validate")
    path = out / f"{name}.ckpt"
    _fit(model, [_scene_batch(4, DET_SIZE, seed=60 + s) for s in range(2)], steps, path, dynamo_off=dynamo_off)
    record_datamodule(path, dm)
    made = _made(name, model, path, CLASSES, DET_SIZE, dynamo_off)
    return Case(name, "detection", made, dm, "albumentations")


def make_det_fcos(out: Path, frames: Path) -> Case:
    """FCOS, AutoTimm's default compile (``_orig_mod.`` keys), score threshold 0.02."""
    return _detection_case(out, frames, "det_fcos", _detector("fcos", 31, True, score_thresh=0.02), 6, True)


def make_det_yolox_head(out: Path, frames: Path) -> Case:
    """The YOLOX-style head (no centerness, no ReLU on the distances), score threshold 0.013: 3-26
    boxes a frame, a few of AutoTimm's inverted."""
    model = _detector("yolox", 33, False, score_thresh=0.013, lr=2e-3)
    return _detection_case(out, frames, "det_yolox_head", model, 6, False)


def _segmentor(
    out: Path, frames: Path, name: str, head: str, backbone: str, size: int, lr: float, seed: int, steps: int
) -> Case:
    from autotimm import FeatureBackboneConfig, SegmentationDataModule, SemanticSegmentor

    data = _png_segmentation(frames, out / name / "data")
    dm = SegmentationDataModule(data_dir=str(data), format="png", image_size=size, batch_size=4, num_workers=0)
    dm.setup("validate")
    torch.manual_seed(seed)
    model = SemanticSegmentor(
        backbone=FeatureBackboneConfig(model_name=backbone, pretrained=False),
        num_classes=len(SEG_CLASSES),
        head_type=head,
        lr=lr,
        compile_model=False,
        deterministic=False,
    )
    path = out / f"{name}.ckpt"
    _fit(model, [_scene_batch(4, size, seed=seed * 10 + s) for s in range(2)], steps, path)
    record_datamodule(path, dm)
    made = _made(name, model, path, SEG_CLASSES, size, False)
    return Case(name, "segmentation", made, dm, "albumentations")


def make_seg_deeplabv3plus(out: Path, frames: Path) -> Case:
    """DeepLabV3+ on mobilenetv3_large_100 (the user's backbone), AutoTimm's default learning rate."""
    return _segmentor(out, frames, "seg_deeplabv3plus", "deeplabv3plus", "mobilenetv3_large_100", SEG_SIZE, 1e-4, 5, 2)


def make_seg_fcn(out: Path, frames: Path) -> Case:
    """FCN on test_resnet: logits at 1/32 of the input, 8x8 cells."""
    return _segmentor(out, frames, "seg_fcn", "fcn", "test_resnet", SEG_SIZE, 3e-3, 5, 2)


CASES: dict[str, Callable[[Path, Path], Case]] = {
    "seg_deeplabv3plus": make_seg_deeplabv3plus,
    "seg_fcn": make_seg_fcn,
    "det_fcos": make_det_fcos,
    "det_yolox_head": make_det_yolox_head,
    "cls_torchvision": make_cls_torchvision,
    "cls_timm_bicubic": make_cls_timm_bicubic,
    "cls_albumentations": make_cls_albumentations,
}


class Cases:
    """Makes each case once, on first use (checkpoints in ``out``, validation sets from ``frames``)."""

    def __init__(self, out: Path, frames: Path):
        self.out, self.frames = Path(out), Path(frames)
        self.made: dict[str, Case] = {}

    def __call__(self, name: str) -> Case:
        if name not in self.made:
            self.out.mkdir(parents=True, exist_ok=True)
            self.made[name] = CASES[name](self.out, self.frames)
        return self.made[name]
