"""Run configuration: YAML files validated with pydantic, ``--set key=value`` overrides.

Every error names the field path (``sources[0].uri``), what was expected and what came.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

__all__ = ["RunConfig", "load_config", "apply_overrides", "validate_config"]

_ID_RE = r"^[A-Za-z0-9_.-]+$"  # a source id appears in ZMQ topics and file names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FileSourceConfig(_Strict):
    """A video file, decoded with PyAV."""

    type: Literal["file"] = "file"
    id: Annotated[str, Field(pattern=_ID_RE, description="unique name; used in topics and file names")]
    uri: str = Field(description="path of the video file")
    policy: Literal["block", "latest"] = Field("block", description="full buffer: wait (block) or drop oldest")
    buffer_size: int = Field(32, ge=1, le=4096, description="ring buffer capacity in frames")
    realtime: bool = Field(False, description="pace the file at its own frame rate, like a live camera")
    decode_threads: int | None = Field(
        None, ge=0, le=64, description="FFmpeg decoder threads; 0 = FFmpeg's choice; null = 1 on CPU, 0 on CUDA"
    )


class ModelConfig(_Strict):
    path: str = Field(description="model bundle made by `autotimm-stream export`")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    fp16: bool = Field(False, description="half precision (CUDA only)")
    channels_last: bool = False
    threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads; null = torch default")
    top_k: int | None = Field(None, ge=1, description="classification: classes per result; null = bundle's")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="multilabel: class threshold; detection: score threshold; null = bundle's",
    )


class BatchingConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=1024)
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)
    max_frames_per_source: int = Field(0, ge=0, description="per-source share of a batch; 0 = no limit")
    prep_threads: int = Field(1, ge=1, le=256, description="torch threads of the preprocessing thread")


class ZmqConfig(_Strict):
    enabled: bool = True
    endpoint: str = Field("tcp://127.0.0.1:5555", pattern=r"^(tcp|ipc|inproc)://.+")
    hwm: int = Field(1000, ge=1, description="messages queued per subscriber before sends are dropped")
    wait_subscribers: int = Field(0, ge=0, description="wait for this many subscribers before starting")
    wait_timeout_s: float = Field(5.0, ge=0)


class JsonlConfig(_Strict):
    enabled: bool = True
    filename: str = "predictions.jsonl"


class VideoConfig(_Strict):
    enabled: bool = True
    filename: str = Field("annotated.mp4", description="'{source}' is replaced by the source id")
    crf: int = Field(23, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"


class SinksConfig(_Strict):
    zmq: ZmqConfig = ZmqConfig()
    jsonl: JsonlConfig = JsonlConfig()
    video: VideoConfig = VideoConfig()


class RunConfig(_Strict):
    """The whole run: what to read, which model, how to batch, where results go."""

    sources: list[FileSourceConfig] = Field(min_length=1)
    model: ModelConfig
    batching: BatchingConfig = BatchingConfig()
    sinks: SinksConfig = SinksConfig()
    output_dir: str = Field("out", description="folder for JSONL, video and the run summary")
    drain_timeout_s: float = Field(3.0, ge=0, le=60, description="on stop, how long buffered frames may drain")

    @model_validator(mode="after")
    def _unique_ids(self) -> RunConfig:
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"source ids must be unique; repeated: {dup}")
        return self


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("file",) and out.startswith("sources"):  # discriminator tag adds nothing
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        where = _path(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{where}: unknown key (remove it or check its spelling)")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            lines.append(f"{where}: {err['msg']}, got {shown}")
    return f"{origin}: " + "; ".join(lines)


def validate_config(data: Any, origin: str = "config") -> RunConfig:
    """A :class:`RunConfig` from parsed YAML, or :class:`ConfigError` naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with sources/model/..., got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origin)) from None


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` / ``sources.0.uri=value`` overrides (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batching.max_batch=4")
        node: Any = data
        parts = key.split(".")
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            if isinstance(node, list):
                if not re.fullmatch(r"\d+", part) or int(part) >= len(node):
                    raise ConfigError(
                        f"--set {key}: {'.'.join(parts[:k])} has {len(node)} items; {part!r} is not an index"
                    )
                idx = int(part)
                if last:
                    node[idx] = _parse_value(raw)
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = _parse_value(raw)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:k])} is a value, not a section")
    return data


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config. Relative paths are relative to the working folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {str(p)!r} not found; expected a YAML file (see configs/ for examples)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {str(p)!r} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(p)!r} is not a UTF-8 text file; expected YAML") from None
    if data is None:
        raise ConfigError(f"config {str(p)!r} is empty; expected sources and model sections")
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return validate_config(data, origin=f"config {str(p)!r}")
