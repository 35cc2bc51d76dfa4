"""Throughput on a file: the bare model, the engine and a hand-written loop, on the same clip.

- **model only** (:func:`model_only`): frames decoded and preprocessed beforehand (:func:`prepare_inputs`,
  the engine's own preprocessing), batches of the engine's ``max_batch``; only ``runner.forward(x)``
  is timed, on a separate thread as the engine's ``worker-infer`` calls the model. The ceiling for
  the engine.
- **engine** (:func:`run_engine`): the real pipeline (:func:`build_pipeline` on a validated config,
  :func:`engine_config`): file source with the ``block`` policy, ZMQ sink on a free 127.0.0.1 port
  (no subscriber), JSONL sink on, annotated-video sink off unless asked. The figure is the run
  statistics' ``fps``, whose clock starts after model load and warm-up.
- **naive** (:func:`naive_loop`, classifier on the CPU; :func:`naive_task_loop` otherwise): what a
  user would write by hand, one frame at a time, published on a ZMQ PUB socket.

:func:`throughput_cell` is one model on one clip for the suite (sections classifier, detector,
segmentor). :func:`paired` is the single-purpose measurement ``--only paired``: on a generated
720p clip, ``repeat`` interleaved rounds of model only (on the main thread and on a worker
thread) and the engine on the same runner, then the engine with the annotated-video sink, the
naive loop on the main thread, decode-only fps and the preprocessing cost per frame; medians and
per-round ratios in ``<out>/throughput.json``, a table on stdout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
import zmq

from autotimm_stream.app import build_pipeline
from autotimm_stream.config import validate_config
from autotimm_stream.frame import Frame
from autotimm_stream.messages import Result
from autotimm_stream.postprocess import Postprocessor
from autotimm_stream.protocol import encode_mask
from autotimm_stream.runtime.runner import ModelRunner

from .common import attempt, machine_info, median_index, ok, on_worker_thread, write_report
from .cpumeter import CpuMeter
from .inputs import NUM_CLASSES, TOP_K, ensure_bundle, ensure_clip

_logger = logging.getLogger("benchmarks.throughput")

TARGET_ENGINE_OVER_MODEL = 0.90
SPIN_WARN = 1.4  # main-thread model-only this many times slower than threaded: OpenMP spin penalty


# -- inputs ----------------------------------------------------------------------------------------
def decode_rgb(clip: Path):
    """Yield every frame of ``clip`` as uint8 RGB [H, W, 3], decoded like the engine's file source."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        for packet in container.demux(stream):
            for vframe in packet.decode():
                yield vframe.to_ndarray(format="rgb24")


@dataclass
class Prepared:
    """Model input tensors made beforehand, and what making them cost."""

    batches: list[torch.Tensor]
    frames: int
    decode_fps: float
    preprocess_ms_per_frame: float


def prepare_inputs(clip: Path, runner: ModelRunner, batch: int) -> Prepared:
    """Decode the clip and preprocess it into ``batch``-sized tensors with the engine's own code."""
    batches: list[torch.Tensor] = []
    pending: list[np.ndarray] = []
    decode_s = prep_s = 0.0
    frames = 0
    it = decode_rgb(clip)
    while True:
        t0 = time.perf_counter()
        img = next(it, None)
        decode_s += time.perf_counter() - t0
        if img is not None:
            pending.append(img)
            frames += 1
        if pending and (len(pending) == batch or img is None):
            t0 = time.perf_counter()
            batches.append(runner.preprocess(pending))
            prep_s += time.perf_counter() - t0
            pending = []
        if img is None:
            break
    if not frames:
        raise RuntimeError(f"{clip} decoded to no frames")
    _logger.info(
        "inputs: %d frames in %d batches; decode %.1f fps, preprocess %.2f ms/frame",
        frames,
        len(batches),
        frames / decode_s,
        prep_s * 1e3 / frames,
    )
    return Prepared(batches, frames, frames / decode_s, prep_s * 1e3 / frames)


