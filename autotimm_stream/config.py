"""Run configuration: YAML files validated with pydantic, ``--set key=value`` overrides.

Every error names the field path (``sources[0].uri``), what was expected and what came.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import ConfigError
from .lifecycle import DRAIN_TIMEOUT_S
from .net import DEFAULT_CONTROL_ENDPOINT, DEFAULT_ENDPOINT, DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT

__all__ = [
    "RunConfig",
    "SourceConfig",
    "BatchPolicy",
    "ReconnectPolicy",
    "LiveOptions",
    "SnapshotConfig",
    "ZmqConfig",
    "parse_device",
    "load_config",
    "apply_overrides",
    "validate_config",
    "validate_source",
]

_ID_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # in ZMQ topics and file names: never ".", ".." or "-x"


def _file_name(value: str) -> str:
    # caught here, not after a whole run is processed and the sink opens a folder as a file
    if not value or value.endswith(("/", "\\")) or os.path.basename(value) in (".", ".."):
        raise ValueError("expected a file name such as 'out.mp4' (a folder part is fine, e.g. '{source}/out.mp4')")
    return value


FileName = Annotated[str, AfterValidator(_file_name)]

# torch's cpu/cuda device strings, plus auto. torch keeps a device index in 8 bits: cuda:128
# becomes cuda:-128 and cuda:255 plain cuda, so N <= 127.
_DEVICE_RE = re.compile(r"auto|(cpu|cuda)(:(0|[1-9][0-9]{0,2}))?")
_MAX_DEVICE_INDEX = 127
DEVICE_HINT = f"expected 'cpu', 'cuda', 'cuda:N' (N from 0 to {_MAX_DEVICE_INDEX}) or 'auto' (cuda when present)"


def parse_device(value: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"auto"`` -> ``("auto", None)``; ValueError for anything else.

    The one rule for ``model.device``: the config checks it at load, the runner when it resolves it.
    """
    m = _DEVICE_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or (m.group(3) is not None and int(m.group(3)) > _MAX_DEVICE_INDEX):
        raise ValueError(DEVICE_HINT)
    return (m.group(1) or "auto"), (None if m.group(3) is None else int(m.group(3)))


def _device(value: str) -> str:
    parse_device(value)
    return value


Device = Annotated[str, AfterValidator(_device)]


class _Strict(BaseModel):
    # no float field means anything at inf or nan (a timeout, a delay, a rate): refuse them all
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# How decoded video frames become RGB (sources/convert.py, docs/colour.md): fast = OpenCV for plain
# BT.601 yuv420p; ffmpeg = exactly the pixels the FFmpeg CLI extracts (ffmpeg -i clip.mp4 %04d.png)
ColorConversion = Literal["fast", "ffmpeg"]
_COLOR_HELP = (
    "frames to RGB: fast (OpenCV for BT.601 yuv420p: up to 3 grey levels off FFmpeg, 21 below video black) or "
    "ffmpeg (exactly the pixels of `ffmpeg -i video frames/%04d.png`, for models trained on such frames)"
)


class _SourceBase(_Strict):
    id: Annotated[str, Field(pattern=_ID_RE, description="unique name; used in topics and file names")]
    max_staleness_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="frames older than this when a batch forms are dropped; null = no budget"
    )


class FileSourceConfig(_SourceBase):
    """A video file, decoded with PyAV."""

    type: Literal["file"] = "file"
    uri: str = Field(description="path of the video file")
    policy: Literal["block", "latest"] = Field("block", description="full buffer: wait (block) or drop oldest")
    buffer_size: int = Field(32, ge=1, le=4096, description="ring buffer capacity in frames")
    realtime: bool = Field(False, description="pace the file at its own frame rate, like a live camera")
    decode_threads: int | None = Field(
        None, ge=0, le=64, description="FFmpeg decoder threads; 0 = FFmpeg's choice; null = 1 on CPU, 0 on CUDA"
    )
    color_conversion: ColorConversion = Field("fast", description=_COLOR_HELP)


class FolderSourceConfig(_SourceBase):
    """Still images in a folder, in name order, as the frames of a video at ``fps``."""

    type: Literal["folder"]
    uri: str = Field(description="folder of images (JPEG, PNG, BMP, TIFF, WebP)")
    pattern: str = Field("*", description="glob of the file names to take, e.g. '*.jpg'")
    fps: float = Field(25.0, gt=0, le=1000, description="frame rate that gives each image its PTS")
    policy: Literal["block", "latest"] = "block"
    buffer_size: int = Field(32, ge=1, le=4096)
    realtime: bool = Field(False, description="pace the images at fps, like a live camera")


