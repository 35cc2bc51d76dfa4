"""The annotated video's drawings: masks tint objects, never a class named background."""

import numpy as np

from autotimm_stream.frame import Frame
from autotimm_stream.messages import ClassFraction, Result
from autotimm_stream.sinks.annotate import draw_result, palette


def _seg_result(names: list[str]) -> Result:
    image = np.full((120, 160, 3), 100, dtype=np.uint8)
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[80:110, 100:150] = 1  # bottom right, clear of the legend (top left) and the footer (bottom left)
    fractions = [ClassFraction(i, names[i], float((mask == i).mean())) for i in range(2)]
    frame = Frame(source_id="cam", index=0, pts=0.0, capture_ns=0, image=image)
    return Result(frame=frame, task="segmentation", mask=mask, class_fractions=fractions)


def test_mask_tints_objects_and_leaves_background_as_filmed():
    out = draw_result(_seg_result(["background", "car"]))
    assert (out[60, 60] == 100).all()  # background pixel untouched
    obj = out[95, 125].astype(int)
    expected = 0.55 * 100 + 0.45 * palette(2)[1].astype(int)
    assert np.abs(obj - expected).max() <= 1  # the object's class colour, translucent


def test_mask_tints_every_class_when_none_is_background():
    out = draw_result(_seg_result(["road", "car"]))
    expected = 0.55 * 100 + 0.45 * palette(1)[0].astype(int)
    assert np.abs(out[60, 60].astype(int) - expected).max() <= 1
