import av
import numpy as np
import pytest

from autotimm_stream.sources.convert import to_rgb


def first_frame(path) -> av.VideoFrame:
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def test_bt601_fast_path_matches_swscale(clip):
    frame = first_frame(clip)
    fast = to_rgb(frame)
    ref = frame.to_ndarray(format="rgb24")
    assert fast.shape == ref.shape and fast.dtype == np.uint8 and fast.flags.c_contiguous
    diff = np.abs(fast.astype(int) - ref.astype(int))
    assert diff.max() <= 4 and diff.mean() < 1.5


@pytest.mark.parametrize("attr, value", [("colorspace", 1), ("color_range", 2)])  # BT.709, full range
def test_other_colour_metadata_goes_through_swscale(clip, attr, value):
    frame = first_frame(clip)
    setattr(frame, attr, value)
    np.testing.assert_array_equal(to_rgb(frame), frame.to_ndarray(format="rgb24"))


def test_other_pixel_formats_are_converted():
    frame = av.VideoFrame.from_ndarray(np.full((6, 8, 3), 77, np.uint8), format="rgb24").reformat(format="yuv444p")
    out = to_rgb(frame)
    assert out.shape == (6, 8, 3) and abs(int(out.mean()) - 77) <= 2