# -- measurements ----------------------------------------------------------------------------------
def engine_config(clip: Path, bundle: Path, batch: int, out_dir: Path, video: bool) -> dict[str, Any]:
    """The run configuration the engine measurements use (ZMQ on a free port chosen at bind time)."""
    return {
        "sources": [{"id": "bench", "type": "file", "uri": str(clip), "policy": "block", "buffer_size": 32}],
        "model": {"path": str(bundle), "device": "cpu"},
        "batching": {"max_batch": batch, "max_wait_ms": 10},
        "sinks": {
            "zmq": {"enabled": True, "endpoint": "tcp://127.0.0.1:*"},
            "jsonl": {"enabled": True, "filename": "predictions.jsonl"},
            "video": {"enabled": video, "filename": "annotated.mp4"},
        },
        "output_dir": str(out_dir),
    }


def _timed_forward(runner: ModelRunner, prepared: Prepared) -> dict[str, Any]:
    runner.warmup(tuple(sorted({1, prepared.batches[0].shape[0], prepared.batches[-1].shape[0]})))
    per_batch: list[float] = []
    t_start = time.perf_counter()
    for x in prepared.batches:
        t0 = time.perf_counter()
        runner.forward(x)
        runner.synchronize()
        per_batch.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - t_start
    return {
        "frames": prepared.frames,
        "elapsed_s": round(elapsed, 3),
        "fps": round(prepared.frames / elapsed, 2),
        "ms_per_frame": round(elapsed * 1e3 / prepared.frames, 3),
        "batch_ms_p50": round(statistics.median(per_batch), 3),
    }


