"""What an AutoTimm checkpoint is, as read from its hyper-parameters and keys (no network built)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..tasks import Task

__all__ = ["CheckpointInfo", "TASK_CLASSES"]

# AutoTimm task class -> (bundle task, default head)
TASK_CLASSES = {
    "ImageClassifier": (Task.CLASSIFICATION, "linear"),
    "ObjectDetector": (Task.DETECTION, "fcos"),
    "YOLOXDetector": (Task.DETECTION, "yolox"),
    "SemanticSegmentor": (Task.SEGMENTATION, "deeplabv3plus"),
    "InstanceSegmentor": (Task.DETECTION, "fcos"),  # exported as its FCOS detector; masks are not decoded
}


@dataclass(slots=True)
class CheckpointInfo:
    """What a checkpoint is, read from its hparams and keys (no network built)."""

    path: str
    kind: str  # AutoTimm class name, one of TASK_CLASSES
    task: Task
    head: str
    num_classes: int
    hparams: dict[str, Any]
    image_size: int | None  # what the DataModule's eval transform produced, when one was saved
    compiled: bool  # keys carry torch.compile's ``_orig_mod.``
    sha256: str
    versions: dict[str, str] = field(default_factory=dict)
    datamodule: dict[str, Any] | None = None  # the DataModule's hparams; None: no DataModule recorded
    transform_config: dict[str, Any] | None = None  # its TransformConfig's fields, when AutoTimm applied it
