"""Shared fixtures: generated clips, real bundles, loopback ZMQ endpoints."""

from __future__ import annotations

import os
import socket
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from autotimm_stream.runtime.export import export_timm
from autotimm_stream.synthetic import ShapeScene, write_clip

CLASSES = ["circle", "square", "triangle"]


def checked(parts: list[bytes]) -> dict:
    """The header of a received message after validating the whole message against schema 1 (JSON Schema).

    Listener threads cannot fail a test by raising, so they append what they got; a message that
    breaks the protocol is recorded as ``{"invalid": reason}``, which no test expects.
    """
    from autotimm_stream.protocol import ProtocolError, validate

    try:
        return validate(parts[0], parts[1], parts[2:])
    except ProtocolError as exc:
        return {"invalid": str(exc)}


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media: Path) -> Path:
    """48 frames, 320x240, 25 fps, H.264 with a keyframe every 12 frames."""
    return Path(write_clip(media / "clip.mp4", frames=48, width=320, height=240, fps=25, seed=1, gop=12))


def write_vfr_clip(path: Path, pts_ms: list[int], width: int = 160, height: int = 120) -> Path:
    """An H.264 clip whose frames sit at the given timestamps (ms): a variable frame rate."""
    tb = Fraction(1, 1000)
    scene = ShapeScene(width, height, seed=3)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "tune": "zerolatency"})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.time_base = tb
        for t in pts_ms:
            vf = av.VideoFrame.from_ndarray(scene.render(), format="rgb24")
            vf.pts, vf.time_base = t, tb
            scene.step()
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


@pytest.fixture(scope="session")
def vfr_clip(media: Path) -> tuple[Path, list[int]]:
    pts = [0, 40, 80, 200, 240, 280, 600, 640, 680, 720]  # gaps, as if frames had been dropped
    return write_vfr_clip(media / "vfr.mp4", pts), pts


@pytest.fixture(scope="session")
def bundle(media: Path) -> Path:
    """A real test_resnet bundle (random weights, pretrained=False) over three classes."""
    import torch

    torch.manual_seed(0)
    path = media / "classifier.pt"
    export_timm("test_resnet", path, CLASSES, top_k=3)
    return path


@pytest.fixture(scope="session")
def det_bundle(media: Path) -> Path:
    """An FCOS-shaped detection bundle (random weights, letterbox 128) that finds boxes everywhere."""
    from .tiny_nets import export_tiny_detector

    path = media / "detector.pt"
    export_tiny_detector(path)
    return path


@pytest.fixture(scope="session")
def seg_bundle(media: Path) -> Path:
    """A segmentation bundle (random weights, squash 96, 4 classes, logits at 1/4)."""
    from .tiny_nets import export_tiny_segmentor

    path = media / "segmentor.pt"
    export_tiny_segmentor(path)
    return path


@pytest.fixture(scope="session")
def multilabel_bundle(media: Path) -> Path:
    import torch

    torch.manual_seed(1)
    path = media / "multilabel.pt"
    export_timm("test_resnet", path, CLASSES, task="multilabel", threshold=0.5)
    return path


def decode_pts(path: os.PathLike[str] | str) -> tuple[list[float], float]:
    """Presentation times (s) of every frame of a video and its container duration (s)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        pts = [float(f.pts * st.time_base) for f in c.decode(st)]
        duration = float(c.duration / av.time_base) if c.duration else 0.0
    return pts, duration


def python() -> str:
    return sys.executable


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes. Inverted boxes (x2 < x1 or y2 < y1: the YOLOX head's regression has no
    ReLU, and AutoTimm emits them as they are) have no area: they match only a box at the same place."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 1.0 if np.abs(np.asarray(a) - np.asarray(b)).max() <= 0.01 else 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else float(np.allclose(a, b))


def rng_frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]