def model_only(runner: ModelRunner, prepared: Prepared, *, in_thread: bool = True) -> dict[str, Any]:
    """``runner.forward`` over pre-made batches; fps over all frames, and per-batch latency.

    With ``in_thread`` the loop runs on a fresh thread, as the engine's ``worker-infer`` thread
    calls the model. That matters: on a loaded machine, torch's OpenMP pool of the *main* thread
    can be far slower than one started from another thread (see benchmarks/README.md), so the
    main-thread figure is kept only as a diagnostic.
    """
    if not in_thread:
        return _timed_forward(runner, prepared)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = _timed_forward(runner, prepared)
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    t = threading.Thread(target=target, name="bench-model-only")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_engine(
    cfg_data: dict[str, Any], prepared: Prepared | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Build the pipeline, optionally measure model-only on its runner first, then run it.

    Returns the run summary (``PipelineStats.to_json()``, plus the CPU use and the bound ZMQ
    endpoint) and the model-only result.
    """
    cfg = validate_config(cfg_data, origin="benchmark config")
    os.makedirs(cfg.output_dir, exist_ok=True)
    pipeline = build_pipeline(cfg)
    model_res = None
    try:
        if prepared is not None:
            meter = CpuMeter()
            main = model_only(pipeline.runner, prepared, in_thread=False)
            main_cpu = meter.stop()
            meter = CpuMeter()
            model_res = model_only(pipeline.runner, prepared, in_thread=True)
            model_res["cpu"] = meter.stop()
            model_res["main_thread_cpu"] = main_cpu
            model_res["main_thread_fps"] = main["fps"]
            model_res["main_thread_ms_per_frame"] = main["ms_per_frame"]
    except BaseException:  # not started yet: only the sources hold resources (sinks open in start())
        for s in pipeline.sources:
            s.close()
        raise
    meter = CpuMeter()
    summary = pipeline.run().to_json()
    summary["cpu"] = meter.stop()  # includes warm-up and closing, a second or two
    zmq_sinks = [s for s in pipeline.sinks if s.name == "zmq"]
    if zmq_sinks:
        summary["zmq_endpoint"] = getattr(zmq_sinks[0], "bound_endpoint", None)
    if summary.get("error"):
        raise RuntimeError(f"engine run failed: {summary['error']}")
    return summary, model_res


def naive_loop(clip: Path, runner: ModelRunner, endpoint: str = "tcp://127.0.0.1:*") -> dict[str, Any]:
    """The hand-written baseline: OpenCV decode, per-frame numpy preprocessing, batch-1 forward."""
    spec = runner.spec
    out_h, out_w = spec.size
    short = math.floor(min(out_h, out_w) / spec.crop_pct)
    mean = np.array(spec.mean, dtype=np.float32) * 255.0
    std = np.array(spec.std, dtype=np.float32) * 255.0
    names = runner.meta.class_names
    module = runner.network  # the same loaded network the engine calls: returns a tuple of outputs

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    bound = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    with torch.inference_mode():  # warm up batch 1, as the engine does, before the clock starts
        for _ in range(2):
            module(torch.zeros(1, 3, out_h, out_w))
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        pub.close(0)
        raise RuntimeError(f"cv2 cannot open {clip}")
    frames = 0
    t_start = time.perf_counter()
    try:
        while True:
            ok_, bgr = cap.read()
            if not ok_:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            if h <= w:
                nh, nw = short, int(short * w / h)
            else:
                nh, nw = int(short * h / w), short
            resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
            top, left = (nh - out_h) // 2, (nw - out_w) // 2
            crop = resized[top : top + out_h, left : left + out_w]
            x = (crop.astype(np.float32) - mean) / std
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
            with torch.inference_mode():
                logits = module(x)[0]
            probs = torch.softmax(logits.float(), dim=1)
            scores, ids = probs.topk(TOP_K, dim=1)
            msg = {
                "frame_index": frames,
                "classes": [
                    {"class_id": int(c), "label": names[int(c)], "score": round(float(s), 6)}
                    for s, c in zip(scores[0].tolist(), ids[0].tolist(), strict=True)
                ],
            }
            pub.send_multipart([b"classification/naive", json.dumps(msg).encode()])
            frames += 1
    finally:
        cap.release()
        pub.close(0)
    elapsed = time.perf_counter() - t_start
    return {
        "frames": frames,
        "elapsed_s": round(elapsed, 3),
        "fps": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "zmq_endpoint": bound,
    }


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
            result = Result.of(Frame("naive", frames, None, time.time_ns(), rgb), task, pred, batch_size=1)
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


# -- (a, b, c) one model on one clip (the suite) ---------------------------------------------------
def throughput_cell(
    model: str, bundle: Path, clip: dict[str, Any], opts: dict[str, Any], batch: int, out: Path, naive_main: bool
) -> dict[str, Any]:
    """Naive loop, model only, engine: three measurements of one model on one clip, recorded apart.

    The naive loop and model only share one runner (the bundle with the engine's model options).
    Model only runs just before and again just after the engine, on a separate thread as the
    engine's ``worker-infer`` calls the model, and its fps pools both runs: this machine's speed
    drifts by tens of percent within minutes, and a drift during the cell then weighs on both sides
    of engine / model-only alike. The naive loop runs on a separate thread too, unless
    ``naive_main``: then it runs on the main thread as in :func:`paired`, and model only is also
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


# -- paired rounds (--only paired) -----------------------------------------------------------------
def paired(
    out: Path,
    cache: Path,
    frames: int = 300,
    batch: int = 8,
    repeat: int = 1,
    model: str = "resnet18",
    size: int = 224,
    width: int = 1280,
    height: int = 720,
    fps: int = 25,
) -> dict[str, Any]:
    """Every measurement of ``--only paired``; prints the table, writes ``<out>/throughput.json`` and
    returns the report. The clip and the bundle are cached in ``cache``."""
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    clip = ensure_clip(cache, frames, width, height, fps)
    bundle = ensure_bundle(cache, model, size)

    _logger.info("preparing model-only inputs")
    prep_runner = ModelRunner(bundle, device="cpu")
    meter = CpuMeter()
    prepared = prepare_inputs(clip, prep_runner, batch)
    prepare_cpu = meter.stop()

    _logger.info("naive loop")
    meter = CpuMeter()
    naive = naive_loop(clip, prep_runner)
    naive["cpu"] = meter.stop()
    _logger.info("naive: %.1f fps", naive["fps"])
    del prep_runner

    model_runs: list[dict[str, Any]] = []
    engine_runs: list[dict[str, Any]] = []
    for i in range(repeat):
        _logger.info("round %d/%d: model-only then engine (same runner)", i + 1, repeat)
        summary, model_res = run_engine(engine_config(clip, bundle, batch, out / "engine", video=False), prepared)
        assert model_res is not None
        model_runs.append(model_res)
        engine_runs.append(summary)
        _logger.info("round %d: model-only %.1f fps, engine %.1f fps", i + 1, model_res["fps"], summary["fps"])
        if summary["frames"] != prepared.frames:
            _logger.warning(
                "engine delivered %d of %d frames (drops: %s)", summary["frames"], prepared.frames, summary["drops"]
            )

    _logger.info("engine with the annotated-video sink")
    video_summary, _ = run_engine(engine_config(clip, bundle, batch, out / "engine_video", video=True))
    _logger.info("engine + video: %.1f fps", video_summary["fps"])

    model_fps = _median([m["fps"] for m in model_runs])
    engine_fps = _median([s["fps"] for s in engine_runs])
    last = engine_runs[median_index([s["fps"] for s in engine_runs])]  # the median engine run
    model_ms = statistics.median_low([m["ms_per_frame"] for m in model_runs])
    infer_over_model = [  # paired within each round
        e["stages_ms"]["infer"]["mean"] / m["ms_per_frame"] for e, m in zip(engine_runs, model_runs, strict=True)
    ]
    machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report: dict[str, Any] = {
        "machine": machine,
        "params": {
            "clip": str(clip),
            "bundle": str(bundle),
            "frames": frames,
            "width": width,
            "height": height,
            "fps": fps,
            "model": model,
            "size": size,
            "batch": batch,
            "repeat": repeat,
            "num_classes": NUM_CLASSES,
        },
        "results": {
            "decode_only_fps": round(prepared.decode_fps, 2),
            "prepare_cpu": prepare_cpu,
            "preprocess_ms_per_frame": round(prepared.preprocess_ms_per_frame, 3),
            "model_only": {
                "fps": model_fps,
                "ms_per_frame": round(model_ms, 3),
                "fps_runs": [m["fps"] for m in model_runs],
                "main_thread_fps": _median([m["main_thread_fps"] for m in model_runs]),
                "main_thread_fps_runs": [m["main_thread_fps"] for m in model_runs],
                "cpu_runs": [m["cpu"] for m in model_runs],
                "main_thread_cpu_runs": [m["main_thread_cpu"] for m in model_runs],
                "runs": model_runs,
            },
            "engine": {
                "fps": engine_fps,
                "fps_runs": [s["fps"] for s in engine_runs],
                "cpu_runs": [s["cpu"] for s in engine_runs],
                "frames": last["frames"],
                "elapsed_s": last["elapsed_s"],
                "batch_size_mean": last["batch_size_mean"],
                "drops": last["drops"],
                "stages_ms": {**last["stages_ms"], "publish": last["sinks"]["zmq"]["publish_ms"]},
                "zmq_endpoint": last.get("zmq_endpoint"),
                "summaries": engine_runs,
            },
            "engine_video": {"fps": video_summary["fps"], "summary": video_summary},
            "naive": naive,
        },
        "ratios": {
            "engine_over_model_only": _ratio(engine_fps, model_fps),
            "engine_over_model_only_runs": [
                _ratio(e["fps"], m["fps"]) for e, m in zip(engine_runs, model_runs, strict=True)
            ],
            "engine_over_model_only_main_thread": _ratio(
                engine_fps, _median([m["main_thread_fps"] for m in model_runs])
            ),
            "engine_over_naive": _ratio(engine_fps, naive["fps"]),
            "engine_video_over_engine": _ratio(video_summary["fps"], engine_fps),
            "main_thread_slowdown": _ratio(model_fps, _median([m["main_thread_fps"] for m in model_runs])),
            "engine_infer_over_model_only": round(statistics.median_low(infer_over_model), 3),
        },
        "target_engine_over_model_only": TARGET_ENGINE_OVER_MODEL,
    }
    write_report(report, out / "throughput.json")
    print_report(report)
    return report


def paired_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the suite's results.json keeps of a :func:`paired` report (the rest is in its own JSON)."""
    r = report["results"]
    return {
        "json": report["json_path"],
        "frames": report["params"]["frames"],
        "batch": report["params"]["batch"],
        "repeat": report["params"]["repeat"],
        "fps": {
            "decode_only": r["decode_only_fps"],
            "model_only": r["model_only"]["fps"],
            "model_only_main_thread": r["model_only"]["main_thread_fps"],
            "engine": r["engine"]["fps"],
            "engine_video": r["engine_video"]["fps"],
            "naive": r["naive"]["fps"],
        },
        "ratios": report["ratios"],
    }


def _median(values: list[float]) -> float:
    return round(float(statistics.median_low(values)), 2)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table (stdout)."""
    m, p, r = report["machine"], report["params"], report["results"]
    print(
        f"machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} cpus usable, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads), load avg {m['loadavg_start']} -> {m['loadavg_end']}"
    )
    print(
        f"clip: {p['clip']} ({p['frames']} frames {p['width']}x{p['height']} @ {p['fps']} fps), "
        f"model {p['model']}@{p['size']} ({NUM_CLASSES} classes), batch {p['batch']}, repeat {p['repeat']}"
    )
    print("numbers are noisy on a shared machine; compare the ratios\n")
    reps = p["repeat"]

    def runs(key: str) -> str:
        vals = r[key]["fps_runs"]
        return "" if len(vals) < 2 else "   runs: " + ", ".join(f"{v:.1f}" for v in vals)

    mo, eng = r["model_only"], r["engine"]
    mo_i, main_i, eng_i = (
        median_index(mo["fps_runs"]),
        median_index(mo["main_thread_fps_runs"]),
        median_index(eng["fps_runs"]),
    )
    rows = [
        ("decode only (PyAV rgb24)", r["decode_only_fps"], r["prepare_cpu"], ""),
        (f"model only (forward, batch {p['batch']})", mo["fps"], mo["cpu_runs"][mo_i], runs("model_only")),
        ("  same, called from main thread", mo["main_thread_fps"], mo["main_thread_cpu_runs"][main_i], ""),
        ("engine (zmq + jsonl)", eng["fps"], eng["cpu_runs"][eng_i], runs("engine")),
        ("engine + annotated video", r["engine_video"]["fps"], r["engine_video"]["summary"]["cpu"], ""),
        ("naive loop (cv2, batch 1)", r["naive"]["fps"], r["naive"]["cpu"], ""),
    ]
    head = f"{'measurement':<36}{'fps':>9}   cores busy: this / others"
    print(head + (f"   (fps: median of {reps})" if reps > 1 else ""))
    for name, fps, cpu, extra in rows:
        print(f"{name:<36}{fps:>9.1f}   {cpu['own_cores']:>10.2f} / {cpu['others_cores']:.2f}{extra}")
    print(f"{'preprocess (engine code)':<36}{r['preprocess_ms_per_frame']:>9.2f} ms/frame")
    ratios = report["ratios"]
    verdict = (
        "ok"
        if ratios["engine_over_model_only"] and ratios["engine_over_model_only"] >= TARGET_ENGINE_OVER_MODEL
        else "BELOW TARGET"
    )
    print()
    print(
        f"engine / model-only     {ratios['engine_over_model_only']:.3f}  (target >= {TARGET_ENGINE_OVER_MODEL:.2f}: {verdict})"
    )
    if len(ratios["engine_over_model_only_runs"]) > 1:
        print(f"  per round               {', '.join(f'{v:.3f}' for v in ratios['engine_over_model_only_runs'])}")
        paired = statistics.median(ratios["engine_over_model_only_runs"])
        # each round pairs a model-only and an engine run taken back to back: the fairer comparison
        # when the machine's speed drifts, so it is shown beside the ratio of medians
        print(f"  paired (median of per-round ratios)  {paired:.3f}")
    print(f"engine / model-only (main-thread figure)  {ratios['engine_over_model_only_main_thread']:.3f}")
    spin = ratios["main_thread_slowdown"]
    if spin and spin > SPIN_WARN and not os.environ.get("OMP_WAIT_POLICY"):
        print(
            f"  note: model-only is {spin:.1f}x slower on the main thread than on a worker thread: torch's OpenMP\n"
            "  threads spin-wait on a loaded machine (see benchmarks/README.md). The naive loop runs on the main\n"
            "  thread, so engine/naive below is inflated; rerun with OMP_WAIT_POLICY=PASSIVE for a fair one."
        )
    print(f"engine / naive          {ratios['engine_over_naive']:.3f}")
    print(f"engine+video / engine   {ratios['engine_video_over_engine']:.3f}")
    print(f"engine infer ms/frame / model-only ms/frame  {ratios['engine_infer_over_model_only']:.3f}")
    print("\nengine stages (ms; batch stages are the per-frame share of the batch), median engine run:")
    print(f"  {'stage':<11}{'mean':>9}{'p50':>9}{'p95':>9}")
    for name, st in r["engine"]["stages_ms"].items():
        print(f"  {name:<11}{st['mean']:>9.2f}{st['p50']:>9.2f}{st['p95']:>9.2f}")
    print(
        f"  mean batch {r['engine']['batch_size_mean']}, drops {r['engine']['drops']}, "
        f"frames {r['engine']['frames']}, zmq {r['engine']['zmq_endpoint']}"
    )
    print(f"\nwritten: {report['json_path']}")
