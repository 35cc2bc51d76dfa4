"""Detection and segmentation bundles across runtimes: model-only vs engine fps, post-processing cost.

The single-purpose measurement ``--only runtimes``. For each task (an AutoTimm detector and an
AutoTimm segmentor) and each runtime the bundle can be exported to (TorchScript, torch.export,
ONNX on onnxruntime, ONNX with dynamic int8), one run measures on a generated clip of moving
shapes (default 120 frames of 1280x720):

- **model-only fps**: pre-decoded, preprocessed batches through ``runner.forward`` on a worker
  thread (the engine's ceiling);
- **engine fps**: the real pipeline on the file (block policy, ZMQ + JSONL sinks, no video);
- **post ms/frame**: the engine's post-processing stage (decode + NMS + letterbox undo for the
  detector; upsample + argmax + fractions at source resolution for the segmentor);
- for int8: the accuracy change recorded in the bundle at export.

Bundles come from real AutoTimm checkpoints made here (random weights, ``pretrained=False``:
speed does not depend on the weights); the detector defaults to the committed demo detector
when present. Results go to ``<out>/tasks.json``; a Markdown table is printed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from autotimm_stream.export.checkpoint import export_checkpoint
from autotimm_stream.runtime.load import read_meta
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.synthetic import write_clip

from .common import DEMO_DETECTOR_CKPT, machine_info, write_report
from .inputs import make_checkpoint
from .throughput import engine_config, prepare_inputs, run_engine

_logger = logging.getLogger("benchmarks.tasks")

RUNTIMES = {
    "torchscript": {"fmt": "torchscript"},
    "export": {"fmt": "export"},
    "onnx": {"fmt": "onnx"},
    "onnx-int8": {"fmt": "onnx", "quantize": "int8"},
}
TASKS = ("detection", "segmentation")


def measure(bundle: Path, clip: Path, batch: int, out_dir: Path) -> dict[str, Any]:
    cfg = engine_config(clip, bundle, batch, out_dir, video=False)
    runner = ModelRunner(bundle)
    prepared = prepare_inputs(clip, runner, batch)
    del runner
    summary, model_res = run_engine(cfg, prepared)
    stages = summary["stages_ms"]
    return {
        "model_only_fps": model_res["fps"] if model_res else None,
        "engine_fps": summary["fps"],
        "post_ms_per_frame": stages["post"]["mean"],
        "infer_ms_per_frame": stages["infer"]["mean"],
        "preprocess_ms_per_frame": stages["preprocess"]["mean"],
        "frames": summary["frames"],
        "batch_size_mean": summary["batch_size_mean"],
        "bundle_mb": round(bundle.stat().st_size / 1e6, 2),
    }


def runtimes(
    out: Path,
    cache: Path,
    tasks: tuple[str, ...] = TASKS,
    formats: tuple[str, ...] = tuple(RUNTIMES),
    frames: int = 120,
    batch: int = 4,
    width: int = 1280,
    height: int = 720,
    det_size: int = 320,
    seg_size: int = 256,
    backbone: str = "resnet18",
) -> dict[str, Any]:
    """Every task on every runtime of ``formats``; prints the table, writes ``<out>/tasks.json`` and
    returns the report. The clip and the checkpoints are cached in ``cache``, the exported bundles
    and the engine runs go to ``out``.

    ``det_size``: the random-weight detector's input size, used only when the demo detector's
    checkpoint is missing; ``seg_size``: the segmentor's; ``backbone``: of the generated checkpoints.
    """
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    params = {"tasks": list(tasks), "formats": list(formats), "frames": frames, "batch": batch, "width": width,
              "height": height, "det_size": det_size, "seg_size": seg_size, "backbone": backbone}  # fmt: skip
    clip = cache / f"shapes_{width}x{height}_{frames}f.mp4"
    if not clip.is_file():
        tmp = clip.with_name(clip.stem + ".partial.mp4")
        write_clip(tmp, frames=frames, width=width, height=height, fps=25, seed=11, dominant=False, n_shapes=4)
        tmp.replace(clip)

    results: dict[str, Any] = {}
    for task in tasks:
        if task == "detection" and DEMO_DETECTOR_CKPT.is_file():
            ckpt, label = DEMO_DETECTOR_CKPT, "demo detector"
        else:
            size = det_size if task == "detection" else seg_size
            ckpt, label = make_checkpoint(task, cache, backbone, size), f"{backbone}@{size} (random)"
        for name in formats:
            bundle = out / f"{task}_{name}{'.onnx' if 'onnx' in name else '.pt2' if name == 'export' else '.pt'}"
            t0 = time.perf_counter()
            export_checkpoint(ckpt, bundle, **RUNTIMES[name])
            export_s = time.perf_counter() - t0
            meta = read_meta(bundle)
            _logger.info("%s / %s: exported in %.1f s; measuring", task, name, export_s)
            res = measure(bundle, clip, batch, out / f"run_{task}_{name}")
            res.update(model=label, export_s=round(export_s, 1), input_size=list(meta.input_size))
            if meta.quantization:
                res["quantization"] = meta.quantization
            results.setdefault(task, {})[name] = res

    report = {"machine": machine_info(), "params": params, "results": results}
    write_report(report, out / "tasks.json")
    print(f"\nclip {width}x{height}, {frames} frames, batch {batch}; numbers are noisy, compare ratios\n")
    print(
        "| task | runtime | model | model-only fps | engine fps | engine / model | post ms/frame | bundle MB | int8 change |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for task, by_fmt in results.items():
        for name, r in by_fmt.items():
            ratio = r["engine_fps"] / r["model_only_fps"] if r["model_only_fps"] else float("nan")
            q = r.get("quantization", {}).get("summary", "")
            print(
                f"| {task} | {name} | {r['model']} | {r['model_only_fps']:.1f} | {r['engine_fps']:.1f} | {ratio:.2f} | "
                f"{r['post_ms_per_frame']:.2f} | {r['bundle_mb']} | {q} |"
            )
    print(f"\nwritten: {out / 'tasks.json'}")
    return report


def runtimes_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the suite's results.json keeps of a :func:`runtimes` report (the rest is in its own JSON)."""
    keep = ("model_only_fps", "engine_fps", "post_ms_per_frame", "bundle_mb")
    return {
        "json": report["json_path"],
        "results": {
            task: {name: {k: r[k] for k in keep} for name, r in by_fmt.items()}
            for task, by_fmt in report["results"].items()
        },
    }
