"""Model bundles: a TorchScript file that carries its own metadata.

The metadata travels inside the archive (``_extra_files["autotimm_stream.json"]``), so a bundle
is one file that says what task it does, which classes it knows and how frames must be prepared.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ModelError
from ..preprocess import PreprocessSpec

__all__ = ["BundleMeta", "save_bundle", "load_bundle", "read_meta", "TASKS", "META_FILE"]

META_FILE = "autotimm_stream.json"
BUNDLE_FORMAT = "autotimm-stream-bundle"
BUNDLE_VERSION = 1
TASKS = ("classification", "multilabel")


@dataclass(slots=True)
class BundleMeta:
    """Everything the engine needs to run a network it did not train."""

    task: str  # one of TASKS
    class_names: list[str]
    input_size: tuple[int, int]  # (height, width)
    resize: str = "center_crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    model_name: str = ""
    top_k: int = 5  # classification: how many classes each result lists
    threshold: float | list[float] = 0.5  # multilabel: one value, or one per class
    versions: dict[str, str] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)  # what the bundle was built from

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ModelError(f"bundle task must be one of {TASKS}, got {self.task!r}")
        if not self.class_names:
            raise ModelError("bundle metadata has no class names; expected one name per model output")
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
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
        if version != BUNDLE_VERSION:
            raise ModelError(
                f"{where}: bundle version {version!r} is not supported (this engine reads version "
                f"{BUNDLE_VERSION}); re-export it with this version of autotimm-stream"
            )
        doc.pop("format")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ModelError(f"{where}: unknown metadata fields {unknown}; was it written by a newer autotimm-stream?")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise ModelError(f"{where}: incomplete metadata ({exc}); re-export the bundle") from None


def save_bundle(module: torch.jit.ScriptModule, meta: BundleMeta, path: str | os.PathLike[str]) -> None:
    """Write ``module`` with ``meta`` inside to ``path`` (atomically: a temp file, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.14 deprecates torch.jit.save
            torch.jit.save(module, tmp, _extra_files={META_FILE: meta.to_json()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ModelError(
            f"model bundle {path!r} not found; expected a file made by `autotimm-stream export` (check model.path)"
        )
    if os.path.isdir(path):
        raise ModelError(f"model bundle {path!r} is a folder; expected a bundle file made by `autotimm-stream export`")
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"model bundle {path!r} is not a TorchScript archive; expected a file made by `autotimm-stream export`"
        )


def read_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read a bundle's metadata without loading the network."""
    path = os.fspath(path)
    _check_file(path)
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(f"extra/{META_FILE}")]
        if not names:
            raise ModelError(
                f"model bundle {path!r} has no autotimm-stream metadata (a plain TorchScript file?); "
                "rebuild it with `autotimm-stream export`, which stores task, classes and preprocessing"
            )
        return BundleMeta.from_json(zf.read(names[0]), where=f"model bundle {path!r}")


def load_bundle(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[torch.jit.ScriptModule, BundleMeta]:
    """Load a bundle's network (on ``device``, in eval mode) and its metadata."""
    path = os.fspath(path)
    meta = read_meta(path)
    try:
        with warnings.catch_warnings():
            # torch 2.14 marks torch.jit.load deprecated; bundles stay TorchScript until the export format lands.
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model bundle {path!r} cannot be loaded by torch ({first}); re-export it") from None
    module.eval()
    return module, meta
