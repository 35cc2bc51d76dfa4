"""Real AutoTimm checkpoints for the parity tests, made the way users make them.

Each ``make_*`` function builds an AutoTimm task model (``pretrained=False``: nothing from the hub),
trains it a few steps with a Lightning ``Trainer`` on generated shape scenes, and saves it with
``trainer.save_checkpoint(path, weights_only=True)``. It returns a :class:`Made`: the file, the
class names, and the trained model itself, still in memory, as the independent reference the
exported bundle is compared with (never rebuilt from the file).

Compilation: AutoTimm's default ``compile_model=True`` wraps submodules in ``torch.compile`` and
so stores keys as ``backbone._orig_mod.*``. With the default inductor backend the first training
step takes minutes on two CPU cores (measured: 131 s for a test_resnet classifier), so:

- the single-label classifier is built with ``compile_model=True`` and
  ``compile_kwargs={"backend": "eager"}``: dynamo really captures and runs the graphs, without
  inductor's code generation;
- the FCOS detector is built with the plain default (``compile_model=True``, no kwargs, so its
  hparams are exactly a default user's) and trained with dynamo switched off, which runs the
  wrapped modules as they are.

Both files carry ``_orig_mod.`` keys, like real users' checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotimm_stream.synthetic import SHAPES, ShapeScene

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

CLASSES = list(SHAPES)  # circle, square, triangle
SEG_CLASSES = ["background", *SHAPES]
DET_SIZE = 128  # detectors and segmentors are trained (and exported) at this input size
CLS_SIZE = 64


@dataclass
class Made:
    """A saved checkpoint and the in-memory model it was saved from."""

    kind: str
    path: Path
    model: torch.nn.Module  # trained, eval mode, compiled submodules unwrapped
    classes: list[str]
    image_size: int  # the size it was trained at
    export_image_size: int | None  # what to pass to export (None: the checkpoint says)
    compiled: bool
    hparams: dict[str, Any] = field(default_factory=dict)


# -- synthetic data ---------------------------------------------------------------------------------
def _normalise(img: np.ndarray) -> torch.Tensor:
    x = (img.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def _scene_batch(n: int, size: int, seed: int) -> dict[str, Any]:
    """``n`` scenes with 2-3 shapes each: images, boxes, labels, semantic and instance masks."""
    images, boxes, labels, sem, inst = [], [], [], [], []
    for i in range(n):
        scene = ShapeScene(size, size, seed=seed * 1000 + i, n_shapes=2 + i % 2)
        images.append(_normalise(scene.render()))
        b = [[max(0, min(size, v)) for v in s.box()] for s in scene.shapes]
        boxes.append(torch.tensor(b, dtype=torch.float32))
        labels.append(torch.tensor([SHAPES.index(s.kind) for s in scene.shapes], dtype=torch.long))
        m = torch.zeros(size, size, dtype=torch.long)
        im = torch.zeros(len(b), size, size, dtype=torch.float32)
        for j, (bx, lab) in enumerate(zip(b, labels[-1].tolist())):
            x1, y1, x2, y2 = (int(v) for v in bx)
            m[y1:y2, x1:x2] = lab + 1
            im[j, y1:y2, x1:x2] = 1.0
        sem.append(m)
        inst.append(im)
    return {
        "image": torch.stack(images),
        "boxes": boxes,
        "labels": labels,
        "mask": torch.stack(sem),
        "masks": inst,
    }


def _classification_batch(n: int, size: int, seed: int, multi: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for i in range(n):
        scene = ShapeScene(size, size, seed=seed * 1000 + i, dominant=not multi, n_shapes=1 + i % 3)
        images.append(_normalise(scene.render()))
        if multi:
            y = torch.zeros(len(SHAPES))
            for kind in scene.labels():
                y[SHAPES.index(kind)] = 1.0
            targets.append(y)
        else:
            targets.append(torch.tensor(SHAPES.index(scene.labels()[0])))
    return torch.stack(images), torch.stack(targets)


# -- training -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    loggers = [
        logging.getLogger(n) for n in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _fit(model: Any, batches: list[Any], steps: int, path: Path, dynamo_off: bool = False) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    loader = DataLoader(batches, batch_size=None, shuffle=False)  # each item is already a batch
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    ctx = torch._dynamo.config.patch(disable=True) if dynamo_off else contextlib.nullcontext()
    with _quiet(), ctx:
        trainer.fit(model, loader)
        trainer.save_checkpoint(str(path), weights_only=True)


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``torch.compile`` wrappers replaced by the modules they wrap (same weights)."""
    for name, child in list(model.named_children()):
        if isinstance(child, torch._dynamo.eval_frame.OptimizedModule):
            setattr(model, name, child._orig_mod)
    return model.eval()


