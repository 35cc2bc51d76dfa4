"""Segmentation logits -> a class map at source resolution and per-class pixel fractions.

Pure tensor functions, testable without threads or models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess import Geometry

__all__ = ["logits_to_mask", "class_fractions"]

# Upsampled logits of a 1080p frame with 21 classes are ~170 MB of float32: do it in row bands.
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
    rows = max(1, _BAND_BYTES // max(1, c * fw * 4))
    if rows >= fh:
        up = F.interpolate(x, size=(fh, fw), mode="bilinear", align_corners=False)
        return up[0].permute(1, 2, 0).argmax(-1).to(dtype)
    # Too big for one interpolate: bilinear is separable, so upsample the width once, then the
    # height band by band with torch's own source-index rule (half-pixel centres, clamped at 0).
    out = torch.empty((fh, fw), dtype=dtype, device=logits.device)
    src_h = x.shape[2]
    src_y = ((torch.arange(fh, device=logits.device, dtype=torch.float32) + 0.5) * (src_h / fh) - 0.5).clamp(min=0)
    y_lo = src_y.floor().long().clamp(max=src_h - 1)
    y_hi = (y_lo + 1).clamp(max=src_h - 1)
    wy = (src_y - y_lo.float()).view(-1, 1, 1)
    cols = F.interpolate(x, size=(src_h, fw), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)  # [h, W, C]
    for r0 in range(0, fh, rows):
        r1 = min(fh, r0 + rows)
        lo, hi = cols[y_lo[r0:r1]], cols[y_hi[r0:r1]]
        out[r0:r1] = (lo + (hi - lo) * wy[r0:r1]).argmax(-1)
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