class ReconnectPolicy(_Strict):
    """When to try again after a failed connection or a lost stream: exponential backoff with jitter."""

    model_config = ConfigDict(frozen=True)

    initial_delay_s: float = Field(0.5, ge=0, le=3600, description="wait before the first retry")
    max_delay_s: float = Field(30.0, gt=0, le=86_400, description="the backoff never exceeds this")
    multiplier: float = Field(2.0, ge=1, le=100, description="each consecutive failure multiplies the wait")
    jitter: float = Field(
        0.2, ge=0, lt=1, description="+- fraction of random spread, so many cameras do not retry in lockstep"
    )
    max_attempts: int | None = Field(
        None, ge=1, description="failed attempts in a row before FAILED (no frame counts as a failure); null = forever"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectPolicy:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) must be >= initial_delay_s ({self.initial_delay_s})")
        return self

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failures so far)."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(0, attempt - 1))
        return max(0.0, base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


class LiveOptions(_Strict):
    """How a live source reconnects and watches its stream (every live source type takes these)."""

    reconnect: ReconnectPolicy = ReconnectPolicy()
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="give up one connection attempt after this")
    stall_frames: int = Field(50, ge=1, le=100_000, description="no frame for this many intervals: reconnect")
    min_stall_s: float = Field(1.0, gt=0, le=3600, description="the stall watchdog never fires sooner than this")
    skip_until_keyframe: bool = Field(
        False, description="after a decode error or reconnect, drop frames until a keyframe"
    )
    decode_threads: int = Field(1, ge=0, le=64, description="FFmpeg decoder threads (slice threading, no added delay)")
    color_conversion: ColorConversion = Field("fast", description=_COLOR_HELP)


class _LiveSourceConfig(_SourceBase, LiveOptions):
    policy: Literal["block", "latest"] = Field("latest", description="live default: drop the oldest frame")
    buffer_size: int = Field(4, ge=1, le=4096, description="ring buffer capacity in frames")


class RtspSourceConfig(_LiveSourceConfig):
    """An RTSP camera or server (PyAV)."""

    type: Literal["rtsp"]
    uri: str = Field(pattern=r"^rtsps?://.+", description="rtsp://[user:password@]host[:port]/path")
    transport: Literal["tcp", "udp"] = "tcp"


class UrlSourceConfig(_LiveSourceConfig):
    """An HTTP(S) stream or HLS playlist (PyAV), or any other URL FFmpeg opens."""

    type: Literal["url"]
    uri: str = Field(pattern=r"^[a-z][a-z0-9+.-]*://.+", description="http(s)://..., e.g. an .m3u8 playlist")
    live: bool = Field(True, description="its end is a disconnect (reconnect); false: the end of the source")
    realtime: bool = Field(False, description="pace frames at their timestamps (for files served over HTTP)")


class CameraSourceConfig(_LiveSourceConfig):
    """A V4L2 camera (PyAV's v4l2 input)."""

    type: Literal["camera"]
    device: int | str = Field(0, description="index (0 = /dev/video0) or device path")
    width: int | None = Field(None, ge=16, le=16384)
    height: int | None = Field(None, ge=16, le=16384)
    fps: float | None = Field(None, gt=0, le=1000)
    input_format: str | None = Field(None, description="e.g. mjpeg or yuyv422; null = the camera's default")


class TestSourceConfig(_LiveSourceConfig):
    """FFmpeg's synthetic test pattern, paced in real time: a camera for demos and tests."""

    type: Literal["testsrc"]
    width: int = Field(640, ge=16, le=16384)
    height: int = Field(480, ge=16, le=16384)
    fps: float = Field(25.0, gt=0, le=1000)
    pattern: Literal["testsrc", "testsrc2", "smptebars", "rgbtestsrc", "mandelbrot", "life"] = "testsrc2"


