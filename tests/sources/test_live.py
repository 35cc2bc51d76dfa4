"""Live sources without a server: backoff, redaction, the lavfi test pattern, an unreachable RTSP
address, a missing camera, image folders, the staleness budget and the control channel."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from autotimm_stream.app import build_pipeline
from autotimm_stream.app.control import request
from autotimm_stream.config import LiveOptions, ReconnectPolicy, validate_config
from autotimm_stream.errors import ConfigError, SourceError
from autotimm_stream.frame import Frame, FrameFlags
from autotimm_stream.messages import SourceState
from autotimm_stream.net import is_local
from autotimm_stream.ringbuffer import RingBuffer
from autotimm_stream.sources import LiveSource, live, redact_url, rtsp_spec
from tests.helpers import free_port, wait_for


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- pure parts --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, expected",
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin@cam/live", "rtsp://***@cam/live"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("https://h/x.m3u8?token=abc&q=1", "https://h/x.m3u8?token=***&q=1"),
        ("http://u:p@h/a?password=z", "http://***@h/a?password=***"),
    ],
)
def test_credentials_are_redacted(url, expected):
    assert redact_url(url) == expected


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    policy = ReconnectPolicy(initial_delay_s=0.5, max_delay_s=4.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(0)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (30, 4.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.2  # really jittered: cameras do not retry in lockstep


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial_delay_s": 5, "max_delay_s": 1}, r"max_delay_s \(1.0\) must be >= initial_delay_s \(5.0\)"),
        ({"multiplier": 0.5}, r"multiplier\n.*greater than or equal to 1"),
        ({"jitter": 1.0}, r"jitter\n.*less than 1"),
        ({"max_attempts": 0}, r"max_attempts\n.*greater than or equal to 1"),
    ],
)
def test_backoff_rejects_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReconnectPolicy(**kwargs)


def _frame(i: int) -> Frame:
    return Frame("s", i, i / 25, 0, np.zeros((2, 2, 3), np.uint8))


def test_staleness_budget_drops_old_frames_when_the_batch_forms():
    buf = RingBuffer(8, "latest", max_staleness_ms=50)
    stop = threading.Event()
    for i in range(3):
        buf.put(_frame(i), stop)
    time.sleep(0.08)  # the three wait longer than the budget
    buf.put(_frame(3), stop)
    got = buf.pop(8)
    assert [f.index for f in got] == [3]
    assert buf.drops == {"stale": 3}
    with pytest.raises(ValueError, match="max_staleness_ms must be > 0"):
        RingBuffer(2, max_staleness_ms=0)


# -- sources -----------------------------------------------------------------------------------
def live_source(source_id, spec, buffer, stop, events=None, **options) -> LiveSource:
    """A live source bound to ``stop``, its state changes appended to ``events``."""
    src = LiveSource(source_id, spec, buffer, LiveOptions(**options))
    src.bind(stop, None if events is None else events.append)
    return src


def run_source(source: LiveSource, seconds: float) -> list[Frame]:
    source.open()
    source.start()
    frames: list[Frame] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frames += source.buffer.pop(64)
        time.sleep(0.02)
    return frames


def test_test_pattern_is_a_real_time_camera_that_stops_at_once():
    stop = threading.Event()
    events: list = []
    src = live_source("pattern", live.testsrc_spec(160, 120, 25), RingBuffer(64, "latest"), stop, events)
    frames = run_source(src, 1.2)
    t0 = time.monotonic()
    stop.set()
    assert src.join(2.0)
    assert time.monotonic() - t0 < 0.5
    assert 20 <= len(frames) <= 36  # ~25 fps in real time, not as fast as lavfi can render
    assert {f.image.shape for f in frames} == {(120, 160, 3)}
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert np.diff(pts).mean() == pytest.approx(0.04, abs=0.005)
    assert [e.state for e in events] == [SourceState.CONNECTING, SourceState.RUNNING, SourceState.STOPPED]
    assert events[1].reason == "160x120 @ 25 fps"
    assert src.info.width == 160 and src.info.height == 120


def test_unreachable_stream_retries_with_backoff_and_never_shows_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/live"
    stop = threading.Event()
    policy = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.1)
    events: list = []
    src = live_source("down", rtsp_spec(url), RingBuffer(4, "latest"), stop, events, reconnect=policy)
    run_source(src, 1.0)
    stop.set()
    assert src.join(2.0)
    retries = [e for e in events if e.state is SourceState.RECONNECTING]
    assert len(retries) >= 4
    assert [e.attempt for e in retries] == list(range(1, len(retries) + 1))
    assert retries[-1].retry_in_s == pytest.approx(0.2, rel=0.11)  # capped
    assert "Connection refused" in retries[0].reason
    assert events[-1].state is SourceState.STOPPED and src.error is None
    text = caplog.text + json.dumps([e.to_json() for e in events]) + src.describe()
    assert "hunter2" not in text and "admin" not in text and "***@127.0.0.1" in text


def test_a_stop_during_a_long_backoff_is_honoured_at_once():
    stop = threading.Event()
    policy = ReconnectPolicy(initial_delay_s=30, max_delay_s=60)
    events: list = []
    src = live_source(
        "down", rtsp_spec(f"rtsp://127.0.0.1:{free_port()}/x"), RingBuffer(4), stop, events, reconnect=policy
    )
    run_source(src, 0.3)
    assert events[-1].state is SourceState.RECONNECTING and events[-1].retry_in_s > 20
    t0 = time.monotonic()
    src.remove()  # this one source, not the pipeline's stop event
    assert src.join(1.0) and time.monotonic() - t0 < 0.3
    assert events[-1].state is SourceState.STOPPED and events[-1].reason == "removed"
    assert not stop.is_set()


def test_reconnect_attempts_can_be_bounded_then_the_source_fails():
    stop = threading.Event()
    policy = ReconnectPolicy(initial_delay_s=0.01, max_delay_s=0.02, max_attempts=3)
    events: list = []
    src = live_source(
        "gone", rtsp_spec(f"rtsp://127.0.0.1:{free_port()}/x"), RingBuffer(4), stop, events, reconnect=policy
    )
    run_source(src, 0.5)
    assert src.join(2.0)
    # max_attempts counts failed attempts: the third one fails the source
    assert [e.state for e in events] == [SourceState.CONNECTING] + [SourceState.RECONNECTING] * 2 + [SourceState.FAILED]
    assert [e.attempt for e in events[1:]] == [1, 2, 3]
    assert src.failed_attempts == 3
    assert isinstance(src.error, SourceError) and "gave up after 3 failed attempts" in str(src.error)
    assert src.buffer.closed


def test_a_session_that_ends_before_its_first_frame_is_a_failed_attempt():
    # opens fine, never yields a frame (a server that answers PLAY and sends nothing): it must
    # back off and count towards max_attempts, not be retried at the first delay forever
    stop = threading.Event()
    spec = live.StreamSpec("testsrc2=size=64x48:rate=25:duration=0.2,select=0", format="lavfi")
    policy = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=1.0, multiplier=2.0, jitter=0.0, max_attempts=3)
    events: list = []
    src = live_source("mute", spec, RingBuffer(4), stop, events, reconnect=policy)
    run_source(src, 0.1)
    assert src.join(5.0)
    assert [(e.state, e.attempt, e.retry_in_s) for e in events] == [
        (SourceState.CONNECTING, 0, None),
        (SourceState.RECONNECTING, 1, 0.05),
        (SourceState.RECONNECTING, 2, 0.1),  # the backoff grows
        (SourceState.FAILED, 3, None),
    ]
    assert "no frame before the session ended" in events[1].reason
    assert (src.sessions, src.failed_attempts, src.reconnects, src.frames_decoded) == (3, 3, 0, 0)


def test_time_waiting_for_buffer_space_is_not_a_stall():
    # policy block on a live source, read by a consumer slower than the stall timeout: the
    # stream is healthy and must not be reconnected
    stop = threading.Event()
    buf = RingBuffer(2, "block")
    events: list = []
    src = live_source("slow", live.testsrc_spec(64, 48, 25), buf, stop, events, stall_frames=5, min_stall_s=0.3)
    src.start()
    wait_for(lambda: len(buf) == 2, 5.0, "the buffer to fill")
    taken = []
    for _ in range(3):
        time.sleep(0.7)  # > the 0.3 s stall timeout
        taken += buf.pop(1)
    stop.set()
    assert src.join(2.0)
    assert len(taken) == 3
    assert [e.state for e in events] == [SourceState.CONNECTING, SourceState.RUNNING, SourceState.STOPPED]
    assert (src.sessions, src.reconnects) == (1, 0)


def test_video_that_stops_while_audio_flows_is_a_stall_and_the_source_still_stops():
    # PyAV's demux of the video track alone skips the audio packets inside its own loop: the
    # stall and stop checks would never run again
    stop = threading.Event()
    graph = "testsrc2=size=64x48:rate=25:duration=0.5 [out0]; sine=frequency=440:sample_rate=8000,arealtime [out1]"
    spec = live.StreamSpec(graph, format="lavfi", realtime=True, fps_hint=25)
    events: list = []
    src = live_source("mute-video", spec, RingBuffer(64, "latest"), stop, events, stall_frames=5, min_stall_s=0.3)
    src.start()
    wait_for(lambda: any(e.state is SourceState.RECONNECTING for e in events), 5.0, "the stall to be seen")
    stop.set()
    assert src.join(2.0)
    lost = next(e for e in events if e.state is SourceState.RECONNECTING)
    assert lost.reason.startswith("stalled: no frame for")
    assert events[-1].state is SourceState.STOPPED


def test_a_stop_inside_ffmpegs_open_is_bounded_by_stop_wait_s():
    # a server that accepts the connection and never answers: FFmpeg's open cannot be
    # interrupted, so the stop waits for its timeout; stop_wait_s says how long that can be
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list = []
    listener.settimeout(10)
    acceptor = threading.Thread(target=lambda: accepted.append(listener.accept()))
    acceptor.start()
    stop = threading.Event()
    url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/x"
    events: list = []
    src = live_source("mute", rtsp_spec(url), RingBuffer(4), stop, events, open_timeout_s=3.0)
    try:
        src.start()
        acceptor.join(10)
        assert accepted and src.state is SourceState.CONNECTING
        stop.set()
        t0 = time.monotonic()
        assert src.join(src.stop_wait_s())
        assert time.monotonic() - t0 <= src.stop_wait_s() and src.stop_wait_s() >= 3.0
    finally:
        stop.set()
        src.join(10)
        for conn, _ in accepted:
            conn.close()
        listener.close()


def write_ts_segment(path: Path, start_ms: int, frames: int) -> bytes:
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("mpeg2video", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i % 250, np.uint8), format="rgb24")
            vf.pts, vf.time_base = start_ms + 40 * i, Fraction(1, 1000)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path.read_bytes()


def test_a_stream_clock_that_goes_back_starts_the_session_clock_again(tmp_path):
    # two segments, PTS 100..102 s then 10..12 s (a camera's clock reset): later frames keep
    # their spacing after the last one and the break is flagged, instead of being squeezed
    # 0.1 ms apart behind it
    data = write_ts_segment(tmp_path / "a.ts", 100_000, 50) + write_ts_segment(tmp_path / "b.ts", 10_000, 50)
    (tmp_path / "jump.ts").write_bytes(data)
    spec = live.StreamSpec(str(tmp_path / "jump.ts"), live=False, options={"correct_ts_overflow": "0"})
    stop = threading.Event()
    events: list = []
    src = live_source("reset", spec, RingBuffer(200, "block"), stop, events)
    src.start()
    assert src.join(10.0)
    frames = src.buffer.pop(200)
    assert len(frames) == 100
    steps = np.diff([f.pts for f in frames])
    assert np.allclose(steps, 0.04, atol=1e-6), steps
    flagged = [i for i, f in enumerate(frames) if f.flags & FrameFlags.AFTER_GAP]
    assert flagged == [50]


def test_missing_camera_is_a_clear_error(bundle, tmp_path):
    cfg = validate_config(
        {
            "sources": [{"id": "usb", "type": "camera", "device": 57, "width": 640, "height": 480, "fps": 30}],
            "model": {"path": str(bundle)},
            "sinks": {"zmq": {"enabled": False}},
            "output_dir": str(tmp_path / "out"),
        }
    )
    with pytest.raises(SourceError, match=r"sources\[0\]\.device: .*'/dev/video57' does not exist.*ls /dev/video"):
        build_pipeline(cfg)
    assert not (tmp_path / "out").exists()  # nothing written


def write_images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 160), (90, 200), (240, 320), (64, 64)]):
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (folder / "img_02b.jpg").write_bytes(b"not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")


def test_image_folder_in_name_order_with_unreadable_files_flagged(bundle, tmp_path):
    write_images(tmp_path / "imgs")
    cfg = validate_config(
        {
            "sources": [{"id": "stills", "type": "folder", "uri": str(tmp_path / "imgs"), "fps": 5}],
            "model": {"path": str(bundle)},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}},
            "output_dir": str(tmp_path / "out"),
        }
    )
    summary = build_pipeline(cfg).run().to_json()
    rows = read_rows(tmp_path / "out" / "predictions.jsonl")
    assert [(r["width"], r["height"]) for r in rows] == [(160, 120), (200, 90), (320, 240), (64, 64)]
    assert [r["pts"] for r in rows] == [0.0, 0.2, 0.4, 0.8]  # the unreadable 4th image keeps its slot
    assert rows[3]["flags"] == ["corrupt", "after_gap"] and rows[2]["flags"] == []
    assert summary["sources"]["stills"]["drops"] == {"decode_error": 1}


def test_empty_folder_is_a_clear_error(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = validate_config(
        {
            "sources": [{"id": "stills", "type": "folder", "uri": str(tmp_path / "empty"), "pattern": "*.jpg"}],
            "model": {"path": str(bundle)},
            "output_dir": str(tmp_path / "out"),
        }
    )
    with pytest.raises(SourceError, match=r"sources\[0\]\.uri: .*no images matching '\*\.jpg'"):
        build_pipeline(cfg)


# -- HTTP / HLS ----------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hls_url(clip, tmp_path):
    """The 48-frame clip as an HLS playlist of ~1 s segments, served over HTTP on 127.0.0.1."""
    folder = tmp_path / "hls"
    folder.mkdir()
    cmd = ["ffmpeg", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-f", "hls", "-hls_time", "1"]
    subprocess.run([*cmd, "-hls_list_size", "0", str(folder / "index.m3u8")], check=True, timeout=60)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/index.m3u8"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def url_config(bundle, out, url, **extra):
    source = {"id": "web", "type": "url", "uri": url, "policy": "block", "buffer_size": 8, **extra}
    return validate_config(
        {
            "sources": [source],
            "model": {"path": str(bundle)},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}},
            "output_dir": str(out),
        }
    )


def test_hls_over_http_as_a_finite_stream(bundle, tmp_path, hls_url):
    summary = build_pipeline(url_config(bundle, tmp_path / "vod", hls_url, live=False)).run().to_json()
    got = read_rows(tmp_path / "vod" / "predictions.jsonl")
    assert len(got) == 48 and {(r["width"], r["height"]) for r in got} == {(320, 240)}
    assert [r["pts"] for r in got] == pytest.approx([i / 25 for i in range(48)], abs=0.002)
    web = summary["sources"]["web"]
    assert web["state"] == "stopped" and web["sessions"] == 1 and web["reconnects"] == 0


def test_a_live_url_that_ends_is_reconnected(bundle, tmp_path, hls_url):
    cfg = url_config(bundle, tmp_path, hls_url, reconnect={"initial_delay_s": 0.05, "max_delay_s": 0.1})
    p = build_pipeline(cfg)
    with p:
        p.start()
        wait_for(lambda: p.sources[0].sessions >= 2 and p.worker.frames_out["web"] > 60, 30, "a second session")
    summary = p.summary()["sources"]["web"]
    assert summary["reconnects"] >= 1 and summary["states_entered"]["reconnecting"] >= 1
    got = read_rows(tmp_path / "predictions.jsonl")
    assert got[48]["flags"] == ["after_gap"]
    assert got[48]["pts"] >= got[47]["pts"] + 0.039  # one clock across sessions


class _CutOnce(http.server.BaseHTTPRequestHandler):
    """Serves one file; the first response breaks off halfway (a connection lost mid-download)."""

    data = b""
    gets: list = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.gets.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        if len(self.gets) == 1:
            self.wfile.write(self.data[: len(self.data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(self.data)


def test_a_finite_url_read_again_after_a_lost_session_delivers_no_frame_twice(tmp_path):
    handler = type("Cut", (_CutOnce,), {"data": write_ts_segment(tmp_path / "vod.ts", 0, 100), "gets": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="http")
    thread.start()
    stop = threading.Event()
    policy = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.1)
    url = f"http://127.0.0.1:{server.server_port}/vod.ts"
    events: list = []
    src = live_source("vod", live.StreamSpec(url, live=False), RingBuffer(200, "block"), stop, events, reconnect=policy)
    try:
        src.start()
        assert src.join(20.0)
    finally:
        stop.set()
        server.shutdown()
        thread.join(5)
        server.server_close()
    assert len(handler.gets) == 2 and src.sessions == 2  # the download was really lost once
    frames = src.buffer.pop(200)
    assert [f.index for f in frames] == list(range(100))
    assert np.allclose(np.diff([f.pts for f in frames]), 0.04, atol=1e-6)  # one clock, no jump
    assert not any(f.flags for f in frames)  # nothing was missing: no frame says so
    assert src.state is SourceState.STOPPED


# -- the control channel -------------------------------------------------------------------------
def test_streams_are_added_and_removed_at_run_time_over_the_control_channel(bundle, tmp_path, endpoint):
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = validate_config(
        {
            "sources": [{"id": "cam1", "type": "testsrc", "width": 160, "height": 120, "fps": 25}],
            "model": {"path": str(bundle)},
            "batching": {"max_batch": 4, "max_wait_ms": 5},
            "sinks": {"zmq": {"endpoint": endpoint}, "video": {"enabled": False}},
            "control": {"enabled": True, "endpoint": control},
            "output_dir": str(tmp_path),
        }
    )
    pipeline = build_pipeline(cfg)
    out = tmp_path / "predictions.jsonl"
    pipeline.start()
    try:
        wait_for(lambda: pipeline.worker.frames_out["cam1"] >= 5, 20, "cam1 results")
        cam2 = {"id": "cam2", "type": "testsrc", "width": 320, "height": 240, "fps": 25}
        assert request(control, {"op": "add", "source": cam2}) == {"ok": True, "id": "cam2"}
        wait_for(lambda: pipeline.worker.frames_out["cam2"] >= 5, 20, "cam2 results")
        listed = request(control, {"op": "list"})["sources"]
        assert {(s["id"], s["state"]) for s in listed} == {("cam1", "running"), ("cam2", "running")}

        dup = request(control, {"op": "add", "source": cam2})
        assert not dup["ok"] and "already running" in dup["error"]
        bad = request(control, {"op": "add", "source": {"id": "x", "type": "rtsp", "uri": "http://nope"}})
        assert not bad["ok"] and "uri" in bad["error"]
        assert not request(control, {"op": "fly"})["ok"]
        assert "no running source" in request(control, {"op": "remove", "id": "cam9"})["error"]

        cli = [sys.executable, "-m", "autotimm_stream", "control", "list", "--endpoint", control]
        listed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert {s["id"] for s in json.loads(listed.stdout)["sources"]} == {"cam1", "cam2"}

        assert request(control, {"op": "remove", "id": "cam1"}) == {"ok": True, "id": "cam1", "stopped": True}
        wait_for(lambda: "cam1" in pipeline.retired, 10, "cam1 retired")
        before = pipeline.worker.frames_out["cam2"]
        wait_for(lambda: pipeline.worker.frames_out["cam2"] >= before + 10, 20, "cam2 to keep flowing")
        assert [s["id"] for s in request(control, {"op": "list"})["sources"]] == ["cam2"]
        assert request(control, {"op": "stop"}) == {"ok": True}
        assert pipeline.wait(15)
    finally:
        pipeline.close()
    summary = pipeline.summary()
    assert pipeline.error is None
    assert summary["sources"]["cam1"]["state"] == "stopped" and summary["sources"]["cam2"]["state"] == "stopped"
    rows = read_rows(out)
    sizes = {r["source_id"]: (r["width"], r["height"]) for r in rows}
    assert sizes == {"cam1": (160, 120), "cam2": (320, 240)}
    # cam1's results end when it is removed; cam2's start when it is added
    for sid in ("cam1", "cam2"):
        idx = [r["frame_index"] for r in rows if r["source_id"] == sid]
        assert idx == sorted(idx) and len(idx) == summary["sources"][sid]["frames_out"]


def test_a_pipeline_with_control_may_start_without_sources(bundle, tmp_path):
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = validate_config(
        {
            "sources": [],
            "model": {"path": str(bundle)},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}},
            "control": {"enabled": True, "endpoint": control},
            "output_dir": str(tmp_path),
        }
    )
    pipeline = build_pipeline(cfg)
    pipeline.start()
    try:
        time.sleep(0.3)
        assert not pipeline.done  # nothing to do yet, but not finished: sources may come
        add = {"id": "late", "type": "testsrc", "width": 96, "height": 64}
        assert request(control, {"op": "add", "source": add})["ok"]
        wait_for(lambda: pipeline.worker.frames_out["late"] >= 3, 20, "results of a source added later")
    finally:
        pipeline.close()
    assert pipeline.error is None


def test_control_needs_a_free_address(bundle, tmp_path):
    import zmq

    sock = zmq.Context.instance().socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        cfg = validate_config(
            {
                "sources": [{"id": "a", "type": "testsrc"}],
                "model": {"path": str(bundle)},
                "control": {"enabled": True, "endpoint": f"tcp://127.0.0.1:{port}"},
                "sinks": {"zmq": {"enabled": False}},
                "output_dir": str(tmp_path / "out"),
            }
        )
        with pytest.raises(Exception, match=r"control.endpoint: cannot bind"):
            build_pipeline(cfg)
    finally:
        sock.close(0)
    with pytest.raises(ConfigError, match="control.enabled"):
        validate_config({"sources": [], "model": {"path": "m.pt"}})


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5556", True),
        ("tcp://localhost:5556", True),
        ("tcp://[::1]:5556", True),
        ("ipc:///tmp/engine.ctl", True),
        ("tcp://0.0.0.0:5556", False),
        ("tcp://*:5556", False),
        ("tcp://10.1.2.3:5556", False),
    ],
)
def test_control_endpoints_beyond_this_machine_are_recognised(endpoint, local):
    assert is_local(endpoint) is local  # the engine warns when the control channel is reachable from outside
