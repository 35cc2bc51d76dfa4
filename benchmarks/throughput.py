"""End-to-end throughput of the engine against the bare model and a hand-written loop.

One run measures, on a generated H.264 clip (default 300 frames of 1280x720 at 25 fps) and a
``resnet18`` bundle at 224 with 1000 classes (random weights: speed does not depend on them):

1. **model-only fps** -- frames decoded and preprocessed beforehand, batches of ``--batch``;
   only ``runner.forward(x)`` is timed, on the very :class:`ModelRunner` the engine then uses
   (frozen, inference-optimised TorchScript). This is the ceiling for the engine.
2. **engine fps** -- the real pipeline (:func:`build_pipeline` on a validated config): file
   source with the ``block`` policy, ``max_batch`` = ``--batch``, ZMQ sink on a free
   127.0.0.1 port (no subscriber), JSONL sink on, annotated-video sink off. The figure is the
   pipeline summary's ``fps``, whose clock starts after model load and warm-up.
3. **naive fps** -- what a user would write by hand: ``cv2.VideoCapture`` -> per-frame
   preprocessing with OpenCV/numpy -> batch-1 forward on the same TorchScript module ->
   softmax top-5 -> one JSON message per frame on a ZMQ PUB socket.
4. **engine fps with the video sink on** (annotation + H.264 encoding of the output).

It also reports decode-only fps (PyAV, as the file source decodes) and the preprocessing cost
per frame, so the gap between the engine and the model can be attributed. Everything is
written to ``<out>/throughput.json``. ``--repeat N`` interleaves N model-only and engine runs
and reports their medians; on a shared machine the absolute numbers are noisy, the ratios
(measured within one run) less so.

Usage::

    .venv/bin/python benchmarks/throughput.py                # defaults: 300 frames, 720p, batch 8
    .venv/bin/python benchmarks/throughput.py --repeat 3 --frames 200
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
import zmq

try:  # run as a script (benchmarks/ is on sys.path) or imported as benchmarks.<module>
    from cpumeter import CpuMeter
except ImportError:
    from benchmarks.cpumeter import CpuMeter

from autotimm_stream import __version__ as engine_version
from autotimm_stream.app import build_pipeline
from autotimm_stream.config import validate_config
from autotimm_stream.export.timm import export_timm
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.synthetic import write_clip

_logger = logging.getLogger("benchmarks.throughput")

TARGET_ENGINE_OVER_MODEL = 0.90
NUM_CLASSES = 1000
TOP_K = 5
SPIN_WARN = 1.4  # main-thread model-only this many times slower than threaded: OpenMP spin penalty


# -- inputs -------------------------------------------------------------------------------------
def ensure_clip(folder: Path, frames: int, width: int, height: int, fps: int) -> Path:
    """The cached benchmark clip, generated (H.264, yuv420p) when missing."""
    path = folder / f"clip_{width}x{height}_{frames}f_{fps}fps.mp4"
    if path.is_file() and path.stat().st_size > 0:
        _logger.info("clip: reusing %s", path)
        return path
    _logger.info("clip: generating %s (%d frames, %dx%d @ %d fps)", path, frames, width, height, fps)
    tmp = path.with_name(path.stem + ".partial.mp4")
    t0 = time.perf_counter()
    write_clip(tmp, frames=frames, width=width, height=height, fps=fps, seed=0, dominant=True)
    os.replace(tmp, path)
    _logger.info("clip: written in %.1f s", time.perf_counter() - t0)
    return path


def ensure_bundle(folder: Path, model: str, size: int) -> Path:
    """The cached model bundle (random weights, ``NUM_CLASSES`` classes), exported when missing."""
    path = folder / f"{model}_{size}_{NUM_CLASSES}c.pt"
    if path.is_file() and path.stat().st_size > 0:
        _logger.info("bundle: reusing %s", path)
        return path
    _logger.info("bundle: exporting %s at %d (%d classes)", model, size, NUM_CLASSES)
    torch.manual_seed(0)
    tmp = path.with_name(path.stem + ".partial.pt")
    export_timm(model, tmp, [f"class_{i}" for i in range(NUM_CLASSES)], image_size=size, top_k=TOP_K)
    os.replace(tmp, path)
    return path


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


# -- measurements -------------------------------------------------------------------------------
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

    Returns the pipeline summary (plus the bound ZMQ endpoint) and the model-only result.
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
    summary = pipeline.run()
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
            ok, bgr = cap.read()
            if not ok:
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


# -- reporting ----------------------------------------------------------------------------------
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


def _median(values: list[float]) -> float:
    return round(float(statistics.median_low(values)), 2)


def _median_index(values: list[float]) -> int:
    """Index of the run whose value is the (lower) median, so its other figures can go with it."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(order) - 1) // 2]


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
        _median_index(mo["fps_runs"]),
        _median_index(mo["main_thread_fps_runs"]),
        _median_index(eng["fps_runs"]),
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--frames", type=int, default=300, help="frames in the generated clip (default 300)")
    p.add_argument("--batch", type=int, default=8, help="engine max_batch and model-only batch size (default 8)")
    p.add_argument("--model", default="resnet18", help="timm model name (default resnet18)")
    p.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    p.add_argument("--width", type=int, default=1280, help="clip width (default 1280)")
    p.add_argument("--height", type=int, default=720, help="clip height (default 720)")
    p.add_argument("--fps", type=int, default=25, help="clip frame rate (default 25)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved model-only/engine runs; medians reported")
    p.add_argument("--out", default="bench_out", help="cache and output folder (default bench_out)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("frames", "batch", "size", "width", "height", "fps", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print the table and write ``<out>/throughput.json``; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    clip = ensure_clip(out, args.frames, args.width, args.height, args.fps)
    bundle = ensure_bundle(out, args.model, args.size)

    _logger.info("preparing model-only inputs")
    prep_runner = ModelRunner(bundle, device="cpu")
    meter = CpuMeter()
    prepared = prepare_inputs(clip, prep_runner, args.batch)
    prepare_cpu = meter.stop()

    _logger.info("naive loop")
    meter = CpuMeter()
    naive = naive_loop(clip, prep_runner)
    naive["cpu"] = meter.stop()
    _logger.info("naive: %.1f fps", naive["fps"])
    del prep_runner

    model_runs: list[dict[str, Any]] = []
    engine_runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        _logger.info("round %d/%d: model-only then engine (same runner)", i + 1, args.repeat)
        summary, model_res = run_engine(engine_config(clip, bundle, args.batch, out / "engine", video=False), prepared)
        assert model_res is not None
        model_runs.append(model_res)
        engine_runs.append(summary)
        _logger.info("round %d: model-only %.1f fps, engine %.1f fps", i + 1, model_res["fps"], summary["fps"])
        if summary["frames"] != prepared.frames:
            _logger.warning(
                "engine delivered %d of %d frames (drops: %s)", summary["frames"], prepared.frames, summary["drops"]
            )

    _logger.info("engine with the annotated-video sink")
    video_summary, _ = run_engine(engine_config(clip, bundle, args.batch, out / "engine_video", video=True))
    _logger.info("engine + video: %.1f fps", video_summary["fps"])

    model_fps = _median([m["fps"] for m in model_runs])
    engine_fps = _median([s["fps"] for s in engine_runs])
    last = engine_runs[_median_index([s["fps"] for s in engine_runs])]  # the median engine run
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
            "frames": args.frames,
            "width": args.width,
            "height": args.height,
            "fps": args.fps,
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
            "repeat": args.repeat,
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
    return 0


def write_report(report: dict[str, Any], json_path: Path) -> None:
    """``report`` (with its own path added) as JSON at ``json_path``, written atomically."""
    report["json_path"] = str(json_path)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, json_path)


if __name__ == "__main__":
    sys.exit(main())