def _finish(kind: str, model: Any, path: Path, classes: list[str], size: int, export_size: int | None, compiled: bool):
    hp = dict(model.hparams)
    return Made(kind, path, uncompiled(model), classes, size, export_size, compiled, hp)


# -- the checkpoints ------------------------------------------------------------------------------
def make_classifier(out: Path) -> Made:
    """ImageClassifier, single label, compile_model=True (dynamo, eager backend): keys ``_orig_mod.``."""
    from autotimm import BackboneConfig, ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(
        backbone=BackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=3,
        lr=3e-3,
        compile_model=True,
        compile_kwargs={"backend": "eager"},
        deterministic=False,
    )
    batches = [_classification_batch(8, CLS_SIZE, seed=s, multi=False) for s in range(2)]
    path = out / "classifier.ckpt"
    _fit(model, batches, 4, path)
    return _finish("classifier", model, path, CLASSES, CLS_SIZE, CLS_SIZE, True)


def make_multilabel(out: Path) -> Made:
    from autotimm import BackboneConfig, ImageClassifier

    torch.manual_seed(1)
    model = ImageClassifier(
        backbone=BackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=3,
        multi_label=True,
        threshold=0.45,
        lr=3e-3,
        compile_model=False,
        deterministic=False,
    )
    batches = [_classification_batch(8, CLS_SIZE, seed=10 + s, multi=True) for s in range(2)]
    path = out / "multilabel.ckpt"
    _fit(model, batches, 4, path)
    return _finish("multilabel", model, path, CLASSES, CLS_SIZE, CLS_SIZE, False)


def _detector(arch: str, seed: int, compile_model: bool, score_thresh: float, lr: float = 2e-3) -> Any:
    from autotimm import FeatureBackboneConfig, ObjectDetector

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {} if compile_model else {"compile_model": False}
    return ObjectDetector(
        backbone=FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=3,
        detection_arch=arch,
        metrics=[],
        fpn_channels=32,
        head_num_convs=1,
        lr=lr,
        score_thresh=score_thresh,
        nms_thresh=0.5,
        max_detections_per_image=100,
        deterministic=False,
        **kwargs,
    )


