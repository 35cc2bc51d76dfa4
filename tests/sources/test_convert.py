"""Colour conversion (sources/convert.py, docs/colour.md): ``ffmpeg`` gives exactly the pixels of
``ffmpeg -i clip frames/%04d.png``, ``fast`` stays within its documented bound, and the sources'
``color_conversion`` option validates and reaches the sources."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from autotimm_stream.app.build import build_source
from autotimm_stream.config import validate_config, validate_source
from autotimm_stream.errors import ConfigError
from autotimm_stream.sources import FileSource, LiveSource, Source
from autotimm_stream.sources.convert import RgbConverter, to_rgb

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg CLI is not installed (.ci/run installs it)")
FRAMES = 4

# Clips the FFmpeg CLI re-encodes from the generated one: colour tags, range, odd sizes, pixel
# formats. Lossless FFV1 takes the sizes and depths libx264 refuses. The CLI writes 16-bit PNGs for
# 10-bit video; the engine's frames are 8-bit, so that case is compared with `-pix_fmt rgb24`.
BT709 = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"]
X264 = ["-c:v", "libx264", "-pix_fmt"]
CLIPS = {
    "bt601-yuv420p": ([], []),  # the generated clip as it is: unflagged BT.601, limited range
    "bt709-tagged": ([*X264, "yuv420p", *BT709], []),
    "full-range": ([*X264, "yuvj420p"], []),
    "full-range-bt709": ([*X264, "yuv420p", "-color_range", "pc", *BT709], []),
    "odd-size-420": (["-vf", "scale=321:239", "-c:v", "ffv1", "-pix_fmt", "yuv420p"], []),
    "yuv422p": ([*X264, "yuv422p"], []),
    "10-bit-bt2020": (["-c:v", "ffv1", "-pix_fmt", "yuv420p10le", "-colorspace", "bt2020nc"], ["-pix_fmt", "rgb24"]),
}


def _run(*args: str) -> None:
    assert FFMPEG is not None
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True, timeout=60)


def cli_frames(video: Path, folder: Path, extra: list[str]) -> list[np.ndarray]:
    """What a user extracting training frames gets: ``ffmpeg -i video folder/%04d.png``, read as RGB."""
    folder.mkdir()
    _run("-i", str(video), *extra, "-frames:v", str(FRAMES), str(folder / "%04d.png"))
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == FRAMES
    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB) for p in pngs]


def decoded(video: Path) -> list[av.VideoFrame]:
    with av.open(str(video)) as c:
        return [f for _, f in zip(range(FRAMES), c.decode(video=0))]


@pytest.fixture(scope="module")
def cli_clips(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """Each clip of ``CLIPS`` and the CLI's PNG frames of it."""
    folder = tmp_path_factory.mktemp("colour")
    out = {}
    for name, (encode, extract) in CLIPS.items():
        video = clip
        if encode:
            video = folder / f"{name}.mkv"
            _run("-i", str(clip), "-frames:v", str(FRAMES), *encode, str(video))
        out[name] = (video, cli_frames(video, folder / name, extract))
    return out


def fast_bound(y: np.ndarray) -> np.ndarray:
    """Grey levels ``fast`` may differ from FFmpeg by, per pixel of luma ``y`` (docs/colour.md): 3 from
    video black up; below it OpenCV clamps luma to black, ~1.16 levels per level of luma, 21 at Y = 0."""
    below_black = 2 + np.ceil(1.164 * (16 - y.astype(np.float64)))
    return np.maximum(3, below_black).astype(np.int64)


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray()[: frame.height]  # yuv420p: the Y plane comes first


# -- the two modes against the FFmpeg CLI ---------------------------------------------------------
@needs_ffmpeg
@pytest.mark.parametrize("name", list(CLIPS))
def test_ffmpeg_mode_is_the_cli_png_extraction_bit_for_bit(cli_clips, name):
    video, expected = cli_clips[name]
    convert = RgbConverter("ffmpeg")  # one converter across the frames, as a source keeps it
    for i, (frame, png) in enumerate(zip(decoded(video), expected)):
        got = convert(frame)
        assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == (frame.height, frame.width, 3)
        assert np.array_equal(got, png), f"{name} frame {i}: {np.count_nonzero(got != png)} values differ"


@needs_ffmpeg
@pytest.mark.parametrize("name", list(CLIPS))
def test_fast_mode_is_opencv_for_bt601_yuv420p_within_its_bound_and_the_cli_elsewhere(cli_clips, name):
    video, expected = cli_clips[name]
    convert = RgbConverter("fast")
    for frame, png in zip(decoded(video), expected):
        got = convert(frame)
        if name != "bt601-yuv420p":  # every other frame takes the ffmpeg path
            assert np.array_equal(got, png)
            continue
        diff = np.abs(got.astype(np.int64) - png.astype(np.int64)).max(axis=2)
        assert (diff <= fast_bound(luma(frame))).all()
        assert diff.any()  # it is OpenCV's arithmetic, not FFmpeg's


