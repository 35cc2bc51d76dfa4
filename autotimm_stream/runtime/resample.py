"""Resizing exactly as the training libraries do: OpenCV's INTER_LINEAR and Pillow's resample.

AutoTimm's transforms resize uint8 images with one of two libraries, each in fixed-point integer
arithmetic: albumentations calls ``cv2.resize`` (detection, segmentation, albumentations
classifiers) and torchvision resizes PIL images with Pillow's ``Image.resize`` (torchvision and
timm classifiers). torch's own kernels round differently (one grey level on 0.1–10 % of pixels),
which a sensitive model turns into different predictions. So the engine resizes with the same
arithmetic:

- on the host, by calling the library itself (:func:`resize_host`): exact by definition;
- on a tensor (any device, CUDA included), with the library's integer arithmetic rebuilt from
  gathers, multiplies, adds and shifts (:func:`resize_opencv_linear`, :func:`resize_pillow`):
  the same uint8 values as the host path, checked against the libraries on random sizes by
  ``tests/runtime/test_resample.py``.

Only what the libraries' sources say is reproduced: OpenCV 4.x ``resize.cpp`` (``resizeGeneric_``
with ``HResizeLinear`` / ``VResizeLinear<uchar, int, short, FixedPtCast<int, uchar, 22>>``, and the
``INTER_AREA`` fast path it switches to for an exact halving) and Pillow's ``Resample.c``
(``precompute_coeffs``, ``normalize_coeffs_8bpc``, two 8-bit passes; Pillow 13 runs the vertical
pass first when the height shrinks more than twice as much as the width).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import PIL
import torch
from PIL import Image

__all__ = [
    "DEVICE_KERNELS",
    "resize_host",
    "resize_opencv_linear",
    "resize_pillow",
    "resize_tensor",
]

OPENCV_COEF_SCALE = 2048  # INTER_RESIZE_COEF_SCALE: 1 << INTER_RESIZE_COEF_BITS (11)
PILLOW_PRECISION_BITS = 32 - 8 - 2  # Resample.c's PRECISION_BITS
_CV2_FLAGS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# Pillow 13 runs the vertical pass first when it shrinks the height much more than the width; the
# two orders round their 8-bit intermediate differently.
_PILLOW_VERTICAL_FIRST = tuple(int(v) for v in PIL.__version__.split(".")[:1]) >= (13,)
# (backend, interpolation) pairs with an integer tensor kernel; others resize on the host
DEVICE_KERNELS = frozenset({("albumentations", "bilinear"), ("torchvision", "bilinear"), ("torchvision", "bicubic")})


def resize_host(image: np.ndarray, size: tuple[int, int], backend: str, interpolation: str) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``) resized to ``size`` (h, w) by the library ``backend`` trains with.

    ``albumentations``: ``cv2.resize`` (as ``albumentations.Resize`` calls it); ``torchvision``:
    Pillow's ``Image.resize`` (as ``torchvision.transforms.Resize`` does on PIL images).
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    if backend == "albumentations":
        return cv2.resize(image, (w, h), interpolation=_CV2_FLAGS[interpolation])
    return np.asarray(Image.fromarray(image).resize((w, h), _PIL_FILTERS[interpolation]))


# -- OpenCV INTER_LINEAR ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=128)
def _opencv_axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the first source index and the float32 fraction, as ``cv::resize`` computes them.

    ``cv::resize`` derives ``inv_scale = dst / src`` from the sizes, inverts it, and works in
    float32 from there: ``f = (float)((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, ``f -= s``.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    return s.astype(np.int64), (f - s).astype(np.float32)


def _opencv_coefs(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``saturate_cast<short>(c * INTER_RESIZE_COEF_SCALE)`` of ``(1 - f, f)``: float32 product, rounded half to even."""
    c0 = (np.float32(1) - frac) * np.float32(OPENCV_COEF_SCALE)
    c1 = frac * np.float32(OPENCV_COEF_SCALE)
    return np.rint(c0).astype(np.int32), np.rint(c1).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _opencv_plan(src_h: int, src_w: int, dst_h: int, dst_w: int) -> dict[str, np.ndarray]:
    sx, fx = _opencv_axis(src_w, dst_w)
    sy, fy = _opencv_axis(src_h, dst_h)
    # columns left of the first or right of the last source pixel take that pixel whole (fx = 0);
    # rows are only clamped: their weights stay as computed (resizeGeneric_ clips the row index)
    fx = np.where((sx < 0) | (sx >= src_w - 1), np.float32(0), fx).astype(np.float32)
    sx = np.clip(sx, 0, src_w - 1)
    a0, a1 = _opencv_coefs(fx)
    b0, b1 = _opencv_coefs(fy)
    return {
        "x0": sx,
        "x1": np.minimum(sx + 1, src_w - 1),
        "y0": np.clip(sy, 0, src_h - 1),
        "y1": np.clip(sy + 1, 0, src_h - 1),
        "a0": a0,
        "a1": a1,
        "b0": b0,
        "b1": b1,
    }


