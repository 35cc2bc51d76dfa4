"""Detection and segmentation bundles: model-only vs engine fps, post-processing cost, runtimes.

For each task (an AutoTimm detector and an AutoTimm segmentor) and each runtime the bundle can be
exported to (TorchScript, torch.export, ONNX on onnxruntime, ONNX with dynamic int8), one run
measures on a generated clip of moving shapes (default 120 frames of 1280x720):

- **model-only fps**: pre-decoded, preprocessed batches through ``runner.forward`` on a worker
  thread (the engine's ceiling);
- **engine fps**: the real pipeline on the file (block policy, ZMQ + JSONL sinks, no video);
- **post ms/frame**: the engine's post-processing stage (decode + NMS + letterbox undo for the
  detector; upsample + argmax + fractions at source resolution for the segmentor);
- for int8: the accuracy change recorded in the bundle at export.

Bundles come from real AutoTimm checkpoints made here (random weights, ``pretrained=False``:
speed does not depend on the weights); the detector defaults to the committed demo detector
when present. Results go to ``<out>/tasks.json``; a Markdown table is printed.

Usage::

    .venv/bin/python benchmarks/tasks.py                      # both tasks, all runtimes
    .venv/bin/python benchmarks/tasks.py --tasks detection --formats torchscript onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from autotimm_stream.export.checkpoint import export_checkpoint  # noqa: E402
from autotimm_stream.runtime.load import read_meta  # noqa: E402
from autotimm_stream.synthetic import write_clip  # noqa: E402
from benchmarks.throughput import engine_config, prepare_inputs, run_engine  # noqa: E402

_logger = logging.getLogger("benchmarks.tasks")

DEMO_DETECTOR = REPO_ROOT / "autotimm_stream" / "assets" / "demo_detector.ckpt"
RUNTIMES = {
    "torchscript": {"fmt": "torchscript"},
    "export": {"fmt": "export"},
    "onnx": {"fmt": "onnx"},
    "onnx-int8": {"fmt": "onnx", "quantize": "int8"},
}


def make_checkpoint(task: str, folder: Path, backbone: str, size: int) -> Path:
    """A real AutoTimm checkpoint (random weights) for ``task``, saved as a Lightning Trainer does."""
    import pytorch_lightning as pl
    from autotimm import FeatureBackboneConfig, ObjectDetector, SemanticSegmentor

    path = folder / f"{task}_{backbone}_{size}.ckpt"
    if path.is_file():
        return path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = FeatureBackboneConfig(model_name=backbone, pretrained=False)
        if task == "detection":
            model = ObjectDetector(backbone=cfg, num_classes=3, metrics=[], fpn_channels=64, head_num_convs=2)
        else:
            model = SemanticSegmentor(backbone=cfg, num_classes=4, head_type="deeplabv3plus")
        trainer = pl.Trainer(
            max_steps=0, logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False
        )
        trainer.strategy.connect(model)
        trainer.save_checkpoint(path, weights_only=True)
    ckpt = torch.load(path, weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {"image_size": size}  # as a DataModule-trained checkpoint carries
    torch.save(ckpt, path)
    return path


def measure(bundle: Path, clip: Path, batch: int, out_dir: Path) -> dict[str, Any]:
    cfg = engine_config(clip, bundle, batch, out_dir, video=False)
    from autotimm_stream.runtime.runner import ModelRunner

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out", help="output folder (clips, bundles, tasks.json)")
    parser.add_argument("--tasks", nargs="+", default=["detection", "segmentation"])
    parser.add_argument("--formats", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--det-size", type=int, default=320, help="detector input size (random-weight detector)")
    parser.add_argument("--seg-size", type=int, default=256, help="segmentor input size")
    parser.add_argument("--backbone", default="resnet18", help="timm backbone of the generated checkpoints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clip = out / f"shapes_{args.width}x{args.height}_{args.frames}f.mp4"
    if not clip.is_file():
        write_clip(
            clip, frames=args.frames, width=args.width, height=args.height, fps=25, seed=11, dominant=False, n_shapes=4
        )

    results: dict[str, Any] = {}
    for task in args.tasks:
        if task == "detection" and DEMO_DETECTOR.is_file():
            ckpt, label = DEMO_DETECTOR, "demo detector"
        else:
            size = args.det_size if task == "detection" else args.seg_size
            ckpt, label = make_checkpoint(task, out, args.backbone, size), f"{args.backbone}@{size} (random)"
        for name in args.formats:
            bundle = out / f"{task}_{name}{'.onnx' if 'onnx' in name else '.pt2' if name == 'export' else '.pt'}"
            t0 = time.perf_counter()
            export_checkpoint(ckpt, bundle, **RUNTIMES[name])
            export_s = time.perf_counter() - t0
            meta = read_meta(bundle)
            _logger.info("%s / %s: exported in %.1f s; measuring", task, name, export_s)
            res = measure(bundle, clip, args.batch, out / f"run_{task}_{name}")
            res.update(model=label, export_s=round(export_s, 1), input_size=list(meta.input_size))
            if meta.quantization:
                res["quantization"] = meta.quantization
            results.setdefault(task, {})[name] = res

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "params": vars(args),
        "results": results,
    }
    (out / "tasks.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nclip {args.width}x{args.height}, {args.frames} frames, batch {args.batch}; numbers are noisy, compare ratios\n"
    )
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