def test_fast_mode_bound_holds_for_every_luma_value():
    # one chroma row per Y value (0-255), each row a 64 x 64 grid of (U, V); every chroma sample
    # covers 2 x 2 luma samples of its row's Y: a 8192 x 512 frame
    grid = np.arange(0, 256, 4, dtype=np.uint8)
    u = np.tile(np.repeat(grid, 64), (256, 1))
    v = np.tile(np.tile(grid, 64), (256, 1))
    y = np.repeat(np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 4096, axis=1), 2, axis=0), 2, axis=1)
    frame = av.VideoFrame.from_ndarray(np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(-1, 8192), "yuv420p")
    frame.colorspace, frame.color_range = 2, 1  # unflagged BT.601, limited: OpenCV's case
    fast, exact = to_rgb(frame, "fast"), to_rgb(frame, "ffmpeg")
    diff = np.abs(fast.astype(np.int64) - exact.astype(np.int64)).max(axis=2)
    assert (diff <= fast_bound(y)).all()
    assert diff[y >= 16].max() == 3 and diff.max() == 21  # the documented numbers, reached
    assert fast_bound(np.array([0, 15, 16], np.uint8)).tolist() == [21, 4, 3]


def test_fast_mode_hands_other_formats_to_the_ffmpeg_path():
    frame = av.VideoFrame.from_ndarray(np.full((6, 8, 3), 77, np.uint8), format="rgb24").reformat(format="yuv444p")
    out = to_rgb(frame)
    assert out.shape == (6, 8, 3) and np.array_equal(out, to_rgb(frame, "ffmpeg"))
    assert abs(int(out.mean()) - 77) <= 2


def test_a_converter_follows_frames_that_change_size_and_tags(clip):
    convert = RgbConverter("ffmpeg")
    frame = decoded(clip)[0]
    small = frame.reformat(width=160, height=120)
    tagged = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")  # the same samples...
    tagged.colorspace = 1  # ...tagged BT.709: another matrix, another graph
    for f in (frame, small, tagged, frame):
        assert np.array_equal(convert(f), RgbConverter("ffmpeg")(f))
    assert not np.array_equal(convert(tagged), convert(frame))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match=r"color_conversion must be one of \['fast', 'ffmpeg'\], got 'exact'"):
        RgbConverter("exact")  # type: ignore[arg-type]


# -- the option ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, message",
    [
        (
            {"id": "a", "uri": "a.mp4", "color_conversion": "exact"},
            r"color_conversion: .*'fast' or 'ffmpeg'.*got 'exact'",
        ),
        (
            {"id": "a", "type": "rtsp", "uri": "rtsp://h/x", "color_conversion": "FFmpeg"},
            r"color_conversion: .*got 'FFmpeg'",
        ),
        ({"id": "a", "type": "url", "uri": "http://h/x", "color_conversion": None}, r"color_conversion: .*got None"),
        ({"id": "a", "type": "folder", "uri": "imgs", "color_conversion": "ffmpeg"}, r"color_conversion: unknown key"),
    ],
)
def test_bad_color_conversion_names_the_field(source, message):
    with pytest.raises(ConfigError, match=r"sources\[0\]\." + message):
        validate_config({"sources": [source], "model": {"path": "m.pt"}})


@pytest.mark.parametrize(
    "kind, where",
    [("file", {"uri": "a.mp4"}), ("rtsp", {"uri": "rtsp://h/x"}), ("url", {"uri": "http://h/x"}), ("camera", {}),
     ("testsrc", {})],
)  # fmt: skip
def test_every_video_source_takes_the_option_and_defaults_to_fast(kind, where):
    fields = {"id": "a", "type": kind, **where}
    assert validate_source(fields).color_conversion == "fast"
    src = build_source(validate_source({**fields, "color_conversion": "ffmpeg"}), threading.Condition())
    assert isinstance(src, FileSource | LiveSource) and src.to_rgb.mode == "ffmpeg"


def drain(source: Source, timeout_s: float = 20.0) -> list[np.ndarray]:
    """Every frame a finite source delivers, read until its buffer is exhausted."""
    source.open()
    source.start()
    images: list[np.ndarray] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not source.buffer.exhausted:
            assert time.monotonic() < deadline, f"the source delivered {len(images)} frames, then nothing"
            images += [f.image for f in source.buffer.pop(64)]
            with source.buffer.bell:
                source.buffer.bell.wait(0.05)
    finally:
        source.stop.set()
        assert source.join(timeout_s)
    assert source.error is None, source.error
    return images


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["file", "url"])
def test_a_source_set_to_ffmpeg_delivers_the_cli_pixels(cli_clips, kind):
    video, expected = cli_clips["odd-size-420"]
    uri = str(video) if kind == "file" else video.resolve().as_uri()  # url: FFmpeg's file:// protocol
    extra = {} if kind == "file" else {"live": False, "policy": "block", "buffer_size": 8}
    config = validate_source({"id": "cam", "type": kind, "uri": uri, "color_conversion": "ffmpeg", **extra})
    images = drain(build_source(config, threading.Condition()))
    assert len(images) == FRAMES
    for got, png in zip(images, expected):
        assert np.array_equal(got, png)
