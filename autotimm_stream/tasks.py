"""The tasks a bundle can do: one enum, checked and listed everywhere from here.

A task decides which network heads a bundle may carry, which :class:`~autotimm_stream.messages.Result`
fields its results set, and its ZeroMQ topic kind (the task's value). Adding a task means a member
here, its post-processing (:mod:`autotimm_stream.postprocess`), its drawing
(:mod:`autotimm_stream.sinks.annotate`) and its header in the wire schema.
"""

from __future__ import annotations

import enum

__all__ = ["Task", "TASKS"]


class Task(str, enum.Enum):
    """What a network does with a frame (the values appear in bundles, topics and results)."""

    CLASSIFICATION = "classification"  # softmax top-K: ``Result.classes``
    MULTILABEL = "multilabel"  # sigmoid + per-class threshold: ``Result.classes``
    DETECTION = "detection"  # boxes after NMS: ``Result.detections``
    SEGMENTATION = "segmentation"  # a class per pixel: ``Result.mask`` + ``Result.class_fractions``

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def heads(self) -> tuple[str, ...]:
        """The network heads a bundle of this task may declare; the first is the default."""
        return _HEADS[self]

    @property
    def classifies(self) -> bool:
        """True when results list scored classes (``Result.classes``)."""
        return self in (Task.CLASSIFICATION, Task.MULTILABEL)

    @property
    def default_image_size(self) -> int:
        """Input size of an export when neither the user nor the checkpoint says (AutoTimm's defaults)."""
        return _IMAGE_SIZE[self]


_HEADS = {
    Task.CLASSIFICATION: ("linear",),
    Task.MULTILABEL: ("linear",),
    Task.DETECTION: ("fcos", "yolox"),
    Task.SEGMENTATION: ("deeplabv3plus", "fcn"),
}
_IMAGE_SIZE = {Task.CLASSIFICATION: 224, Task.MULTILABEL: 224, Task.DETECTION: 640, Task.SEGMENTATION: 512}

TASKS: tuple[str, ...] = tuple(t.value for t in Task)
