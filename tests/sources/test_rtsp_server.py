"""The RTSP test server itself (tests/rtsp_server.py via tests/rtsp.py), checked with a real client.

Measured on 2 shared cores: READY 0.07 s after spawn; a client's first frame 0.15 s after av.open;
restart on the same port 0.07 s after a SIGKILL; a SIGSTOPped server makes a read with timeout T
raise ExitError after 2.0 x T.
"""

from __future__ import annotations

import socket
import time
from fractions import Fraction

import av
import pytest

from autotimm_stream.testing.rtsp import RtspServer, corrupted_frames, rtsp_available, rtsp_missing

pytestmark = [
    pytest.mark.rtsp,
    pytest.mark.skipif(not rtsp_available(), reason=f"RTSP test server unavailable: {rtsp_missing()}"),
]

OPTIONS = {"rtsp_transport": "tcp", "probesize": "32", "analyzeduration": "0"}


def frame_sizes(url: str, count: int, timeout: tuple[float, float] = (5, 5)) -> list[tuple[int, int]]:
    """(width, height) of the first ``count`` frames a fresh client decodes from ``url``."""
    sizes = []
    with av.open(url, options=OPTIONS, timeout=timeout) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            sizes += [(f.width, f.height) for f in packet.decode()]
            if len(sizes) >= count:
                break
    return sizes


@pytest.fixture
def server():
    with RtspServer(width=256, height=144) as srv:
        yield srv
    assert srv.returncode == 0  # SIGTERM: a clean exit


def test_live_frames_of_the_requested_size(server: RtspServer) -> None:
    assert server.url == f"rtsp://127.0.0.1:{server.port}/live"
    sizes = frame_sizes(server.url, 10)
    assert len(sizes) >= 10
    assert set(sizes) == {(256, 144)}


def test_listens_on_127_0_0_1_only(server: RtspServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
    with pytest.raises(ConnectionRefusedError):  # another loopback address: bound to 0.0.0.0 it would answer
        socket.create_connection(("127.0.0.2", server.port), timeout=2).close()


def test_restart_after_kill_serves_again_on_the_same_url(server: RtspServer) -> None:
    url = server.url
    with av.open(url, options=OPTIONS, timeout=(5, 5)) as container:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        for _ in range(5):
            next(packets).decode()
        server.kill()
        t0 = time.monotonic()
        with pytest.raises((StopIteration, av.error.FFmpegError)):  # measured: a clean EOF at once
            for _ in range(1000):
                next(packets)
        assert time.monotonic() - t0 < 5
    assert server.returncode == -9
    t0 = time.monotonic()
    server.restart()
    assert time.monotonic() - t0 < 5  # measured 0.07 s: the port is free again at once
    assert server.url == url
    assert set(frame_sizes(url, 10)) == {(256, 144)}


@pytest.mark.slow
def test_corrupt_frames_fail_to_decode_and_the_stream_goes_on() -> None:
    # 5 % of frames with seed 7: frames 8, 21, 56 and 78 of the first 100 are mangled.
    expected = corrupted_frames(0.05, seed=7, count=100)
    assert expected == [8, 21, 56, 78]
    errors: list[tuple[int | None, Exception]] = []
    decoded = 0
    with RtspServer(corrupt=0.05, seed=7) as srv:
        with av.open(srv.url, options=OPTIONS, timeout=(5, 5)) as container:
            stream = container.streams.video[0]
            per_frame = 1 / (Fraction(stream.time_base) * 25)  # pts ticks per frame at 25 fps
            for packet in container.demux(stream):
                try:
                    decoded += len(packet.decode())
                except av.error.FFmpegError as exc:
                    errors.append((None if packet.pts is None else round(packet.pts / per_frame), exc))
                if decoded >= 100:
                    break
    # Every slice header of a mangled frame is broken: the decoder has no picture for that packet
    # ("no frame!"), which PyAV raises; the stream goes on (later frames lose a reference and are
    # concealed silently). Measured: exactly the expected frames, every run.
    assert decoded >= 100
    assert errors, "no decode error from a server corrupting 5 % of frames"
    assert all(isinstance(exc, av.error.InvalidDataError) for _, exc in errors)
    assert {index for index, _ in errors} <= set(expected)


@pytest.mark.slow
def test_paused_server_makes_a_read_time_out(server: RtspServer) -> None:
    read_timeout = 1.0
    with av.open(server.url, options=OPTIONS, timeout=(5, read_timeout)) as container:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        for _ in range(5):
            next(packets).decode()
        server.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(av.error.FFmpegError) as raised:  # measured: ExitError after 2.0 s
                for _ in range(1000):
                    next(packets)
            elapsed = time.monotonic() - t0
        finally:
            server.resume()
    assert isinstance(raised.value, av.error.ExitError)
    assert read_timeout <= elapsed < 4 * read_timeout + 1  # FFmpeg waits about twice the read timeout
    assert set(frame_sizes(server.url, 5)) == {(256, 144)}  # resumed: serving new clients again


def test_close_is_idempotent_and_ends_a_paused_server() -> None:
    srv = RtspServer(width=64, height=64).start()
    srv.pause()
    srv.close()
    srv.close()
    assert srv.returncode == 0
    assert not srv.running


def test_start_fails_with_the_reason_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = RtspServer(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            srv.start(timeout=1)
        srv.close()
        assert not srv.running
