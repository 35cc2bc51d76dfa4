"""Model bundles: one file holding a network and the metadata needed to run it.

The metadata says what task the network does, which classes it knows, how frames must be
prepared and how its outputs are decoded. It travels inside the file, whatever the format:

- ``torchscript``: a ``torch.jit`` archive, metadata in ``_extra_files["autotimm_stream.json"]``;
- ``export``: a ``torch.export`` ExportedProgram (``.pt2``), metadata in its ``extra_files``;
- ``onnx``: an ONNX model (weights inside), metadata in ``metadata_props["autotimm_stream"]``.

The runtime (:mod:`.formats`) is indifferent to which format a bundle holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ModelError
from ..tasks import TASKS, Task
from .preprocess import PreprocessSpec

__all__ = ["BundleMeta", "META_FILE", "DETECTION_DECODE_DEFAULTS"]

META_FILE = "autotimm_stream.json"
BUNDLE_FORMAT = "autotimm-stream-bundle"
BUNDLE_VERSION = 3
# version 1 (classification only) lacks fields that have defaults here; versions 1 and 2 said
# ``antialias`` (true: Pillow's resample, false: OpenCV's) where version 3 names the library
READABLE_VERSIONS = (1, 2, 3)
# Decode parameters a detection bundle must carry, with AutoTimm's ObjectDetector defaults.
DETECTION_DECODE_DEFAULTS: dict[str, Any] = {
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "max_detections": 100,
    "strides": [8, 16, 32, 64, 128],
}


@dataclass(slots=True)
class BundleMeta:
    """Everything the engine needs to run a network it did not train."""

    task: Task  # a Task or its value
    class_names: list[str]
    input_size: tuple[int, int]  # (height, width)
    resize: str = "center_crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    # the transform library that built the training inputs (its resize and normalise arithmetic):
    # torchvision (Pillow's antialiased resample) or albumentations (OpenCV INTER_LINEAR)
    transform_backend: str = "torchvision"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    model_name: str = ""
    top_k: int = 5  # classification: how many classes each result lists
    threshold: float | list[float] = 0.5  # multilabel: one value, or one per class
    head: str = ""  # network head, one of HEADS[task]; "" = the task's first
    outputs: list[str] = field(default_factory=list)  # names of the network's flat outputs, in order
    decode: dict[str, Any] = field(default_factory=dict)  # detection: see DETECTION_DECODE_DEFAULTS
    quantization: dict[str, Any] = field(default_factory=dict)  # e.g. {"mode": "int8-dynamic", ...}
    compiled_for: str = ""  # aoti bundles: the device type the package was compiled for ("cpu", "cuda")
    versions: dict[str, str] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)  # what the bundle was built from

    def __post_init__(self) -> None:
        try:
            self.task = Task(self.task)
        except ValueError:
            raise ModelError(f"bundle task must be one of {TASKS}, got {self.task!r}") from None
        if not self.class_names:
            raise ModelError("bundle metadata has no class names; expected one name per model output")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ModelError(
                f"bundle top_k must be a whole number >= 1 (classes listed per result), got {self.top_k!r}; "
                "re-export it with --top-k 1 or more"
            )
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.head = self.head or self.task.heads[0]
        if self.head not in self.task.heads:
            raise ModelError(
                f"bundle head must be one of {self.task.heads} for task {self.task.value!r}, got {self.head!r}"
            )
        if self.task is Task.SEGMENTATION and self.resize in ("center_crop", "squash_crop"):
            raise ModelError(
                f"a segmentation bundle cannot use the {self.resize} resize (parts of the frame would get no "
                "mask); use squash (AutoTimm's) or letterbox"
            )
        if self.task is Task.DETECTION:
            unknown = sorted(set(self.decode) - set(DETECTION_DECODE_DEFAULTS))
            if unknown:
                raise ModelError(
                    f"bundle decode has unknown fields {unknown}; expected {sorted(DETECTION_DECODE_DEFAULTS)}"
                )
            self.decode = {**DETECTION_DECODE_DEFAULTS, **self.decode}
            self.decode["strides"] = [int(s) for s in self.decode["strides"]]
        if isinstance(self.threshold, list) and len(self.threshold) != len(self.class_names):
            raise ModelError(
                f"bundle has {len(self.threshold)} thresholds for {len(self.class_names)} classes; "
                "expected one threshold or one per class"
            )
        try:
            self.preprocess_spec()
        except ValueError as exc:
            raise ModelError(f"bundle preprocessing metadata is invalid: {exc}") from None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            size=self.input_size,
            resize=self.resize,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            backend=self.transform_backend,
            mean=self.mean,
            std=self.std,
        )

    def to_json(self) -> str:
        doc = {"format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "bundle") -> BundleMeta:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"{where}: metadata is not valid JSON ({exc}); re-export the bundle") from None
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            raise ModelError(f"{where}: metadata is not an {BUNDLE_FORMAT} document; re-export the bundle")
        version = doc.pop("bundle_version", None)
        if version not in READABLE_VERSIONS:
            raise ModelError(
                f"{where}: bundle version {version!r} is not supported (this engine reads versions "
                f"{list(READABLE_VERSIONS)}); re-export it with this version of autotimm-stream"
            )
        doc.pop("format")
        if version in (1, 2) and "antialias" in doc:
            doc["transform_backend"] = "torchvision" if doc.pop("antialias") else "albumentations"
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ModelError(f"{where}: unknown metadata fields {unknown}; was it written by a newer autotimm-stream?")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise ModelError(f"{where}: incomplete metadata ({exc}); re-export the bundle") from None
        except ModelError as exc:  # say which file holds the bad metadata
            raise ModelError(f"{where}: {exc}") from None