def _source_type(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("type", "file")
    return getattr(value, "type", "file")


SourceConfig = Annotated[
    Annotated[FileSourceConfig, Tag("file")]
    | Annotated[FolderSourceConfig, Tag("folder")]
    | Annotated[RtspSourceConfig, Tag("rtsp")]
    | Annotated[UrlSourceConfig, Tag("url")]
    | Annotated[CameraSourceConfig, Tag("camera")]
    | Annotated[TestSourceConfig, Tag("testsrc")],
    Discriminator(_source_type),
]
SOURCE_TYPES = ("file", "folder", "rtsp", "url", "camera", "testsrc")


class ControlConfig(_Strict):
    """A ZMQ REP socket that adds, removes and lists sources while the engine runs."""

    enabled: bool = False
    endpoint: str = Field(DEFAULT_CONTROL_ENDPOINT, pattern=r"^(tcp|ipc|inproc)://.+")


class ModelConfig(_Strict):
    path: str = Field(description="model bundle made by `autotimm-stream export`")
    device: Device = Field("cpu", description="cpu, cuda, cuda:N or auto")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="weights and input: fp32; bf16 (CPUs with AVX512-BF16 or AMX, CUDA); fp16 (CUDA). "
        "Post-processing always runs in fp32",
    )
    fp16: bool = Field(False, description="the older switch for precision: fp16")
    channels_last: bool = False
    threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads; null = torch default")
    fidelity: Literal["auto", "exact", "fast"] = Field(
        "auto",
        description="exact: resize and normalise with the training library's arithmetic (OpenCV or Pillow), bit "
        "for bit; fast: torch's kernels where faster (within one grey level); auto: exact except Pillow-trained "
        "classifiers on the CPU, where Pillow costs 4-6x torch's kernel",
    )
    resize_on: Literal["device", "host"] = Field(
        "device",
        description="CUDA, exact: resize on the GPU (integer kernels; whole frames copied) or on the host "
        "(OpenCV/Pillow; only the model-sized image copied)",
    )
    top_k: int | None = Field(None, ge=1, description="classification: classes per result; null = bundle's")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="multilabel: class threshold; detection: score threshold; null = bundle's",
    )

    @model_validator(mode="after")
    def _one_precision(self) -> ModelConfig:
        if self.fp16 and self.precision not in ("fp32", "fp16"):
            raise ValueError(f"fp16 is true but precision is {self.precision!r}: set only precision")
        return self


class BatchPolicy(_Strict):
    """How frames of many sources are grouped into batches, and the worker threads around the model."""

    model_config = ConfigDict(frozen=True)

    max_batch: int = Field(8, ge=1, le=1024, description="frames per batch at most")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="longest a frame waits for company, from its buffer")
    max_frames_per_source: int = Field(0, ge=0, description="per-source share of a batch; 0 = no limit")
    prep_threads: int = Field(1, ge=1, le=256, description="torch threads of the preprocessing thread")
    support_priority: Literal["auto", "low", "normal"] = Field(
        "auto",
        description="CPU priority of decode, preprocessing and sink threads; low = they yield to the model's "
        "threads; auto = low for files read at full speed, normal where a live source or the control "
        "channel is involved",
    )


class CurveConfig(_Strict):
    secret_key: str | None = Field(None, description="the server's secret key file: encrypt with CURVE")
    clients_dir: str | None = Field(None, description="only clients with a public key file here may connect")


class ZmqConfig(_Strict):
    enabled: bool = True
    endpoint: str = Field(DEFAULT_ENDPOINT, pattern=r"^(tcp|ipc|inproc)://.+")
    mode: Literal["pub", "push"] = Field("pub", description="pub: fan-out, never blocks; push: reliable, waits")
    hwm: int = Field(1000, ge=1, description="messages queued per subscriber before sends are dropped")
    wait_subscribers: int = Field(
        0, ge=0, description="wait for this many subscriptions (one per client and topic prefix) before starting"
    )
    wait_timeout_s: float = Field(5.0, ge=0, le=3600)
    mask_encoding: Literal["raw", "png"] = Field("raw", description="segmentation class maps: raw bytes or PNG")
    heartbeat_s: float = Field(1.0, ge=0, le=3600, description="a heartbeat/<source> message this often; 0 = none")
    curve: CurveConfig = CurveConfig()

    @model_validator(mode="after")
    def _push_has_no_subscriptions(self) -> ZmqConfig:
        if self.mode == "push" and self.wait_subscribers:
            raise ValueError("wait_subscribers applies to mode 'pub'; a PUSH socket waits for a peer by itself")
        return self


class JsonlConfig(_Strict):
    enabled: bool = True
    filename: FileName = Field("predictions.jsonl", description="file in output_dir")


class VideoConfig(_Strict):
    enabled: bool = True
    filename: FileName = Field("annotated.mp4", description="in output_dir; '{source}' is replaced by the source id")
    crf: int = Field(23, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"


class SnapshotConfig(_Strict):
    """JPEG snapshots of frames in which chosen classes appear."""

    enabled: bool = False
    folder: str = Field("snapshots", description="folder for the JPEGs, relative to output_dir")
    classes: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="labels that trigger a snapshot"
    )
    min_score: float = Field(0.5, ge=0, le=1, description="detection/classification score a class needs to count")
    min_fraction: float = Field(0.01, ge=0, le=1, description="segmentation: share of the pixels a class needs")
    cooldown_s: float = Field(5.0, ge=0, le=86_400, description="per source and class, least source time between")
    annotated: bool = Field(True, description="draw boxes, labels or masks as in the annotated video")
    max_files: int = Field(1000, ge=1, description="stop writing after this many files (bounds disk use)")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality")


