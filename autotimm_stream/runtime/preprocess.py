"""Batched conversion of uint8 RGB frames into model input, with the training library's arithmetic.

Four resize modes cover what AutoTimm models were trained on:

- ``center_crop`` (classification): resize the short side to ``floor(size / crop_pct)``, then
  centre-crop ``size`` — timm's and torchvision's eval transform.
- ``squash`` (segmentation): resize straight to the input size, ignoring aspect.
- ``letterbox`` (detection): resize the long side to the input size, pad centred with grey 114.
- ``squash_crop`` (classifiers validated with albumentations): resize both sides to
  ``floor(size / crop_pct)``, ignoring aspect, then centre-crop ``size`` (``A.Resize`` +
  ``A.CenterCrop``, whose offsets round down).

``spec.backend`` names the transform library that built the training inputs, and so the exact
arithmetic the network must see again:

- ``torchvision``: Pillow's resample (antialiased), then ``ToTensor`` + ``Normalize``:
  ``(v / 255 - mean) / std`` in float32;
- ``albumentations``: OpenCV's ``cv2.resize`` (no antialiasing), then ``Normalize``:
  ``(v - 255 * mean) * (1 / (255 * std))`` in float32.

With ``exact=True`` (the default) every path gives the uint8 image and the float32 tensor the
library gives, bit for bit: on the CPU the library itself resizes each frame (OpenCV and Pillow
release the GIL); on CUDA an integer kernel (:mod:`.resample`) resizes on the device, or the host
does (``resize_on="host"``) and only the small result is copied. ``exact=False`` trades that for
torch's own kernels where they are faster (Pillow's resample costs ~10x torch's antialiased uint8
kernel on the CPU), within one grey level. Measurements: benchmarks/README.md, "Exact resizing".
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .resample import DEVICE_KERNELS, resize_host, resize_tensor

__all__ = [
    "BACKENDS",
    "FIDELITIES",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "RESIZE_ON",
    "Geometry",
    "PreprocessSpec",
    "exact_for",
    "plan",
    "preprocess_batch",
]

RESIZE_MODES = ("center_crop", "squash", "letterbox", "squash_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
BACKENDS = ("torchvision", "albumentations")
RESIZE_ON = ("device", "host")
FIDELITIES = ("auto", "exact", "fast")
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
    # The library whose resize and normalisation built the training inputs (one of BACKENDS):
    # torchvision (Pillow, antialiased) for timm and torchvision classifiers; albumentations
    # (OpenCV INTER_LINEAR, no antialiasing) for AutoTimm's detection and segmentation transforms.
    backend: str = "torchvision"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
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


@functools.lru_cache(maxsize=256)
def plan(src_h: int, src_w: int, spec: PreprocessSpec) -> Geometry:
    """The pure geometry of ``spec`` applied to a ``src_h`` x ``src_w`` frame."""
    out_h, out_w = spec.size
    if spec.resize == "squash":
        rh, rw = out_h, out_w
        return Geometry((rh, rw), scale=(rh / src_h, rw / src_w))
    if spec.resize == "letterbox":
        # albumentations LongestMaxSize: round(side * max_size / longest), at least 1; PadIfNeeded
        # centred: the odd pixel of padding goes to the bottom / right
        s = min(out_h / src_h, out_w / src_w)
        rh, rw = max(1, round(src_h * s)), max(1, round(src_w * s))
        pad = ((out_h - rh) // 2, (out_w - rw) // 2)
        return Geometry((rh, rw), pad=pad, scale=(rh / src_h, rw / src_w))
    if spec.resize == "squash_crop":
        rh = max(out_h, math.floor(out_h / spec.crop_pct))
        rw = max(out_w, math.floor(out_w / spec.crop_pct))
    else:  # center_crop, as torchvision Resize(int) + CenterCrop: the short side becomes scale_size
        scale_size = math.floor(min(out_h, out_w) / spec.crop_pct)
        if src_h <= src_w:
            rh, rw = scale_size, int(scale_size * src_w / src_h)
        else:
            rh, rw = int(scale_size * src_h / src_w), scale_size
        rh, rw = max(rh, out_h), max(rw, out_w)
    return Geometry((rh, rw), crop=_crop_offsets(rh - out_h, rw - out_w, spec.backend), scale=(rh / src_h, rw / src_w))


def _crop_offsets(dh: int, dw: int, backend: str) -> tuple[int, int]:
    """(top, left) of a centre crop that leaves ``dh`` x ``dw`` pixels out, as ``backend`` places it.

    albumentations' CenterCrop rounds the offset down; torchvision's rounds it half to even
    (``int(round(d / 2.0))``): an odd margin of 1, 5, 9... puts the odd pixel on the other side.
    """
    if backend == "albumentations":
        return dh // 2, dw // 2
    return int(round(dh / 2.0)), int(round(dw / 2.0))


def exact_for(fidelity: str, spec: PreprocessSpec, device: torch.device) -> bool:
    """Whether ``fidelity`` (one of FIDELITIES) resizes ``spec``'s frames with the library's arithmetic on ``device``.

    ``auto`` is exact wherever exactness is cheap: OpenCV-trained bundles everywhere (OpenCV is
    faster than torch's uint8 kernels) and every bundle on CUDA (integer kernels on the device).
    Pillow-trained bundles on the CPU get torch's antialiased kernel instead: Pillow costs 4-6x
    more per frame (5-17 CPU-ms at 720p-1080p), 15-25 % of the suite classifier's engine fps, for
    one grey level on 0.1-1.1 % of pixels (benchmarks/README.md, "--only preprocess").
    """
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {FIDELITIES}, got {fidelity!r}")
    if fidelity == "auto":
        return device.type == "cuda" or spec.backend == "albumentations"
    return fidelity == "exact"


def _window(geo: Geometry, spec: PreprocessSpec) -> tuple[slice, slice, slice, slice]:
    """(rows, cols) of the resized image that are kept, and (rows, cols) of the input they fill."""
    out_h, out_w = spec.size
    ch, cw = min(geo.resized[0], out_h), min(geo.resized[1], out_w)
    (top, left), (pt, pl) = geo.crop, geo.pad
    return slice(top, top + ch), slice(left, left + cw), slice(pt, pt + ch), slice(pl, pl + cw)


def _host_inputs(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """uint8 ``[B, h, w, 3]`` model inputs, each frame resized by the training library itself."""
    out_h, out_w = spec.size
    batch = np.empty((len(images), out_h, out_w, 3), dtype=np.uint8)
    if spec.resize == "letterbox":
        batch.fill(LETTERBOX_FILL)
    for i, img in enumerate(images):
        geo = plan(img.shape[0], img.shape[1], spec)
        # OpenCV refuses negative strides (a BGR->RGB flip view); a contiguous frame is not copied
        resized = resize_host(np.ascontiguousarray(img), geo.resized, spec.backend, spec.interpolation)
        rows, cols, in_rows, in_cols = _window(geo, spec)
        batch[i, in_rows, in_cols] = resized[rows, cols]
    return batch


def _resize(x: torch.Tensor, size: tuple[int, int], spec: PreprocessSpec, exact: bool) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> uint8 ``[B, 3, *size]``: the library's integer kernel, or torch's own."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if exact:
        return resize_tensor(x, size, spec.backend, spec.interpolation)
    if spec.interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    antialias = spec.backend == "torchvision"  # Pillow low-pass filters when shrinking, OpenCV does not
    if x.is_cuda:  # no uint8 kernels on CUDA: resize in float and round as the CPU's uint8 kernels do
        y = F.interpolate(x.float(), size=size, mode=spec.interpolation, antialias=antialias, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(x, size=size, mode=spec.interpolation, antialias=antialias, align_corners=False)


def _tensor_inputs(images: list[np.ndarray], spec: PreprocessSpec, device: torch.device, exact: bool) -> torch.Tensor:
    """uint8 ``[B, 3, h, w]`` model inputs on ``device``, resized there; one call per frame shape.

    Frames of one shape are stacked and resized in one call; a loop of small torch calls hands the
    GIL back and forth with the model's thread (benchmarks/README.md, "Frame-by-frame CPU
    preprocessing").
    """
    out_h, out_w = spec.size
    fill = LETTERBOX_FILL if spec.resize == "letterbox" else 0
    out = torch.full((len(images), 3, out_h, out_w), fill, dtype=torch.uint8, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for shape, idx in groups.items():
        # np.stack copies; a lone frame may be a view with negative strides (a BGR->RGB flip)
        stacked = np.stack([images[i] for i in idx]) if len(idx) > 1 else np.ascontiguousarray(images[idx[0]][None])
        x = torch.from_numpy(stacked).permute(0, 3, 1, 2)  # NHWC memory: channels_last view
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        geo = plan(shape[0], shape[1], spec)
        rows, cols, in_rows, in_cols = _window(geo, spec)
        y = _resize(x, geo.resized, spec, exact)[:, :, rows, cols]
        if len(idx) == len(images):
            out[:, :, in_rows, in_cols] = y
        else:
            for j, i in enumerate(idx):
                out[i, :, in_rows, in_cols] = y[j]
    return out


@functools.lru_cache(maxsize=16)
def _statistics(spec: PreprocessSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``spec``'s normalisation constants as its backend computes them (float32, ``[1, 3, 1, 1]``)."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    if spec.backend == "albumentations":  # A.Normalize: mean * 255 and 1 / (std * 255), in float32
        return (mean * 255.0).to(device), torch.reciprocal(std * 255.0).to(device)
    return mean.to(device), std.to(device)  # torchvision Normalize: as_tensor(mean / std, float32)


def _normalise(x: torch.Tensor, spec: PreprocessSpec, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 ``[B, 3, h, w]`` -> float32 model input with ``spec.backend``'s arithmetic, then ``dtype``."""
    a, b = _statistics(spec, x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt).copy_(x)
    if spec.backend == "albumentations":
        out.sub_(a).mul_(b)  # (v - 255 mean) * (1 / (255 std))
    else:
        out.div_(255.0).sub_(a).div_(b)  # ToTensor (v / 255), then Normalize ((x - mean) / std)
    return out if dtype == torch.float32 else out.to(dtype)


def preprocess_batch(
    images: list[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    exact: bool = True,
    resize_on: str = "device",
) -> torch.Tensor:
    """Turn ``images`` (each ``uint8 [H, W, 3]`` RGB) into a normalised ``[B, 3, h, w]`` tensor.

    Args:
        exact: resize with the training library's arithmetic (bit for bit); False allows torch's
            own kernels where they are faster (within one grey level).
        resize_on: CUDA only: ``device`` resizes there (integer kernels, full frames copied), ``host``
            resizes on the CPU and copies the model-sized result.

    The output is in the order of ``images``.
    """
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    if resize_on not in RESIZE_ON:
        raise ValueError(f"resize_on must be one of {RESIZE_ON}, got {resize_on!r}")
    device = torch.device(device)
    kernel = (spec.backend, spec.interpolation) in DEVICE_KERNELS
    if device.type == "cuda":
        on_host = exact and (resize_on == "host" or not kernel)
    else:  # OpenCV on the host is exact and faster than torch's uint8 kernels; Pillow only exact
        on_host = exact or spec.backend == "albumentations"
    if on_host:
        x = torch.from_numpy(_host_inputs(images, spec)).permute(0, 3, 1, 2)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = _tensor_inputs(images, spec, device, exact)
    return _normalise(x, spec, dtype, channels_last)
