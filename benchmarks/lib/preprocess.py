"""Preprocessing cost per frame: the training libraries' exact resize against torch's own kernels.

The single-purpose measurement ``--only preprocess``. For each kind of spec AutoTimm bundles carry
(detection letterbox 640, segmentation squash 512, albumentations classifier squash_crop 224,
torchvision/timm classifier center_crop 224 in bilinear and bicubic) and for frames of 1280x720
and 1920x1080, one run times, per frame, the whole conversion of a batch of 4 uint8 RGB frames
into the normalised float32 model input:

- ``exact``: what the CPU path runs: OpenCV or Pillow resizes each frame on the host (the
  libraries AutoTimm trained with), bit for bit (``preprocess._host_inputs``);
- ``torch``: torch's uint8 kernels on the stacked batch -- the CPU path before exact resizing, and
  what ``model.fidelity: fast`` runs for Pillow-trained classifiers (``_tensor_inputs(exact=False)``);
- ``kernel``: the integer kernels the CUDA path runs (``_tensor_inputs(exact=True)``), here on CPU
  tensors: what exactness costs without the libraries (for reference; the CPU never runs it).

Threads as in the engine on the CPU: OpenCV 1, torch ``--threads`` (default 2). Timings on a
shared machine are noisy: the variants are interleaved round by round and the median is kept, so
compare ratios within one run. Results go to ``<out>/preprocess.json``; a Markdown table is printed.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from autotimm_stream.runtime.preprocess import PreprocessSpec, _host_inputs, _normalise, _tensor_inputs
from autotimm_stream.synthetic import ShapeScene

from .common import machine_info, write_report

_logger = logging.getLogger("benchmarks.preprocess")

SIZES = ((720, 1280), (1080, 1920))
SPECS = {
    "letterbox 640 (detection)": PreprocessSpec((640, 640), "letterbox", backend="albumentations"),
    "squash 512 (segmentation)": PreprocessSpec((512, 512), "squash", backend="albumentations"),
    "squash_crop 224 (albumentations cls)": PreprocessSpec(
        (224, 224), "squash_crop", 224 / 256, backend="albumentations"
    ),
    "center_crop 224 bilinear (torchvision cls)": PreprocessSpec((224, 224), "center_crop", 224 / 256, "bilinear"),
    "center_crop 224 bicubic (timm cls)": PreprocessSpec((224, 224), "center_crop", 0.875, "bicubic"),
}
CPU = torch.device("cpu")
# uint8 [B, 3, h, w] model inputs per variant; each is then normalised the same way (timed with it)
VARIANTS = {
    "exact": lambda frames, spec: torch.from_numpy(_host_inputs(frames, spec)).permute(0, 3, 1, 2),
    "torch": lambda frames, spec: _tensor_inputs(frames, spec, CPU, exact=False),
    "kernel": lambda frames, spec: _tensor_inputs(frames, spec, CPU, exact=True),
}


def convert(variant: str, frames: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """``frames`` -> the normalised float32 model input, resized as ``variant`` does."""
    return _normalise(VARIANTS[variant](frames, spec), spec, torch.float32, False)


def frames_of(h: int, w: int, n: int = 4) -> list[np.ndarray]:
    """``n`` rendered scenes of moving shapes (smooth areas and hard edges, like video)."""
    return [ShapeScene(w, h, seed=7 + i, dominant=False).render() for i in range(n)]


def preprocess(out: Path, rounds: int = 7, threads: int = 2) -> dict[str, Any]:
    """ms per frame per (spec, size, variant): the median over ``rounds`` interleaved rounds."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    results: dict[str, Any] = {}
    for h, w in SIZES:
        frames = frames_of(h, w)
        for name, spec in SPECS.items():
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for v in VARIANTS:  # warm-up: plans, coefficient tables, allocator
                convert(v, frames, spec)
            for _ in range(rounds):
                for v in VARIANTS:
                    t0 = time.perf_counter()
                    convert(v, frames, spec)
                    times[v].append((time.perf_counter() - t0) * 1e3 / len(frames))
            cell = {v: round(statistics.median(t), 3) for v, t in times.items()}
            cell["exact_vs_torch"] = round(cell["exact"] / cell["torch"], 2)
            results.setdefault(name, {})[f"{w}x{h}"] = cell
            _logger.info("%s at %dx%d: %s", name, w, h, cell)
    report = {"machine": machine_info(), "rounds": rounds, "torch_threads": threads, "results": results}
    write_report(report, out / "preprocess.json")
    print(markdown(results))
    return report


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| spec | frame | exact (OpenCV/Pillow) ms | torch ms | integer kernel ms | exact / torch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, by_size in results.items():
        for size, c in by_size.items():
            lines.append(f"| {name} | {size} | {c['exact']} | {c['torch']} | {c['kernel']} | {c['exact_vs_torch']} |")
    return "\n".join(lines)


def preprocess_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the suite's results.json keeps of a :func:`preprocess` report."""
    return {"json": report["json_path"], "results": report["results"]}