class ReportConfig(_Strict):
    enabled: bool = Field(True, description="write report.md and PNG plots (fps, latency, outputs, drops)")
    bucket_s: float = Field(1.0, gt=0, le=3600, description="time bucket of the plots (doubles as the run grows)")
    max_buckets: int = Field(3600, ge=2, description="time buckets kept per source: memory stays bounded")


class SinksConfig(_Strict):
    zmq: ZmqConfig = ZmqConfig()
    jsonl: JsonlConfig = JsonlConfig()
    video: VideoConfig = VideoConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    report: ReportConfig = ReportConfig()


class MetricsConfig(_Strict):
    """Prometheus metrics (/metrics), liveness (/healthz) and readiness (/ready) over HTTP."""

    enabled: bool = False
    host: str = Field(DEFAULT_METRICS_HOST, min_length=1, description="interface to serve on (others are warned about)")
    port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535, description="0 = any free port")


class RunConfig(_Strict):
    """The whole run: what to read, which model, how to batch, where results go."""

    sources: list[SourceConfig] = Field(default_factory=list, description="empty only with control enabled")
    model: ModelConfig
    batching: BatchPolicy = BatchPolicy()
    sinks: SinksConfig = SinksConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    output_dir: str = Field("out", description="folder for JSONL, video and the run summary")
    drain_timeout_s: float = Field(
        DRAIN_TIMEOUT_S, ge=0, le=60, description="on stop, how long buffered frames may drain"
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> RunConfig:
        if not self.sources and not self.control.enabled:
            raise ValueError("sources: at least one source is needed (or control.enabled, to add them at run time)")
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"source ids must be unique; repeated: {dup}")
        return self


def _tag_index(loc: tuple[Any, ...], data: Any, root: str) -> int | None:
    """Where in ``loc`` pydantic put the source type it chose (a tag that adds nothing to the path), if it did."""
    if root == "source":
        i, value = 0, data
    elif len(loc) > 2 and loc[0] == "sources" and isinstance(loc[1], int):
        i = 2
        try:
            value = data["sources"][loc[1]]
        except (KeyError, IndexError, TypeError):
            return None
    else:
        return None
    return i if len(loc) > i and loc[i] == _source_type(value) else None


def _path(loc: tuple[Any, ...], tag_index: int | None = None) -> str:
    out = ""
    for k, part in enumerate(loc):
        if k == tag_index:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format(exc: ValidationError, origin: str, data: Any, root: str) -> str:
    lines = []
    for err in exc.errors():
        where = _path(err["loc"], _tag_index(err["loc"], data, root))
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{where}: unknown key (remove it or check its spelling)")
        elif kind == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            field_ = "type" if where == "(top level)" else f"{where}.type"
            lines.append(f"{field_}: unknown source type {tag!r}; expected one of {list(SOURCE_TYPES)}")
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            if where == "(top level)":
                lines.append(msg)
            elif isinstance(got, (dict, list)):  # a section's own check: its message names the values
                lines.append(f"{where}: {msg}")
            else:
                lines.append(f"{where}: {msg}, got {got!r}")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            lines.append(f"{where}: {err['msg']}, got {shown}")
    return f"{origin}: " + "; ".join(lines)


def _validated(validate: Any, data: Any, origin: str, keys: str, root: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with {keys}..., got {type(data).__name__}")
    try:
        return validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origin, data, root)) from None


def validate_config(data: Any, origin: str = "config") -> RunConfig:
    """A :class:`RunConfig` from parsed YAML, or :class:`ConfigError` naming each bad field."""
    return _validated(RunConfig.model_validate, data, origin, "sources/model/", "config")


_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)


def validate_source(data: Any, origin: str = "source") -> Any:
    """One source's config (as in ``sources[i]``) from parsed JSON/YAML, or :class:`ConfigError`."""
    return _validated(_SOURCE_ADAPTER.validate_python, data, origin, "id/type/uri/", "source")


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
    if p.is_dir():
        inside = sorted(str(f) for f in p.glob("*.y*ml"))[:3]
        hint = f" such as {', '.join(inside)}" if inside else ""
        raise ConfigError(f"config {str(p)!r} is a folder; expected a YAML file{hint}")
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