def resize_opencv_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` of uint8 ``x [B, C, H, W]`` to ``size`` (h, w), on ``x``'s device.

    Horizontal pass: ``S = p[x0] * a0 + p[x1] * a1`` (int, 11-bit weights); vertical pass:
    ``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``, OpenCV's uint8 rounding. An
    exact halving of both sides is OpenCV's INTER_AREA fast path: ``(a + b + c + d + 2) >> 2``.
    """
    src_h, src_w = x.shape[-2:]
    dst_h, dst_w = size
    if (src_h, src_w) == (dst_h, dst_w):
        return x
    if src_h == 2 * dst_h and src_w == 2 * dst_w:
        q = x.to(torch.int32)
        s = q[..., 0::2, 0::2] + q[..., 0::2, 1::2] + q[..., 1::2, 0::2] + q[..., 1::2, 1::2]
        return ((s + 2) >> 2).to(torch.uint8)
    p = {k: torch.from_numpy(v).to(x.device) for k, v in _opencv_plan(src_h, src_w, dst_h, dst_w).items()}

    def row_pass(rows: torch.Tensor) -> torch.Tensor:
        r = x.index_select(-2, rows).to(torch.int32)
        return r.index_select(-1, p["x0"]) * p["a0"] + r.index_select(-1, p["x1"]) * p["a1"]

    s0, s1 = row_pass(p["y0"]), row_pass(p["y1"])
    b0, b1 = p["b0"].view(-1, 1), p["b1"].view(-1, 1)
    return ((((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2).to(torch.uint8)


# -- Pillow resample ------------------------------------------------------------------------------------
def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_PILLOW_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@functools.lru_cache(maxsize=128)
def _pillow_axis(src: int, dst: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """``precompute_coeffs`` + ``normalize_coeffs_8bpc``: per output index, source indices and int32 weights.

    Every row holds ``ksize`` taps; taps past a pixel's window have weight 0 (and a valid index).
    Weights are computed in float64 in Pillow's order, so they round to the same integers.
    """
    kernel, support = _PILLOW_FILTERS[interpolation]
    scale = src / dst
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    index = np.zeros((dst, ksize), dtype=np.int64)
    weight = np.zeros((dst, ksize), dtype=np.float64)
    for xx in range(dst):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), src) - xmin
        k = kernel((np.arange(xmax) + xmin - center + 0.5) * inv_filterscale)
        ww = 0.0
        for v in k:  # Pillow sums in order; so do we (np.sum pairs terms)
            ww += v
        if ww != 0.0:
            k = k / ww
        index[xx, :xmax] = np.arange(xmin, xmin + xmax)
        index[xx, xmax:] = xmin
        weight[xx, :xmax] = k
    scaled = weight * (1 << PILLOW_PRECISION_BITS)
    fixed = np.where(weight < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return index, fixed


def _pillow_pass(x: torch.Tensor, dim: int, interpolation: str, dst: int) -> torch.Tensor:
    """One 8-bit pass along ``dim``: ``clip8((sum(p * k) + 2**21) >> 22)``, int64 so no sum can wrap."""
    index, weight = _pillow_axis(x.shape[dim], dst, interpolation)
    idx = torch.from_numpy(index).to(x.device)
    w = torch.from_numpy(weight).to(x.device, torch.int64)
    shape = [1] * x.ndim
    shape[dim] = dst
    acc = torch.full((), 1 << (PILLOW_PRECISION_BITS - 1), dtype=torch.int64, device=x.device)
    for k in range(index.shape[1]):
        acc = acc + x.index_select(dim, idx[:, k]).to(torch.int64) * w[:, k].view(shape)
    return (acc >> PILLOW_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_pillow(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Pillow's ``Image.resize(size, BILINEAR | BICUBIC)`` of uint8 ``x [B, C, H, W]``, on ``x``'s device.

    Two separable passes, each rounding to uint8 as Pillow does; a side that keeps its size is not
    filtered.
    """
    if interpolation not in _PILLOW_FILTERS:
        raise ValueError(f"resize_pillow supports {sorted(_PILLOW_FILTERS)}, got {interpolation!r}")
    src_h, src_w = x.shape[-2:]
    dst_h, dst_w = size
    vertical_first = _PILLOW_VERTICAL_FIRST and 0 < src_h - dst_h and src_h - dst_h > (src_w - dst_w) * 2
    passes = [(-2, dst_h), (-1, dst_w)] if vertical_first else [(-1, dst_w), (-2, dst_h)]
    for dim, dst in passes:
        if x.shape[dim] != dst:
            x = _pillow_pass(x, dim, interpolation, dst)
    return x


def resize_tensor(x: torch.Tensor, size: tuple[int, int], backend: str, interpolation: str) -> torch.Tensor:
    """The integer kernel of ``(backend, interpolation)`` (one of :data:`DEVICE_KERNELS`) on uint8 ``[B, C, H, W]``."""
    if (backend, interpolation) not in DEVICE_KERNELS:
        raise ValueError(
            f"no tensor kernel reproduces {backend}'s {interpolation} resize; resize on the host (resize_host)"
        )
    if backend == "albumentations":
        return resize_opencv_linear(x, size)
    return resize_pillow(x, size, interpolation)
