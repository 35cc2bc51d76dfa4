"""Dense-detector outputs -> boxes: FCOS and YOLOX decode, class-aware NMS, letterbox undone.

Pure tensor functions (shapes in the docstrings), testable without threads or models. The decode
is AutoTimm's (``decode_fcos_detections`` / ``YOLOXDetector.predict``), done for the whole batch
at once: one sigmoid and max per level over all images, one ``batched_nms`` over all images
(image index folded into the class index), instead of a Python loop over images and levels.
What reaches the frame is AutoTimm's list, in its order and under its cap, less two kinds of box
that do not exist on the frame: inverted ones and ones wholly in the letterbox padding
(docs/detection.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms

from ..runtime.preprocess import Geometry

__all__ = ["decode_dense", "on_frame", "to_frame_pixels", "grid_points"]

_GRIDS: dict[tuple[int, int, int, str], torch.Tensor] = {}


def grid_points(h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
    """Centres of a level's cells in input pixels, row-major: Tensor[h*w, 2] of ``(x, y)``.

    ``((col + 0.5) * stride, (row + 0.5) * stride)``, as AutoTimm's ``_grid_points``.
    """
    key = (h, w, stride, str(device))
    pts = _GRIDS.get(key)
    if pts is None:
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        pts = torch.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], dim=1)
        if len(_GRIDS) > 64:  # input sizes are few; bound the cache anyway
            _GRIDS.clear()
        _GRIDS[key] = pts
    return pts


def decode_dense(
    cls: Sequence[torch.Tensor],
    reg: Sequence[torch.Tensor],
    ctr: Sequence[torch.Tensor] | None,
    strides: Sequence[int],
    input_hw: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    max_detections: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode a batch of FCOS (``ctr`` given) or YOLOX-head (``ctr=None``) outputs.

    Args:
        cls: per level, Tensor[B, C, h, w] class logits.
        reg: per level, Tensor[B, 4, h, w] distances (left, top, right, bottom) in input pixels.
        ctr: per level, Tensor[B, 1, h, w] centerness logits, or None.
        strides: per level, its stride in input pixels.
        input_hw: (H, W) of the network input; boxes are clamped to it.
        score_thresh: keep locations whose best score is above this.
        nms_thresh: IoU above which a lower-scored box of the same class is suppressed.
        max_detections: at most this many boxes per image, best first.

    Returns:
        Per image: boxes (Tensor[N, 4], xyxy in input pixels, x1 <= x2 and y1 <= y2), scores
        (Tensor[N]), labels (Tensor[N], int64), sorted by descending score: AutoTimm's own list,
        zero-width and zero-height boxes included, less its inverted boxes (see below).
    """
    batch, num_classes = cls[0].shape[0], cls[0].shape[1]
    device = cls[0].device
    img_h, img_w = input_hw
    boxes_l, scores_l, labels_l, image_l = [], [], [], []
    for level, stride in enumerate(strides):
        c = cls[level]
        h, w = c.shape[-2:]
        scores = c.float().permute(0, 2, 3, 1).reshape(batch, h * w, num_classes).sigmoid()
        if ctr is not None:
            scores = scores * ctr[level].float().reshape(batch, h * w, 1).sigmoid()
        best, label = scores.max(dim=2)  # one label per location, as AutoTimm
        keep = best > score_thresh
        if not bool(keep.any()):
            continue
        img_idx, loc_idx = keep.nonzero(as_tuple=True)
        dist = reg[level].float().permute(0, 2, 3, 1).reshape(batch, h * w, 4)[img_idx, loc_idx]
        pts = grid_points(h, w, int(stride), device)[loc_idx]
        boxes = torch.stack(
            [
                (pts[:, 0] - dist[:, 0]).clamp(0, img_w),
                (pts[:, 1] - dist[:, 1]).clamp(0, img_h),
                (pts[:, 0] + dist[:, 2]).clamp(0, img_w),
                (pts[:, 1] + dist[:, 3]).clamp(0, img_h),
            ],
            dim=1,
        )
        boxes_l.append(boxes)
        scores_l.append(best[img_idx, loc_idx])
        labels_l.append(label[img_idx, loc_idx])
        image_l.append(img_idx)
    empty = (
        torch.zeros((0, 4), device=device),
        torch.zeros((0,), device=device),
        torch.zeros((0,), dtype=torch.long, device=device),
    )
    if not boxes_l:
        return [empty for _ in range(batch)]
    boxes, scores, labels, images = (torch.cat(t) for t in (boxes_l, scores_l, labels_l, image_l))
    # One NMS call for the whole batch: boxes of different images or classes never suppress each other.
    kept = batched_nms(boxes, scores, images * num_classes + labels, nms_thresh)  # best first
    # YOLO-style heads regress distances without a ReLU, so a location can decode to an inverted
    # box (x2 < x1 or y2 < y1 after the clamp). AutoTimm returns those as they are; they are not
    # boxes, so they are dropped, but only after NMS (which they took part in) and after AutoTimm's
    # cap, so that what is left is exactly AutoTimm's list without them. A zero-width or
    # zero-height box (an FCOS distance of 0 on both sides, or both edges clamped to the same
    # input border) is a box AutoTimm returns and is kept.
    upright = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    out = []
    kept_images = images[kept]
    for i in range(batch):
        idx = kept[kept_images == i][:max_detections]
        idx = idx[upright[idx]]
        out.append((boxes[idx], scores[idx], labels[idx]) if idx.numel() else empty)
    return out


def on_frame(boxes: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Which boxes share at least one point with the frame: the rest lie wholly in the letterbox padding.

    The frame covers the closed rectangle ``[pl - cl, pl - cl + rw] x [pt - ct, pt - ct + rh]`` of
    the network input (integer bounds, so the test is exact). A box touching it, zero-area or
    not, is on the frame; a box wholly in the padding has no place on the frame: mapped back and
    clipped, it would collapse onto the frame's edge.

    Args:
        boxes (Tensor[N, 4]): xyxy in network-input pixels, x1 <= x2 and y1 <= y2.
        geo: how the frame became the input (:func:`autotimm_stream.runtime.preprocess.plan`).

    Returns:
        Tensor[N], bool.
    """
    (ct, cl), (pt, pl) = geo.crop, geo.pad
    rh, rw = geo.resized
    left, top = pl - cl, pt - ct
    return (boxes[:, 0] <= left + rw) & (boxes[:, 2] >= left) & (boxes[:, 1] <= top + rh) & (boxes[:, 3] >= top)


def to_frame_pixels(boxes: torch.Tensor, geo: Geometry, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Map boxes from network-input pixels back to the source frame.

    Args:
        boxes (Tensor[N, 4]): xyxy in network-input pixels.
        geo: how the frame became the input (:func:`autotimm_stream.runtime.preprocess.plan`).
        frame_hw: (H, W) of the source frame; boxes are clipped to it.

    Returns:
        Tensor[N, 4], xyxy in source-frame pixels.
    """
    sy, sx = geo.scale
    (ct, cl), (pt, pl) = geo.crop, geo.pad
    offset = torch.tensor([cl - pl, ct - pt, cl - pl, ct - pt], dtype=boxes.dtype, device=boxes.device)
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    out = (boxes + offset) / scale
    h, w = frame_hw
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out