def inject_datamodule_hparams(path: Path, image_size: int, transform_config: bool = False) -> None:
    """Add ``datamodule_hyper_parameters`` as a DataModule's ``save_hyperparameters`` leaves them.

    With ``transform_config`` the DataModule's pickled ``TransformConfig`` dataclass is included,
    so the file needs AutoTimm's allow-listed global to load (as real DataModule checkpoints do).
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    dm: dict[str, Any] = {"data_dir": "./data", "image_size": image_size, "batch_size": 4, "num_workers": 0}
    if transform_config:
        from autotimm.data.transform_config import TransformConfig

        dm["transform_config"] = TransformConfig()
    ckpt["datamodule_hyper_parameters"] = dm
    ckpt["datamodule_hparams_name"] = "kwargs"
    torch.save(ckpt, path)


def make_fcos(out: Path) -> Made:
    """ObjectDetector FCOS, default compile (keys ``_orig_mod.``), image size in the DataModule hparams."""
    model = _detector("fcos", seed=2, compile_model=True, score_thresh=0.02)
    batches = [_scene_batch(4, DET_SIZE, seed=20 + s) for s in range(2)]
    path = out / "fcos.ckpt"
    _fit(model, batches, 6, path, dynamo_off=True)
    inject_datamodule_hparams(path, DET_SIZE, transform_config=True)
    return _finish("fcos", model, path, CLASSES, DET_SIZE, None, True)


def make_yolox_head(out: Path) -> Made:
    model = _detector("yolox", seed=3, compile_model=False, score_thresh=0.02, lr=5e-3)
    batches = [_scene_batch(4, DET_SIZE, seed=30 + s) for s in range(2)]
    path = out / "yolox_head.ckpt"
    _fit(model, batches, 12, path)
    return _finish("yolox_head", model, path, CLASSES, DET_SIZE, DET_SIZE, False)


def make_yolox_detector(out: Path) -> Made:
    from autotimm import YOLOXDetector

    torch.manual_seed(4)
    model = YOLOXDetector(
        model_name="yolox-nano",
        num_classes=3,
        metrics=None,  # YOLOXDetector refuses metrics=[] ("At least one MetricConfig is required")
        lr=3e-3,
        optimizer="adamw",
        scheduler=None,
        score_thresh=0.04,  # ~45 boxes a frame after 8 steps: below max_detections (100), so no ties at the cut
        compile_model=False,
        deterministic=False,
    )
    batches = [_scene_batch(4, DET_SIZE, seed=40 + s) for s in range(2)]
    path = out / "yolox_detector.ckpt"
    _fit(model, batches, 8, path)
    return _finish("yolox_detector", model, path, CLASSES, DET_SIZE, DET_SIZE, False)


def _segmentor(out: Path, head: str, seed: int) -> Made:
    from autotimm import FeatureBackboneConfig, SemanticSegmentor

    torch.manual_seed(seed)
    model = SemanticSegmentor(
        backbone=FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=len(SEG_CLASSES),
        head_type=head,
        lr=3e-3,
        compile_model=False,
        deterministic=False,
    )
    batches = [_scene_batch(4, DET_SIZE, seed=seed * 10 + s) for s in range(2)]
    path = out / f"seg_{head}.ckpt"
    _fit(model, batches, 4, path)
    return _finish(f"seg_{head}", model, path, SEG_CLASSES, DET_SIZE, DET_SIZE, False)


def make_deeplab(out: Path) -> Made:
    return _segmentor(out, "deeplabv3plus", 5)


def make_fcn(out: Path) -> Made:
    return _segmentor(out, "fcn", 6)


def make_instance(out: Path) -> Made:
    from autotimm import FeatureBackboneConfig, InstanceSegmentor

    torch.manual_seed(7)
    model = InstanceSegmentor(
        backbone=FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
        num_classes=3,
        metrics=[],
        fpn_channels=32,
        head_num_convs=1,
        mask_size=14,
        roi_pool_size=7,
        lr=5e-3,
        score_thresh=0.02,
        compile_model=False,
        deterministic=False,
    )
    batches = [_scene_batch(4, DET_SIZE, seed=70 + s) for s in range(2)]
    path = out / "instance.ckpt"
    _fit(model, batches, 10, path)
    return _finish("instance", model, path, CLASSES, DET_SIZE, DET_SIZE, False)


MAKERS: dict[str, Callable[[Path], Made]] = {
    "classifier": make_classifier,
    "multilabel": make_multilabel,
    "fcos": make_fcos,
    "yolox_head": make_yolox_head,
    "yolox_detector": make_yolox_detector,
    "seg_deeplabv3plus": make_deeplab,
    "seg_fcn": make_fcn,
    "instance": make_instance,
}


class Factory:
    """Makes each kind of checkpoint once, on first use, into ``out``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.made: dict[str, Made] = {}

    def __call__(self, kind: str) -> Made:
        if kind not in self.made:
            os.makedirs(self.out, exist_ok=True)
            self.made[kind] = MAKERS[kind](self.out)
        return self.made[kind]
