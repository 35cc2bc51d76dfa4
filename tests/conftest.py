"""Shared fixtures: generated clips, real bundles, loopback ZMQ endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotimm_stream.export.timm import export_timm
from autotimm_stream.synthetic import write_clip

from .helpers import CLASSES, free_port, write_vfr_clip


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
    from tests.tiny_nets import export_tiny_detector

    path = media / "detector.pt"
    export_tiny_detector(path)
    return path


@pytest.fixture(scope="session")
def seg_bundle(media: Path) -> Path:
    """A segmentation bundle (random weights, squash 96, 4 classes, logits at 1/4)."""
    from tests.tiny_nets import export_tiny_segmentor

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
