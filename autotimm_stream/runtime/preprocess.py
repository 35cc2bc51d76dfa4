"""Batched, on-device conversion of uint8 RGB frames into model input.

Three resize modes cover what AutoTimm models were trained on:

- ``center_crop`` (classification): resize the short side to ``floor(size / crop_pct)``, then
  centre-crop ``size`` — timm's eval transform.
- ``squash`` (segmentation): resize straight to the input size, ignoring aspect.
- ``letterbox`` (detection): resize the long side to the input size, pad centred with grey 114.
- ``squash_crop`` (classifiers validated with albumentations): resize both sides to
  ``floor(size / crop_pct)``, ignoring aspect, then centre-crop ``size`` (``A.Resize`` +
  ``A.CenterCrop``, whose offsets round down).

Frames of one shape are stacked and converted in one call; a batch of several shapes costs one
call per shape, never a Python loop over frames of the same shape. On the CPU the resize runs on
uint8 (torch's antialiased uint8 kernels are ~4x faster than on float); on CUDA frames are copied
from pinned memory without blocking and resized in float on the device. Stacking costs a copy,
but a loop of small torch calls hands the GIL back and forth with the model's thread, which cost
more (benchmarks/README.md, "Frame-by-frame CPU preprocessing").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PreprocessSpec", "Geometry", "plan", "preprocess_batch", "RESIZE_MODES", "INTERPOLATIONS"]

RESIZE_MODES = ("center_crop", "squash", "letterbox", "squash_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
LETTERBOX_FILL = 114


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """How a frame becomes model input."""

    size: tuple[int, int]  # (height, width) of the model input
    resize: str = "center_crop"  # one of RESIZE_MODES
    crop_pct: float = 0.875  # center_crop / squash_crop: fraction of the resized side kept
    interpolation: str = "bilinear"  # one of INTERPOLATIONS
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Low-pass filter when shrinking, as PIL/torchvision do (timm's classification transforms).
    # AutoTimm's detection and segmentation transforms resize with OpenCV's INTER_LINEAR, which
    # does not: their bundles set False so the network sees what it was trained on.
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) with positive values, got {self.size!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got {self.mean!r} / {self.std!r}")


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where a source frame lands in the model input.

    The frame is resized to ``resized`` (h, w); then ``crop`` (top, left) pixels are cut from the
    resized image (center_crop) or ``pad`` (top, left) pixels of fill are added (letterbox).
    A point ``(x, y)`` in model input maps back to the frame as
    ``((x + crop_left - pad_left) / scale_x, (y + crop_top - pad_top) / scale_y)``.
    """

    resized: tuple[int, int]
    crop: tuple[int, int] = (0, 0)
    pad: tuple[int, int] = (0, 0)
    scale: tuple[float, float] = (1.0, 1.0)  # (sy, sx): resized / source


def plan(src_h: int, src_w: int, spec: PreprocessSpec) -> Geometry:
    """The pure geometry of ``spec`` applied to a ``src_h`` x ``src_w`` frame."""
    out_h, out_w = spec.size
    if spec.resize == "squash":
        rh, rw = out_h, out_w
        return Geometry((rh, rw), scale=(rh / src_h, rw / src_w))
    if spec.resize == "letterbox":
        s = min(out_h / src_h, out_w / src_w)
        rh, rw = max(1, round(src_h * s)), max(1, round(src_w * s))
        pad = ((out_h - rh) // 2, (out_w - rw) // 2)
        return Geometry((rh, rw), pad=pad, scale=(rh / src_h, rw / src_w))
    if spec.resize == "squash_crop":
        rh = max(out_h, math.floor(out_h / spec.crop_pct))
        rw = max(out_w, math.floor(out_w / spec.crop_pct))
        return Geometry((rh, rw), crop=((rh - out_h) // 2, (rw - out_w) // 2), scale=(rh / src_h, rw / src_w))
    # center_crop, as torchvision Resize(int) + CenterCrop: the short side becomes scale_size.
    scale_size = math.floor(min(out_h, out_w) / spec.crop_pct)
    if src_h <= src_w:
        rh, rw = scale_size, int(scale_size * src_w / src_h)
    else:
        rh, rw = int(scale_size * src_h / src_w), scale_size
    rh, rw = max(rh, out_h), max(rw, out_w)
    crop = (int(round((rh - out_h) / 2.0)), int(round((rw - out_w) / 2.0)))
    return Geometry((rh, rw), crop=crop, scale=(rh / src_h, rw / src_w))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=False)


def _convert_group(x: torch.Tensor, spec: PreprocessSpec, geo: Geometry) -> torch.Tensor:
    """[B, 3, H, W] (uint8 on CPU, float on CUDA) -> [B, 3, out_h, out_w] float in 0..255."""
    out_h, out_w = spec.size
    on_cpu_uint8 = x.dtype == torch.uint8
    y = _resize(x, geo.resized, spec.interpolation, spec.antialias)
    if not on_cpu_uint8 and y is not x:
        # The CPU resizes in uint8 (rounded, saturated); do the same on the GPU so a bundle sees
        # the same input wherever it runs.
        y = y.round_().clamp_(0, 255)
    top, left = geo.crop
    y = y[:, :, top : top + out_h, left : left + out_w]
    if spec.resize == "letterbox":
        pt, pl = geo.pad
        rh, rw = geo.resized
        canvas = torch.full((y.shape[0], 3, out_h, out_w), LETTERBOX_FILL, dtype=y.dtype, device=y.device)
        canvas[:, :, pt : pt + rh, pl : pl + rw] = y
        y = canvas
    return y


def preprocess_batch(
    images: list[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Turn ``images`` (each ``uint8 [H, W, 3]`` RGB) into a normalised ``[B, 3, h, w]`` tensor.

    Frames are grouped by shape; each group is stacked and converted in one call. The output is
    in the order of ``images``.
    """
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    device = torch.device(device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0)
    out_h, out_w = spec.size
    out = torch.empty((len(images), 3, out_h, out_w), dtype=dtype, device=device)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    for shape, idx in groups.items():
        # np.stack copies; a lone frame may be a view with negative strides (a BGR->RGB flip)
        stacked = np.stack([images[i] for i in idx]) if len(idx) > 1 else np.ascontiguousarray(images[idx[0]][None])
        x = torch.from_numpy(stacked).permute(0, 3, 1, 2)  # NHWC memory: channels_last view
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True).float()
        y = _convert_group(x, spec, plan(shape[0], shape[1], spec))
        if len(idx) == len(images) and dtype == torch.float32:
            out.copy_(y).sub_(mean).mul_(inv_std)  # in place: no float temporaries
        else:
            # mixed shapes or fp16: normalise in fp32, then round once into place
            out[torch.tensor(idx, device=device)] = ((y.float() - mean) * inv_std).to(dtype)
    return out
