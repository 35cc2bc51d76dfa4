"""Zero-area, inverted and padding-only boxes: the engine emits AutoTimm's own boxes that are on the frame.

The reference is AutoTimm's ``decode_fcos_detections`` (what ``ObjectDetector.predict`` runs) on
hand-made raw head outputs; its input-pixel boxes are mapped back to the frame here, in float64,
with the letterbox written out by hand (see docs/detection.md for the rule).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch

from autotimm_stream.frame import Frame
from autotimm_stream.messages import Result, TaskOutputs
from autotimm_stream.postprocess import Postprocessor
from autotimm_stream.protocol import SCHEMA_VERSION, validate
from autotimm_stream.runtime.bundle import BundleMeta
from autotimm_stream.sinks.annotate import draw_result
from autotimm_stream.tasks import Task

INPUT = 60  # network input, square as AutoTimm pads it
STRIDES = (8, 16)  # 8x8 and 4x4 cells: stride 8's last column and row sit at 60, on the input's border
CLASSES = ["a", "b", "c"]
# A 45x90 frame letterboxed into 60x60: resized by 2/3 to 30x60, 15 rows of padding above and below.
# A 90x45 frame: the same, padding left and right.
SCALE = 2 / 3
PAD = {(45, 90): (15, 0), (90, 45): (0, 15)}  # (top, left)


class Case(NamedTuple):
    name: str
    level: int
    row: int
    col: int
    ltrb: tuple[float, float, float, float]  # raw distances; AutoTimm's box: clamp(point -/+ distance)
    kept: bool


# Input-pixel point of (row, col) at stride 8: (4 + 8 col, 4 + 8 row); the frame covers rows 15..45.
CASES = [
    Case("zero width", 0, 2, 2, (0, 3, 0, 4), True),  # [20, 17, 20, 24]
    Case("zero height", 0, 3, 4, (5, 0, 7, 0), True),  # [31, 28, 43, 28]
    Case("point", 0, 4, 1, (0, 0, 0, 0), True),  # [12, 36, 12, 36]
    Case("clamped onto the right border", 0, 3, 7, (0, 4, 10, 4), True),  # point x = 60: [60, 24, 60, 32]
    Case("ordinary", 0, 4, 4, (6, 5, 6, 5), True),  # [30, 31, 42, 41]
    Case("in the padding", 0, 0, 3, (3, 3, 3, 3), False),  # [25, 1, 31, 7]: above the frame
    Case("zero width in the padding", 0, 7, 5, (0, 2, 0, 0), False),  # [44, 58, 44, 60]: below it
    Case("touching the frame from the padding", 1, 0, 3, (4, 2, 4, 7), True),  # stride 16: [52, 6, 60, 15]
    Case("inverted", 0, 5, 3, (-6, 2, -2, 2), False),  # [34, 42, 26, 46]: a YOLOX-style head's
    Case("inverted, clamped to zero width", 0, 4, 7, (-5, 2, 2, 2), True),  # AutoTimm's [60, 34, 60, 38]
    Case("zero height at stride 16", 1, 2, 1, (4, 0, 4, 0), True),  # [20, 40, 28, 40]
]


def head_outputs(
    centerness: bool, cases: list[Case] = CASES
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """Raw outputs for one image where only ``cases`` score above 0.05, best first, classes in turn."""
    sizes = [-(-INPUT // s) for s in STRIDES]
    cls = [torch.full((1, len(CLASSES), n, n), -20.0) for n in sizes]
    reg = [torch.zeros(1, 4, n, n) for n in sizes]
    ctr = [torch.zeros(1, 1, n, n) for n in sizes]
    for i, c in enumerate(cases):
        cls[c.level][0, i % len(CLASSES), c.row, c.col] = 6.0 - 0.5 * i
        reg[c.level][0, :, c.row, c.col] = torch.tensor(c.ltrb)
    return cls, reg, ctr if centerness else None


def autotimm(cls, reg, ctr, max_det: int) -> dict[str, torch.Tensor]:
    from autotimm.tasks._fcos_targets import decode_fcos_detections

    (ref,) = decode_fcos_detections(cls, reg, ctr, STRIDES, len(CLASSES), (INPUT, INPUT), 0.05, 0.5, max_det)
    return ref


def on_the_frame(ref: dict[str, torch.Tensor], frame_hw: tuple[int, int]) -> list[tuple[list[float], float, int]]:
    """AutoTimm's boxes in frame pixels, without the inverted ones and those that miss the frame."""
    h, w = frame_hw
    top, left = PAD[frame_hw]
    out = []
    for (x1, y1, x2, y2), s, c in zip(ref["boxes"].double().tolist(), ref["scores"].tolist(), ref["labels"].tolist()):
        if x2 < x1 or y2 < y1:
            continue  # inverted: not a box
        fx1, fx2 = (x1 - left) / SCALE, (x2 - left) / SCALE
        fy1, fy2 = (y1 - top) / SCALE, (y2 - top) / SCALE
        if fx2 < 0 or fx1 > w or fy2 < 0 or fy1 > h:
            continue  # shares no point with the frame: wholly in the padding
        box = [min(max(fx1, 0), w), min(max(fy1, 0), h), min(max(fx2, 0), w), min(max(fy2, 0), h)]
        out.append((box, s, c))
    return out


