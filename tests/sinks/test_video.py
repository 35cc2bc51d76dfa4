"""The annotated video's guarantees: source timestamps through drops, one file per stream, a kill loses ~1 s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from autotimm_stream.config import validate_config
from autotimm_stream.errors import SinkError
from autotimm_stream.frame import Frame
from autotimm_stream.messages import EndOfStream, Result
from autotimm_stream.sinks.video import VideoSink
from autotimm_stream.synthetic import write_clip
from tests.helpers import CLI, config, decode_pts, read_jsonl, run, write_config

needs_ffprobe = pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe not installed (.ci/run installs it)"
)


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0"]
        + ["-show_entries", "stream=nb_read_frames,codec_name,pix_fmt,width,height", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"ffprobe cannot read {path.name}: {out.stderr}"
    return json.loads(out.stdout)["streams"][0]


def test_first_frame_after_a_drop_keeps_its_source_pts(tmp_path):
    """Frames 0-4 were dropped: the video starts at frame 5's time, it is not shifted to 0."""
    tb = Fraction(1, 12800)  # what FFmpeg gives a 25 fps H.264 file
    indices = [5, 6, 20, 47]
    sink = VideoSink(str(tmp_path / "v.mp4"), fps={"cam": 25.0})
    with sink:
        for i in indices:
            image = np.full((120, 160, 3), 4 * i, dtype=np.uint8)
            f = Frame("cam", i, i / 25, 0, image, time_base=tb, pts_raw=i * 512)
            sink.write([Result(frame=f, task="classification")])
    pts, duration = decode_pts(tmp_path / "v.mp4")
    assert pts == pytest.approx([i / 25 for i in indices])
    with av.open(str(tmp_path / "v.mp4")) as c:
        start = float(c.start_time / av.time_base)
    assert start + duration == pytest.approx(48 / 25, abs=1e-3)  # ends where the source's frame 47 ends


def test_dropped_frames_leave_gaps_at_source_pts(clip, bundle, tmp_path):
    """Under ``latest`` with a 1-frame buffer most frames are dropped; each kept one plays at its own time."""
    summary = run(config(clip, bundle, tmp_path, buffer_size=1, policy="latest", max_batch=1))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert summary["sources"]["cam"]["drops"].get("buffer_full", 0) == 48 - len(rows) > 0
    src_pts, src_duration = decode_pts(clip)
    kept = [r["frame_index"] for r in rows]
    assert [r["pts"] for r in rows] == pytest.approx([src_pts[i] for i in kept])  # the JSONL says which
    out_pts, duration = decode_pts(tmp_path / "annotated.mp4")
    assert out_pts == pytest.approx([src_pts[i] for i in kept])  # gaps where frames were dropped
    with av.open(str(tmp_path / "annotated.mp4")) as c:
        start = float(c.start_time / av.time_base)
    assert start + duration == pytest.approx(src_duration, abs=0.05)  # the same speed and length as the source


@pytest.mark.parametrize(
    "template, names",
    [
        ("annotated.mp4", ("annotated_a.mp4", "annotated_b.mp4")),
        ("cam-{source}.mp4", ("cam-a.mp4", "cam-b.mp4")),
        ("{source}/annotated.mp4", ("a/annotated.mp4", "b/annotated.mp4")),  # a folder per source
    ],
)
def test_two_sources_make_two_files_each_with_its_own_frames_and_pts(clip, vfr_clip, bundle, tmp_path, template, names):
    vfr, vfr_ms = vfr_clip
    out = tmp_path / "out"
    cfg = validate_config(
        {
            "sources": [{"id": "a", "uri": str(clip)}, {"id": "b", "uri": str(vfr)}],
            "model": {"path": str(bundle)},
            "batching": {"max_batch": 8, "max_wait_ms": 5},
            "sinks": {"zmq": {"enabled": False}, "video": {"filename": template}},
            "output_dir": str(out),
        }
    )
    summary = run(cfg)
    rows = read_jsonl(out / "predictions.jsonl")
    assert summary["sinks"]["video"]["frames"] == {"a": 48, "b": len(vfr_ms)}
    assert summary["sinks"]["video"]["paths"] == {s: str(out / n) for s, n in zip("ab", names)}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4")) == sorted(names)
    for source, name, size, want in [
        ("a", names[0], (320, 240), decode_pts(clip)[0]),
        ("b", names[1], (160, 120), [t / 1000 for t in vfr_ms]),
    ]:
        pts, _ = decode_pts(out / name)
        assert pts == pytest.approx(want), source
        assert pts == pytest.approx([r["pts"] for r in rows if r["source_id"] == source]), source
        with av.open(str(out / name)) as c:
            assert (c.streams.video[0].width, c.streams.video[0].height) == size


