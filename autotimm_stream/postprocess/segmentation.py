"""Segmentation logits -> a class map at source resolution and per-class pixel fractions.

Pure tensor functions, testable without threads or models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.preprocess import Geometry

__all__ = ["logits_to_mask", "class_fractions"]

# Bound on the blended [rows, columns, classes] float32 temporary of one band.
_BAND_BYTES = 64 * 1024 * 1024


def logits_to_mask(
    logits: torch.Tensor, geo: Geometry, input_hw: tuple[int, int], frame_hw: tuple[int, int]
) -> torch.Tensor:
    """One frame's class map at source resolution.

    The logits cover the network input; the part of the input the frame occupies (all of it for
    ``squash``, the inside of the padding for ``letterbox``) is upsampled bilinearly
    (``align_corners=False``) to the frame's size, then the best class is taken per pixel. For the
    ``squash`` resize AutoTimm's segmentors use, that is exactly "upsample the logits to the
    frame, then argmax". (A centre crop would leave parts of the frame unseen; segmentation
    bundles cannot use it.)

    Args:
        logits (Tensor[C, h, w]): the network's output for this frame.
        geo: how the frame became the input.
        input_hw: (H, W) of the network input.
        frame_hw: (H, W) of the source frame.

    Returns:
        Tensor[H, W] uint8 class ids (int64 if there are more than 256 classes).
    """
    c, h, w = logits.shape
    in_h, in_w = input_hw
    x = logits.float()[None]
    if geo.crop != (0, 0):
        raise ValueError("segmentation needs the whole frame in the input: use the squash or letterbox resize")
    (pt, pl), (rh, rw) = geo.pad, geo.resized
    if (pt, pl) != (0, 0) or (rh, rw) != (in_h, in_w):
        # Letterbox: in input pixels the frame covers [pl, pl + rw) x [pt, pt + rh).
        sy, sx = h / in_h, w / in_w
        x = _footprint(x, (pt * sy, (pt + rh) * sy, pl * sx, (pl + rw) * sx))
    fh, fw = frame_hw
    dtype = torch.uint8 if c <= 256 else torch.long
    # Channels-last, so that the class scores of a pixel are adjacent: argmax over the last,
    # contiguous dimension is ~7x faster than over the first (strided) one.
    x = x.contiguous(memory_format=torch.channels_last)
    return _upsampled_argmax(x, fh, fw, dtype)


def _upsampled_argmax(x: torch.Tensor, fh: int, fw: int, dtype: torch.dtype) -> torch.Tensor:
    """``argmax`` over classes of ``x`` [1, C, h, w] bilinearly upsampled to ``fh`` x ``fw``, computed
    only where it can differ from the nearest logit row's.

    Bilinear is separable: the width is upsampled once (``cols``, [h, W, C]: cheap, h is small),
    then each output row is ``lo + (hi - lo) * wy`` between two rows of ``cols`` (torch's rule:
    half-pixel centres, clamped at 0). Where both rows have the same best class at a column, each
    strictly ahead of the others, every blend of them has that best class too (a convex
    combination keeps a strict maximum), so the class is copied; only the other cells (class
    borders, ~8-12 % of a real frame's pixels) are blended and compared. Same answer as upsampling
    every pixel, 2-4x less work at 720p-1080p (benchmarks/README.md).
    """
    c, h = x.shape[1], x.shape[2]
    dev = x.device
    if c == 1:
        return torch.zeros((fh, fw), dtype=dtype, device=dev)
    cols = F.interpolate(x, size=(h, fw), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)  # [h, W, C]
    best = cols.argmax(-1).to(dtype)  # first index on ties, as argmax over the full upsample
    src_y = ((torch.arange(fh, device=dev, dtype=torch.float32) + 0.5) * (h / fh) - 0.5).clamp(min=0)
    y_lo = src_y.floor().long().clamp(max=h - 1)
    wy = src_y - y_lo.float()
    top2 = cols.topk(2, dim=-1).values
    strict = top2[..., 0] > top2[..., 1]
    # settled[i, x]: rows i and i + 1 agree strictly at column x (the last row blends with itself)
    settled = torch.ones_like(strict)
    settled[:-1] = (best[:-1] == best[1:]) & strict[:-1] & strict[1:]
    out = best.index_select(0, y_lo)  # every pixel takes its upper row's class; borders are redone below
    r0 = 0
    for i, n in enumerate(torch.bincount(y_lo, minlength=h).tolist()):  # output rows r0..r0+n blend rows i, i+1
        rows = slice(r0, r0 + n)
        r0 += n
        if n == 0 or i == h - 1:  # the clamped last row: a copy, already exact
            continue
        xs = (~settled[i]).nonzero().squeeze(1)
        if xs.numel() == 0:
            continue
        lo, hi = cols[i, xs], cols[i + 1, xs]  # [k, C]
        step = max(1, _BAND_BYTES // max(1, xs.numel() * c * 4))  # bound the [rows, k, C] temporary
        for b0 in range(rows.start, rows.stop, step):
            b1 = min(rows.stop, b0 + step)
            out[b0:b1, xs] = (lo + (hi - lo) * wy[b0:b1, None, None]).argmax(-1).to(dtype)
    return out


def _footprint(x: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """The part ``box`` (y0, y1, x0, x1 in logit cells) of ``x`` [1, C, h, w], at integer bounds.

    Fractional bounds are rounded outward; the extra fraction of a cell is small next to the
    bilinear upsampling that follows (this path serves letterboxed segmentors only).
    """
    y0, y1, x0, x1 = box
    h, w = x.shape[-2:]
    top, left = max(0, int(y0)), max(0, int(x0))
    bottom, right = min(h, int(-(-y1 // 1))), min(w, int(-(-x1 // 1)))
    return x[:, :, top:bottom, left:right]


def class_fractions(mask: torch.Tensor | np.ndarray, num_classes: int) -> list[float]:
    """Share of ``mask``'s pixels ([H, W] of class ids) per class: ``num_classes`` floats summing to 1."""
    flat = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).ravel()
    counts = np.bincount(flat, minlength=num_classes)[:num_classes]  # numpy's is ~50x torch's on the CPU
    return (counts / max(1, flat.size)).tolist()