def postprocessor(head: str, max_det: int) -> Postprocessor:
    meta = BundleMeta(
        task="detection",
        class_names=CLASSES,
        input_size=(INPUT, INPUT),
        resize="letterbox",
        head=head,
        decode={"score_thresh": 0.05, "nms_thresh": 0.5, "max_detections": max_det, "strides": list(STRIDES)},
    )
    return Postprocessor(meta)


def engine(head: str, max_det: int, cls, reg, ctr, frames_hw: list[tuple[int, int]]) -> list[TaskOutputs]:
    outputs = (*cls, *reg, *(ctr if head == "fcos" else ()))
    return postprocessor(head, max_det)(outputs, frames_hw)


def assert_same(got: TaskOutputs, want: list[tuple[list[float], float, int]]) -> None:
    assert len(got.detections) == len(want)
    for d, (box, score, label) in zip(got.detections, want):
        assert d.class_id == label and d.label == CLASSES[label]
        assert d.score == pytest.approx(score, rel=1e-6)
        assert d.box == pytest.approx(box, abs=1e-3)


def test_the_cases_decode_as_their_comments_say():
    cls, reg, ctr = head_outputs(centerness=True)
    ref = autotimm(cls, reg, ctr, 100)
    assert len(ref["boxes"]) == len(CASES)  # nothing suppressed: zero-area boxes overlap nothing
    by_name = {c.name: box for c, box in zip(CASES, ref["boxes"].tolist())}  # both best first
    assert by_name["zero width"] == [20, 17, 20, 24]
    assert by_name["clamped onto the right border"] == [60, 24, 60, 32]
    assert by_name["touching the frame from the padding"] == [52, 6, 60, 15]
    assert by_name["inverted"] == [34, 42, 26, 46]
    assert by_name["inverted, clamped to zero width"] == [60, 34, 60, 38]


@pytest.mark.parametrize("head", ["fcos", "yolox"])
@pytest.mark.parametrize("max_det", [100, 6, 1])
def test_engine_keeps_exactly_autotimms_boxes_on_the_frame(head, max_det):
    cls, reg, ctr = head_outputs(centerness=head == "fcos")
    ref = autotimm(cls, reg, ctr, max_det)
    (got,) = engine(head, max_det, cls, reg, ctr, [(45, 90)])
    assert_same(got, on_the_frame(ref, (45, 90)))
    # AutoTimm caps its list before the engine drops anything: the drops are not made up for.
    logits = [6.0 - 0.5 * i for i, c in enumerate(CASES[:max_det]) if c.kept]
    want_scores = torch.tensor(logits).sigmoid() * (0.5 if head == "fcos" else 1.0)  # sigmoid(ctr 0) = 0.5
    assert [d.score for d in got.detections] == pytest.approx(want_scores.tolist(), rel=1e-6)


