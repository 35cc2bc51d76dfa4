"""Detection decode + NMS + letterbox undo, and segmentation masks: pure functions, real references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autotimm_stream.postprocess import segmentation as seg
from autotimm_stream.postprocess.detection import decode_dense, to_frame_pixels
from autotimm_stream.runtime.preprocess import PreprocessSpec, plan

STRIDES = (8, 16, 32, 64, 128)


def dense_outputs(batch: int, size: int, num_classes: int, strides=STRIDES, centerness=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(size // s, size // s) for s in strides]
    cls = [torch.randn(batch, num_classes, h, w, generator=g) * 2 - 2 for h, w in shapes]
    reg = [torch.rand(batch, 4, h, w, generator=g) * s * 4 for (h, w), s in zip(shapes, strides)]
    ctr = [torch.randn(batch, 1, h, w, generator=g) for h, w in shapes] if centerness else None
    return cls, reg, ctr


def as_sorted(boxes, scores, labels):
    order = torch.argsort(scores, descending=True, stable=True)
    return boxes[order], scores[order], labels[order]


@pytest.mark.parametrize("centerness", [True, False], ids=["fcos", "yolox-head"])
@pytest.mark.parametrize("score_thresh, max_det", [(0.05, 100), (0.2, 7)])
def test_decode_equals_autotimm(centerness, score_thresh, max_det):
    from autotimm.tasks._fcos_targets import decode_fcos_detections

    cls, reg, ctr = dense_outputs(3, 256, 5, centerness=centerness)
    ours = decode_dense(cls, reg, ctr, STRIDES, (256, 256), score_thresh, 0.5, max_det)
    ref = decode_fcos_detections(cls, reg, ctr, STRIDES, 5, (256, 256), score_thresh, 0.5, max_det)
    assert len(ours) == len(ref) == 3
    for (b, s, lab), r in zip(ours, ref):
        assert len(s) > 0, "the random outputs must leave boxes to compare"
        rb, rs, rl = as_sorted(r["boxes"], r["scores"], r["labels"])
        assert torch.equal(lab, rl) and torch.allclose(s, rs) and torch.allclose(b, rb)


def test_nms_never_crosses_images_or_classes():
    cls, reg, ctr = dense_outputs(1, 128, 2, strides=(8,), seed=3)
    cls2 = [torch.cat([c, c]) for c in cls]  # the same outputs for two images
    reg2 = [torch.cat([r, r]) for r in reg]
    ctr2 = [torch.cat([c, c]) for c in ctr]
    (b0, s0, l0), (b1, s1, l1) = decode_dense(cls2, reg2, ctr2, (8,), (128, 128), 0.05, 0.5, 100)
    ((bs, ss, ls),) = decode_dense(cls, reg, ctr, (8,), (128, 128), 0.05, 0.5, 100)
    assert torch.equal(b0, b1) and torch.equal(b0, bs) and torch.equal(l0, ls)


def test_no_box_above_threshold_gives_empty_results():
    cls, reg, ctr = dense_outputs(2, 64, 3, strides=(8, 16))
    cls = [c - 50 for c in cls]
    for boxes, scores, labels in decode_dense(cls, reg, ctr, (8, 16), (64, 64), 0.05, 0.5, 10):
        assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.dtype == torch.long


@pytest.mark.parametrize("h, w", [(360, 640), (720, 1280), (640, 480), (100, 100)])
@pytest.mark.parametrize("resize", ["letterbox", "squash", "center_crop"])
def test_boxes_map_back_to_frame_pixels(h, w, resize):
    spec = PreprocessSpec((256, 256), resize, crop_pct=0.875)
    geo = plan(h, w, spec)
    sy, sx = geo.scale
    frame_boxes = torch.tensor([[0.25 * w, 0.3 * h, 0.6 * w, 0.7 * h], [0.4 * w, 0.45 * h, 0.55 * w, 0.6 * h]])
    # forward mapping, written independently: resize, then shift by pad and crop
    shift = torch.tensor([geo.pad[1] - geo.crop[1], geo.pad[0] - geo.crop[0]] * 2, dtype=torch.float32)
    input_boxes = frame_boxes * torch.tensor([sx, sy, sx, sy]) + shift
    back = to_frame_pixels(input_boxes, geo, (h, w))
    assert torch.allclose(back, frame_boxes, atol=1e-3)


def test_boxes_in_the_padding_are_clipped_to_the_frame():
    geo = plan(360, 640, PreprocessSpec((256, 256), "letterbox"))  # pad top/bottom
    back = to_frame_pixels(torch.tensor([[0.0, 0.0, 256.0, 256.0]]), geo, (360, 640))
    assert back.tolist() == [[0.0, 0.0, 640.0, 360.0]]


@pytest.mark.parametrize("frame_hw", [(360, 640), (97, 131), (512, 512)])
def test_squash_mask_is_upsampled_logits_argmax(frame_hw):
    logits = torch.randn(5, 32, 32, generator=torch.Generator().manual_seed(1))
    geo = plan(*frame_hw, PreprocessSpec((128, 128), "squash"))
    mask = seg.logits_to_mask(logits, geo, (128, 128), frame_hw)
    ref = F.interpolate(logits[None], size=frame_hw, mode="bilinear", align_corners=False)[0].argmax(0)
    assert mask.dtype == torch.uint8 and mask.shape == frame_hw
    assert torch.equal(mask.long(), ref)


def test_banded_upsampling_equals_one_interpolate(monkeypatch):
    logits = torch.randn(6, 40, 40, generator=torch.Generator().manual_seed(2))
    geo = plan(300, 500, PreprocessSpec((160, 160), "squash"))
    whole = seg.logits_to_mask(logits, geo, (160, 160), (300, 500))
    monkeypatch.setattr(seg, "_BAND_BYTES", 6 * 500 * 4 * 7)  # 7 rows per band
    banded = seg.logits_to_mask(logits, geo, (160, 160), (300, 500))
    agree = (whole == banded).float().mean().item()
    assert agree >= 0.9999  # float summation order may flip a near-tie


@pytest.mark.parametrize(
    "classes, logits_hw, frame_hw",
    [(4, (64, 64), (1080, 1920)), (21, (32, 48), (250, 333)), (3, (64, 64), (40, 50)), (300, (8, 8), (30, 20))],
)
def test_settled_cells_are_copied_and_borders_blended_exactly(classes, logits_hw, frame_hw):
    """The border-only path equals a full upsample + argmax: smooth blobs (a real mask's shape, few
    borders) and plateaus of exact ties (argmax's first index must win), up- and downsampling."""
    g = torch.Generator().manual_seed(classes)
    logits = F.interpolate(torch.randn(1, classes, 6, 6, generator=g), size=logits_hw, mode="bilinear")[0]
    logits[:, : logits_hw[0] // 4] = 0.0  # a band of exact ties between every class
    geo = plan(*frame_hw, PreprocessSpec(logits_hw, "squash"))
    mask = seg.logits_to_mask(logits, geo, logits_hw, frame_hw)
    ref = F.interpolate(logits[None], size=frame_hw, mode="bilinear", align_corners=False)[0].argmax(0)
    assert mask.dtype == (torch.uint8 if classes <= 256 else torch.long)
    assert (mask.long() == ref).float().mean().item() >= 0.9999  # float order may flip a near-tie
    assert torch.equal(mask[: frame_hw[0] // 8].long(), ref[: frame_hw[0] // 8])  # the tie band: class 0


def test_one_class_masks_are_all_that_class():
    geo = plan(30, 40, PreprocessSpec((16, 16), "squash"))
    assert not seg.logits_to_mask(torch.randn(1, 16, 16), geo, (16, 16), (30, 40)).any()


def test_letterboxed_mask_ignores_the_padding():
    # logits say class 1 inside the frame's footprint, class 2 in the padding
    geo = plan(100, 200, PreprocessSpec((64, 64), "letterbox"))  # frame rows 16..48 of the input
    logits = torch.zeros(3, 64, 64)
    logits[2] = 5.0
    logits[1, geo.pad[0] : geo.pad[0] + geo.resized[0]] = 10.0
    mask = seg.logits_to_mask(logits, geo, (64, 64), (100, 200))
    assert (mask == 1).all()


def test_center_crop_is_refused_for_masks():
    geo = plan(100, 200, PreprocessSpec((64, 64), "center_crop"))
    with pytest.raises(ValueError, match="squash or letterbox"):
        seg.logits_to_mask(torch.zeros(2, 16, 16), geo, (64, 64), (100, 200))


def test_class_fractions_sum_to_one():
    mask = torch.tensor([[0, 0, 1, 3]], dtype=torch.uint8)
    assert seg.class_fractions(mask, 4) == [0.5, 0.25, 0.0, 0.25]


def test_inverted_boxes_are_dropped_after_nms():
    # YOLO-style heads have no ReLU on the distances: negative ones decode to x2 < x1
    cls, reg, _ = dense_outputs(1, 64, 2, strides=(8,), centerness=False, seed=5)
    reg = [-r for r in reg]  # every box inverted
    ((boxes, scores, labels),) = decode_dense(cls, reg, None, (8,), (64, 64), 0.05, 0.5, 100)
    assert boxes.shape == (0, 4)
    reg = [torch.cat([r[:, :2], -r[:, 2:]], 1) for r in reg]  # x1 = px + |l|, x2 = px + |r|: some boxes valid
    ((boxes, _, _),) = decode_dense(cls, reg, None, (8,), (64, 64), 0.05, 0.5, 100)
    assert len(boxes) > 0 and bool(((boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])).all())
