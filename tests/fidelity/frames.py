"""The frames of the exactness suite: PNG files of several sizes, shapes and exposures.

Generated scenes (:class:`autotimm_stream.synthetic.ShapeScene`: a noisy gradient background and
anti-aliased shapes), written as 8-bit RGB PNG so that every reader decodes the same pixels. Some
are night frames: dark, low contrast, with sensor noise, where one grey level is a larger share of
what the image holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autotimm_stream.synthetic import ShapeScene

__all__ = ["FrameSpec", "FRAMES", "write_frames", "night"]


@dataclass(frozen=True)
class FrameSpec:
    """One frame: its file name (the engine reads a folder in name order), size and exposure."""

    name: str
    width: int
    height: int
    seed: int
    dark: bool = False


# Network inputs are 64 (classifiers) and 128 or 256 (detectors, segmentors): frames larger and
# smaller than both, landscape 16:9 and 4:3, portrait, and odd sizes that round differently.
FRAMES = (
    FrameSpec("f00_640x360.png", 640, 360, 11),
    FrameSpec("f01_320x240.png", 320, 240, 12),
    FrameSpec("f02_180x320.png", 180, 320, 13),
    FrameSpec("f03_211x97.png", 211, 97, 14),
    FrameSpec("f04_96x72.png", 96, 72, 15),
    FrameSpec("f05_48x36.png", 48, 36, 16),
    FrameSpec("f06_400x300_night.png", 400, 300, 17, dark=True),
    FrameSpec("f07_256x143_night.png", 256, 143, 18, dark=True),
)


def night(image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` as a dark, noisy exposure: a third of the light, then sensor noise (sigma 1.5)."""
    rng = np.random.default_rng(seed)
    dark = image.astype(np.float32) * 0.3 + 8 + rng.normal(0, 1.5, size=image.shape)
    return np.clip(np.round(dark), 0, 255).astype(np.uint8)


def render(spec: FrameSpec) -> np.ndarray:
    """The frame's pixels, uint8 RGB [H, W, 3]."""
    image = ShapeScene(spec.width, spec.height, seed=spec.seed, n_shapes=3).render()
    return night(image, spec.seed) if spec.dark else image


def write_frames(folder: Path) -> dict[str, np.ndarray]:
    """Write every frame of :data:`FRAMES` into ``folder`` as PNG; returns name -> RGB pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in FRAMES:
        rgb = render(spec)
        if not cv2.imwrite(str(folder / spec.name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / spec.name}")
        out[spec.name] = rgb
    return out