def test_only_inverted_and_padding_only_boxes_are_dropped():
    cls, reg, ctr = head_outputs(centerness=True)
    (got,) = engine("fcos", 100, cls, reg, ctr, [(45, 90)])
    names = {round(torch.tensor(6.0 - 0.5 * i).sigmoid().item() * 0.5, 5): c.name for i, c in enumerate(CASES)}
    emitted = [names[round(d.score, 5)] for d in got.detections]
    assert emitted == [c.name for c in CASES if c.kept]
    boxes = {names[round(d.score, 5)]: d.box for d in got.detections}
    assert boxes["zero width"] == pytest.approx((30.0, 3.0, 30.0, 13.5), abs=1e-3)
    assert boxes["clamped onto the right border"] == pytest.approx((90.0, 13.5, 90.0, 25.5), abs=1e-3)
    # a padding box whose edge lies on the frame's edge keeps that edge: a zero-height box at y = 0
    assert boxes["touching the frame from the padding"] == pytest.approx((78.0, 0.0, 90.0, 0.0), abs=1e-3)


@pytest.mark.parametrize("head", ["fcos", "yolox"])
def test_random_outputs_with_many_zero_area_boxes_equal_autotimm(head):
    """Random heads where a third of the boxes have zero width or height, some inverted (YOLOX)."""
    g = torch.Generator().manual_seed(7)
    sizes = [-(-INPUT // s) for s in STRIDES]
    cls = [torch.randn(2, len(CLASSES), n, n, generator=g) * 2 - 1 for n in sizes]
    ctr = [torch.randn(2, 1, n, n, generator=g) for n in sizes] if head == "fcos" else None
    reg = []
    for n, s in zip(sizes, STRIDES):
        r = torch.rand(2, 4, n, n, generator=g) * s * 2
        pick = torch.rand(2, 1, n, n, generator=g)
        r[:, 0::2] = torch.where(pick < 0.2, 0.0, r[:, 0::2])  # l = r = 0: zero width
        r[:, 1::2] = torch.where((pick >= 0.2) & (pick < 0.35), 0.0, r[:, 1::2])  # t = b = 0: zero height
        if head == "yolox":  # no ReLU: some distances negative, some boxes inverted
            r = r - s * 0.5 * (torch.rand(2, 4, n, n, generator=g) < 0.1)
        reg.append(r)
    frames = [(45, 90), (90, 45)]
    for max_det in (100, 15):
        got = engine(head, max_det, cls, reg, ctr, frames)
        for i, hw in enumerate(frames):
            one = ([c[i : i + 1] for c in cls], [r[i : i + 1] for r in reg], ctr and [c[i : i + 1] for c in ctr])
            ref = autotimm(*one, max_det)
            want = on_the_frame(ref, hw)
            zero_area = sum(b[0] == b[2] or b[1] == b[3] for b, _, _ in want)
            b = ref["boxes"]
            inverted = int(((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).sum())
            assert zero_area >= 2, "the random outputs must leave zero-area boxes on the frame to compare"
            assert len(want) < len(b) - inverted, "and boxes in the padding to drop"
            if head == "yolox" and max_det == 100:
                assert inverted > 0, "and inverted boxes in AutoTimm's list"
            assert_same(got[i], want)


def test_zero_area_boxes_follow_the_wire_schema_and_are_drawn():
    cls, reg, ctr = head_outputs(centerness=True)
    (outputs,) = engine("fcos", 100, cls, reg, ctr, [(45, 90)])
    image = np.zeros((45, 90, 3), dtype=np.uint8)
    frame = Frame(source_id="cam", index=0, pts=0.0, capture_ns=1_700_000_000_000_000_000, image=image)
    timings = dict.fromkeys(("decode", "queue", "preprocess", "wait", "infer", "post"), 1.0)
    result = Result.of(frame, Task.DETECTION, outputs, timings=timings, batch_size=1, model="m")
    record = result.to_json()
    header = {
        "schema": SCHEMA_VERSION,
        **record,
        "timings_ms": {**record["timings_ms"], "publish": 0.0},
        "publish_ns": frame.capture_ns,
        "latency_ms": 0.0,
    }
    boxes = [d["box"] for d in validate(b"detection/cam", header)["detections"]]
    assert [30.0, 3.0, 30.0, 13.5] in boxes  # zero width, on the wire as on the frame
    drawn = draw_result(result)  # cv2 draws a zero-width rectangle as a line
    assert drawn[8, 30].any()
