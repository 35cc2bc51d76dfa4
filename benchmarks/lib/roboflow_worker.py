"""Runs inside the Roboflow venv: an autotimm-stream bundle through Roboflow's InferencePipeline.

A standalone script, not a module of ``lib``: ``lib/roboflow.py`` runs it by path with the Roboflow
venv's own python (``<venv>/bin/python benchmarks/lib/roboflow_worker.py --clip ... --bundle ...
--result ...``). That venv holds only Roboflow's ``inference`` and torch, so it imports neither
autotimm_stream nor the ``lib`` package: besides the standard library, torch, numpy, cv2 and
``inference``, only ``cpumeter.py``, its sibling file (standard library only), as a top-level module
(run by path, the script's folder is its ``sys.path[0]``). Keep it that way. The bundle's metadata
is read straight from the TorchScript archive (``_extra_files["autotimm_stream.json"]``).

What runs per frame mirrors what the engine does for a classification bundle:
cv2 decode (Roboflow's video source) -> BGR->RGB -> the engine's preprocessing (uint8
antialiased resize + centre crop, normalise; the same torch calls as
``autotimm_stream.runtime.preprocess``) -> forward under ``torch.inference_mode`` on the frozen,
inference-optimised TorchScript module (as the engine's ``ModelRunner`` loads it) -> softmax
top-K -> one JSON line per frame written to a JSONL file.

The figures go to ``--result`` as JSON. Exit codes: 0 measured, 2 bad input (not a
classification bundle, unreadable clip), 3 the pipeline failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from cpumeter import CpuMeter  # the sibling file, not lib.cpumeter: run by path, this folder is sys.path[0]

META_FILE = "autotimm_stream.json"

# Quiet, offline-friendly Roboflow: no version check against the network, no optional model families.
os.environ.setdefault("DISABLE_VERSION_CHECK", "True")
for _flag in (
    "CORE_MODEL_SAM_ENABLED",
    "CORE_MODEL_SAM3_ENABLED",
    "CORE_MODEL_YOLO_WORLD_ENABLED",
    "CORE_MODEL_GAZE_ENABLED",
):
    os.environ.setdefault(_flag, "False")


def log(msg: str) -> None:
    print(f"[roboflow-worker] {msg}", file=sys.stderr, flush=True)


# -- the engine's preprocessing, restated (autotimm_stream/runtime/preprocess.py) ------------------
def plan(src_h: int, src_w: int, meta: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(resized (h, w), crop (top, left), pad (top, left)) for a src_h x src_w frame."""
    out_h, out_w = meta["input_size"]
    mode = meta.get("resize", "center_crop")
    if mode == "squash":
        return (out_h, out_w), (0, 0), (0, 0)
    if mode == "letterbox":
        s = min(out_h / src_h, out_w / src_w)
        rh, rw = max(1, round(src_h * s)), max(1, round(src_w * s))
        return (rh, rw), (0, 0), ((out_h - rh) // 2, (out_w - rw) // 2)
    scale_size = math.floor(min(out_h, out_w) / meta.get("crop_pct", 0.875))
    if src_h <= src_w:
        rh, rw = scale_size, int(scale_size * src_w / src_h)
    else:
        rh, rw = int(scale_size * src_h / src_w), scale_size
    rh, rw = max(rh, out_h), max(rw, out_w)
    return (rh, rw), (int(round((rh - out_h) / 2.0)), int(round((rw - out_w) / 2.0))), (0, 0)


class Preprocessor:
    """uint8 RGB frames of one shape -> normalised float [B, 3, h, w], as the engine does on the CPU."""

    def __init__(self, meta: dict[str, Any]):
        import torch

        self.torch = torch
        self.meta = meta
        self.size = tuple(int(v) for v in meta["input_size"])
        self.mode = meta.get("resize", "center_crop")
        self.interp = meta.get("interpolation", "bilinear")
        # bundle version 3 names the transform library; versions 1-2 said antialias
        self.antialias = (
            meta.get("transform_backend", "torchvision" if meta.get("antialias", True) else "") == "torchvision"
        )
        self.mean = torch.tensor(meta.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(meta.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255.0)
        self._plans: dict[tuple[int, int], Any] = {}

    def __call__(self, images: list[Any]) -> Any:
        import numpy as np
        import torch.nn.functional as F

        torch = self.torch
        out_h, out_w = self.size
        out = torch.empty((len(images), 3, out_h, out_w), dtype=torch.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, idx in groups.items():
            stacked = np.stack([images[i] for i in idx]) if len(idx) > 1 else np.ascontiguousarray(images[idx[0]][None])
            x = torch.from_numpy(stacked).permute(0, 3, 1, 2)
            key = (shape[0], shape[1])
            if key not in self._plans:
                self._plans[key] = plan(shape[0], shape[1], self.meta)
            resized, crop, pad = self._plans[key]
            if tuple(x.shape[-2:]) != resized:
                if self.interp == "nearest":
                    x = F.interpolate(x, size=resized, mode="nearest-exact")
                else:
                    x = F.interpolate(x, size=resized, mode=self.interp, antialias=self.antialias, align_corners=False)
            x = x[:, :, crop[0] : crop[0] + out_h, crop[1] : crop[1] + out_w]
            if self.mode == "letterbox":
                canvas = torch.full((x.shape[0], 3, out_h, out_w), 114, dtype=x.dtype)
                canvas[:, :, pad[0] : pad[0] + resized[0], pad[1] : pad[1] + resized[1]] = x
                x = canvas
            if len(idx) == len(images):
                out.copy_(x).sub_(self.mean).mul_(self.inv_std)
            else:
                out[torch.tensor(idx)] = (x.float() - self.mean) * self.inv_std
        return out


def flatten(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    flat: list[Any] = []
    for item in out:
        if item is not None:
            flat.extend(flatten(item))
    return flat


def load_bundle(path: str, optimize: bool) -> tuple[Any, dict[str, Any]]:
    """The TorchScript module (frozen + optimised for inference, as the engine's runner does) and its metadata."""
    import torch

    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.14: torch.jit.* is deprecated (still works)
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra).eval()
        if optimize:
            module = torch.jit.freeze(module)
            module = torch.jit.optimize_for_inference(module)
    raw = extra[META_FILE]
    if not raw:
        raise ValueError(f"{path}: no {META_FILE} in the TorchScript archive; is it an autotimm-stream bundle?")
    meta = json.loads(raw)
    return module, meta


# -- the run ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="autotimm-stream bundle through Roboflow InferencePipeline")
    p.add_argument("--clip", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--result", required=True, help="where the JSON result goes")
    p.add_argument("--jsonl", default="", help="per-frame predictions (default: none written, only serialised)")
    p.add_argument("--sources", type=int, default=1, help="the clip opened this many times: frames per call")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: the whole clip)")
    p.add_argument("--expected", type=int, default=0, help="frames the clip holds (for the drop check)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: keep torch's default)")
    p.add_argument("--top-k", type=int, default=0, help="0: the bundle's top_k")
    p.add_argument("--no-optimize", action="store_true", help="do not freeze/optimize_for_inference the module")
    p.add_argument("--deadline-s", type=float, default=600.0, help="give up on the pipeline after this long")
    return p.parse_args(argv)


def write_result(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import importlib.metadata as md

    import numpy as np
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        module, meta = load_bundle(args.bundle, optimize=not args.no_optimize)
    except (RuntimeError, ValueError, OSError) as exc:
        log(f"cannot load the bundle: {exc}")
        return 2
    task = meta.get("task")
    if task not in ("classification", "multilabel"):
        log(f"the bundle's task is {task!r}; this benchmark runs classification and multilabel bundles only")
        return 2
    names: list[str] = list(meta["class_names"])
    top_k = min(args.top_k or int(meta.get("top_k", 5)), len(names))
    threshold = meta.get("threshold", 0.5)
    thr_t = torch.as_tensor(threshold, dtype=torch.float32)
    prep = Preprocessor(meta)
    h, w = prep.size
    with torch.inference_mode():  # warm-up: every batch size the pipeline can hand us
        for b in sorted({1, args.sources}):
            for _ in range(3):
                module(torch.zeros(b, 3, h, w))
    load_s = time.perf_counter() - t0
    log(f"bundle loaded and warmed up in {load_s:.1f} s ({meta.get('model_name', '?')}, {task}, {h}x{w})")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from inference import InferencePipeline

        try:  # the documented (legacy) import paths; streamvision's where the shim is absent
            from inference.core.interfaces.camera.video_source import (
                BufferConsumptionStrategy,
                BufferFillingStrategy,
            )
        except ImportError:  # pragma: no cover - depends on the installed version
            from streamvision.camera.buffer_strategies import BufferConsumptionStrategy, BufferFillingStrategy
    import_s = time.perf_counter() - t0
    import cv2

    versions = {
        "inference": md.version("inference") if _installed(md, "inference") else None,
        "streamvision": md.version("streamvision") if _installed(md, "streamvision") else None,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    log(f"imported inference {versions['inference']} in {import_s:.1f} s ({InferencePipeline.__module__})")

    state: dict[str, Any] = {
        "count": 0,
        "calls": 0,
        "batch_sum": 0,
        "t_first": None,
        "t_last": None,
        "error": None,
        "ids": {},  # source_id -> list of frame_id
        "max_batch": 0,
        "thread_set": False,
    }
    lock = threading.Lock()
    out_fh = open(args.jsonl, "w", encoding="utf-8", buffering=1 << 16) if args.jsonl else None
    limit = args.frames * args.sources if args.frames > 0 else 0
    stop_requested = threading.Event()
    pipeline_box: dict[str, Any] = {}

    def on_video_frame(video_frames: list[Any]) -> list[dict[str, Any]]:
        try:
            if not state["thread_set"] and args.threads > 0:
                torch.set_num_threads(args.threads)  # OpenMP settings are per thread: this is the inference thread
                state["thread_set"] = True
            images = [vf.image[..., ::-1] for vf in video_frames]  # cv2 BGR -> RGB (a view; stacking copies)
            x = prep(images)
            with torch.inference_mode():
                logits = flatten(module(x))[0].float()
            if task == "classification":
                scores, ids = torch.softmax(logits, dim=1).topk(top_k, dim=1)
                scores_l, ids_l = scores.tolist(), ids.tolist()
                results = [
                    {
                        "classes": [
                            {"class_id": int(c), "label": names[int(c)], "score": round(float(s), 6)}
                            for s, c in zip(srow, irow, strict=True)
                        ]
                    }
                    for srow, irow in zip(scores_l, ids_l, strict=True)
                ]
            else:
                probs = torch.sigmoid(logits)
                keep = probs >= thr_t
                results = []
                for r in range(probs.shape[0]):
                    idx = keep[r].nonzero().flatten().tolist()
                    results.append(
                        {
                            "classes": [
                                {"class_id": i, "label": names[i], "score": round(float(probs[r, i]), 6)} for i in idx
                            ]
                        }
                    )
            state["calls"] += 1
            state["batch_sum"] += len(video_frames)
            state["max_batch"] = max(state["max_batch"], len(video_frames))
            return results
        except BaseException as exc:  # the pipeline only logs handler errors; keep the first for the report
            if state["error"] is None:
                state["error"] = f"on_video_frame: {exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"
            raise

    def sink_one(pred: dict[str, Any] | None, frame: Any) -> None:
        if pred is None or frame is None:
            return
        msg = {
            "source_id": f"roboflow{frame.source_id or 0}",
            "frame_index": frame.frame_id,
            "timestamp": frame.frame_timestamp.timestamp() if frame.frame_timestamp else None,
            "model": meta.get("model_name", ""),
            "height": int(frame.image.shape[0]),
            "width": int(frame.image.shape[1]),
            **pred,
        }
        line = json.dumps(msg)
        if out_fh is not None:
            out_fh.write(line + "\n")
        now = time.perf_counter()
        with lock:
            state["count"] += 1
            state["ids"].setdefault(frame.source_id or 0, []).append(frame.frame_id)
            if state["t_first"] is None:
                state["t_first"] = now
            state["t_last"] = now
            reached = limit and state["count"] >= limit
        if reached and not stop_requested.is_set():
            stop_requested.set()
            threading.Thread(target=pipeline_box["p"].terminate, name="bench-stop", daemon=True).start()

    def on_prediction(predictions: Any, frames: Any) -> None:
        try:
            if isinstance(predictions, list):  # several sources: lists aligned by source
                for pred, frame in zip(predictions, frames, strict=True):
                    sink_one(pred, frame)
            else:
                sink_one(predictions, frames)
        except BaseException as exc:
            if state["error"] is None:
                state["error"] = f"on_prediction: {exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"
            raise

    refs: str | list[str] = args.clip if args.sources == 1 else [args.clip] * args.sources
    pipeline = InferencePipeline.init_with_custom_logic(
        video_reference=refs,
        on_video_frame=on_video_frame,
        on_prediction=on_prediction,
        max_fps=None,  # no pacing: as fast as the pipeline goes
        source_buffer_filling_strategy=BufferFillingStrategy.WAIT,  # never drop a decoded frame
        source_buffer_consumption_strategy=BufferConsumptionStrategy.LAZY,  # take frames one by one, in order
        batch_collection_timeout=None,  # several sources: wait for one frame of each (files never stall)
    )
    pipeline_box["p"] = pipeline
    log(f"pipeline: {args.sources} source(s) of {os.path.basename(args.clip)}, torch threads {torch.get_num_threads()}")
    meter = CpuMeter()
    t_start = time.perf_counter()
    pipeline.start(use_main_thread=False)
    finished = threading.Event()

    def joiner() -> None:
        pipeline.join()
        finished.set()

    threading.Thread(target=joiner, name="bench-join", daemon=True).start()
    timed_out = not finished.wait(args.deadline_s)
    if timed_out:
        log(f"the pipeline did not finish within {args.deadline_s:.0f} s; terminating it")
        try:
            pipeline.terminate()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log(f"terminate failed: {exc}")
        finished.wait(30)
    cpu = meter.stop()
    if out_fh is not None:
        out_fh.close()

    count = state["count"]
    t_first, t_last = state["t_first"], state["t_last"]
    wall = (t_last - t_start) if t_last else 0.0
    expected = (min(args.frames, args.expected) if args.frames and args.expected else args.expected or args.frames) * (
        args.sources
    )
    gaps = 0
    for ids in state["ids"].values():
        ids_sorted = sorted(ids)
        if ids_sorted:
            gaps += (ids_sorted[-1] - ids_sorted[0] + 1) - len(set(ids_sorted))
    doc: dict[str, Any] = {
        "fps": round(count / wall, 2) if wall > 0 else 0.0,
        "frames": count,
        "wall_s": round(wall, 3),
        "fps_first_to_last": round((count - 1) / (t_last - t_first), 2) if count > 1 and t_last > t_first else None,
        "expected_frames": expected or None,
        "dropped": (expected - count) if expected else None,
        "frame_id_gaps": gaps,
        "sources": args.sources,
        "calls": state["calls"],
        "batch_mean": round(state["batch_sum"] / state["calls"], 2) if state["calls"] else 0.0,
        "batch_max": state["max_batch"],
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "optimized": not args.no_optimize,
        "load_warmup_s": round(load_s, 2),
        "import_s": round(import_s, 2),
        "timed_out": timed_out,
        "error": state["error"],
        "versions": versions,
        "model": meta.get("model_name", ""),
        "task": task,
        "input_size": [h, w],
        "top_k": top_k,
    }
    write_result(args.result, doc)
    if state["error"]:
        log(state["error"])
        return 3
    if timed_out:
        return 3
    log(f"{count} frames in {wall:.2f} s: {doc['fps']} fps (batch mean {doc['batch_mean']})")
    return 0


def _installed(md: Any, name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