def _frames(source: str, n: int) -> list[Result]:
    tb = Fraction(1, 12800)
    return [
        Result(
            frame=Frame(source, i, i / 25, 0, np.full((120, 160, 3), 4 * i, np.uint8), time_base=tb, pts_raw=i * 512),
            task="classification",
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("filename", ["videos/annotated.mp4", "videos/{source}/annotated.mp4", "a/b/{source}.mp4"])
def test_a_filename_in_folders_not_made_yet_opens_and_makes_them(tmp_path, filename):
    """open() checks the nearest folder that exists: the filename's own folders are made with the first frame."""
    sink = VideoSink(str(tmp_path / filename), fps={"cam": 25.0})
    with sink:
        sink.write(_frames("cam", 3))
    path = tmp_path / filename.format(source="cam")
    assert sink.stats() == {"paths": {"cam": str(path)}, "frames": {"cam": 3}}
    assert decode_pts(path)[0] == pytest.approx([0.0, 0.04, 0.08])


def test_a_filename_whose_folder_is_a_file_names_the_filename(tmp_path):
    (tmp_path / "videos").write_text("not a folder")
    with pytest.raises(SinkError, match=r"sinks\.video\.filename: .*videos' is not a folder"):
        VideoSink(str(tmp_path / "videos" / "sub" / "annotated.mp4")).open()


def test_an_unwritable_output_dir_is_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    # os.access, not chmod: the tests may run as root, who may write anywhere
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(out))
    with pytest.raises(SinkError, match=r"sinks\.video: cannot write into .*out'.*pick a writable output_dir"):
        VideoSink(str(out / "videos" / "annotated.mp4")).open()


def test_a_source_added_again_keeps_both_files_in_the_summary(tmp_path):
    sink = VideoSink(str(tmp_path / "annotated.mp4"), several_sources=True, fps={"cam": 25.0})
    with sink:
        sink.write(_frames("cam", 3))
        sink.end_of_stream(EndOfStream("cam", frames=3, reason="removed"))
        sink.write(_frames("cam", 2))  # added again under the same id: frame indices restart
    first, second = tmp_path / "annotated_cam.mp4", tmp_path / "annotated_cam_2.mp4"
    assert sink.stats() == {
        "paths": {"cam": str(first), "cam#2": str(second)},
        "frames": {"cam": 3, "cam#2": 2},
    }
    assert len(decode_pts(first)[0]) == 3 and len(decode_pts(second)[0]) == 2


@pytest.fixture(scope="module")
def ten_second_clip(media: Path) -> Path:
    """250 frames, 10 s at 25 fps, 320x240."""
    return Path(write_clip(media / "ten_seconds.mp4", frames=250, width=320, height=240, fps=25, seed=5))


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@needs_ffprobe
def test_sigkill_leaves_a_video_missing_at_most_a_second(ten_second_clip, bundle, tmp_path):
    fps = 25
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", str(ten_second_clip), str(bundle), out, "batching:\n  max_batch: 1\n")
    proc = subprocess.Popen(
        [*CLI, "run", str(cfg), "--set", "sources.0.realtime=true"], stderr=subprocess.DEVNULL, text=True
    )
    jsonl = out / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and complete_lines(jsonl) < 3 * fps:
            time.sleep(0.05)  # polling a file another process writes: there is no event to wait on
        assert proc.poll() is None, "the run ended before it could be killed"
        written = complete_lines(jsonl)  # results the engine had flushed to disk at the kill
        assert written >= 3 * fps, "the run never got three seconds in"
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -9  # really killed: no close, no trailer, no flush
    st = ffprobe(out / "annotated.mp4")
    assert (st["codec_name"], st["pix_fmt"], st["width"], st["height"]) == ("h264", "yuv420p", 320, 240)
    # The bound: the muxer writes a fragment once a frame comes 1 s (frag_duration) after the
    # fragment's first, so the open fragment holds at most fps * 1 s frames. The JSONL and video
    # sinks run on their own threads, fed the same batches one after the other; when the JSONL
    # sink has taken batch k, the video sink was handed batch k-1 and has at most its queue (4)
    # and the batch it encodes unfinished, so it trails by at most 6 batches of one frame
    # (max_batch 1). In practice it trails by none, and JSONL lines still in the file buffer make
    # ``written`` an undercount.
    lag = 6
    frames = int(st["nb_read_frames"])
    assert frames >= written - fps * 1 - lag, f"{frames} frames in the video, {written} results written"
    # what is there is the start of the stream, every frame at its source time
    pts, _ = decode_pts(out / "annotated.mp4")
    assert len(pts) == frames and pts == pytest.approx([i / fps for i in range(frames)])
