"""Live sources that survive the real world: RTSP, HTTP/HLS, V4L2 cameras, a lavfi test pattern.

One PyAV capture loop inside a per-stream state machine::

    CONNECTING ──ok──▶ RUNNING ──end / error / timeout / stall──▶ RECONNECTING ──backoff──▶ (connect again)
         │                                                              │
         └──────────────── refused / timed out ─────────────────────────┘
    any state ── stop or remove ──▶ STOPPED          attempts exhausted ──▶ FAILED

- A live stream's normal end, a read error and a read timeout all count as a disconnect. A finite
  stream (``live: false``, e.g. a VOD URL) ends at its end; after a lost session it is read again
  from its start and goes on after the last frame delivered (none twice, one clock). A stream
  that is down at start-up is retried like any other (the pipeline starts anyway).
- Backoff is exponential with jitter (``ReconnectPolicy``, in ``LiveOptions.reconnect``); default: retry forever. A session
  that opens but ends before its first frame counts as a failed attempt (it backs off and counts
  towards ``max_attempts``), not as a reconnect.
- Stall watchdog: no decoded frame for ``stall_frames`` frame intervals forces a reconnect (so
  does a stream whose packets keep failing to decode for that long, or whose video froze while
  another track keeps flowing: single bad packets are flagged and skipped, a broken stream is
  reopened). Time spent waiting for buffer space (policy ``block``) does not count as a stall.
- A stop is seen within 50 ms, except inside FFmpeg: a server that accepts the connection and
  then says nothing holds ``av.open`` until the open timeout, and one that stops sending mid-read
  holds the read until the read timeout (PyAV's interrupt callback, which nothing else can
  trigger). :meth:`LiveSource.stop_wait_s` bounds both; ``Pipeline.close`` waits that long.
- Each session's timestamps are mapped onto one clock from the source's start, so PTS grow
  across reconnects and the gap shows as a gap; a stream clock that goes back within a session
  starts the session's clock again after the last frame (flagged ``AFTER_GAP``). Frames decoded
  with errors, after undecodable packets, after a reconnect or after a PTS jump carry
  ``CORRUPT`` / ``AFTER_GAP``; with ``skip_until_keyframe`` frames after such a break are dropped
  (``until_keyframe``) until the next keyframe.
- URLs are logged and reported with credentials replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import av
import numpy as np

from ..config import LiveOptions
from ..errors import SourceError, first_line
from ..frame import FrameFlags
from ..messages import SourceState
from ..ringbuffer import RingBuffer
from ..stats import LiveStats
from .base import Source, SourceInfo
from .convert import RgbConverter

__all__ = ["LiveSource", "StreamSpec", "redact_url", "rtsp_spec", "camera_spec", "testsrc_spec"]

_logger = logging.getLogger(__name__)

LIVE_TIME_BASE = Fraction(1, 90000)  # the one clock of a live source's frames, across sessions
# FFmpeg's interrupt callback gives up about twice the requested time after the last data
# (measured: environment notes), so each timeout asks for half of what we mean.
_FFMPEG_TIMEOUT_SHARE = 0.5
_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")


def redact_url(url: str) -> str:
    """``url`` with any user:password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub("***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_text(text: str, url: str) -> str:
    return _USERINFO.sub("***@", text.replace(url, redact_url(url)))


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How to open one live stream with PyAV."""

    url: str  # what av.open gets
    format: str | None = None  # demuxer ("v4l2", "lavfi"); None = guess from the URL
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg options
    live: bool = True  # its end is a disconnect (reconnect), not the end of the data
    realtime: bool = False  # pace frames at their PTS (sources that produce faster than real time)
    fps_hint: float | None = None  # frame rate to assume before the stream says (stall watchdog)
    device: str | None = None  # local device that must exist (cameras)


def rtsp_spec(url: str, transport: str = "tcp") -> StreamSpec:
    """RTSP over ``transport`` (tcp/udp), opened fast (tiny probe: ~0.13 s instead of ~1.2 s)."""
    if transport not in ("tcp", "udp"):
        raise ValueError(f"RTSP transport must be 'tcp' or 'udp', got {transport!r}")
    options = {"rtsp_transport": transport, "probesize": "32", "analyzeduration": "0"}
    return StreamSpec(url, options=options)


def camera_spec(device: str | int, width: int | None = None, height: int | None = None, fps: float | None = None,
                input_format: str | None = None) -> StreamSpec:  # fmt: skip
    """A V4L2 camera by index (``0`` → ``/dev/video0``) or path."""
    path = f"/dev/video{device}" if isinstance(device, int) or str(device).isdigit() else str(device)
    options: dict[str, str] = {}
    if width and height:
        options["video_size"] = f"{width}x{height}"
    if fps:
        options["framerate"] = f"{fps:g}"
    if input_format:
        options["input_format"] = input_format
    return StreamSpec(path, format="v4l2", options=options, fps_hint=fps, device=path)


def testsrc_spec(width: int = 640, height: int = 480, fps: float = 25.0, pattern: str = "testsrc2") -> StreamSpec:
    """FFmpeg's synthetic test pattern (lavfi), paced in real time like a camera."""
    if not re.fullmatch(r"[a-z0-9_]+", pattern):
        raise ValueError(f"test pattern must be a lavfi source name such as testsrc2, got {pattern!r}")
    return StreamSpec(f"{pattern}=size={width}x{height}:rate={fps:g}", format="lavfi", realtime=True, fps_hint=fps)


class _Disconnect(Exception):
    """A session ended; the message says why."""


class LiveSource(Source):
    """A stream that is reconnected whenever it is lost, until stopped (see the module docstring)."""

    live = True

    def __init__(
        self,
        source_id: str,
        spec: StreamSpec,
        buffer: RingBuffer,
        options: LiveOptions | None = None,
        *,
        seed: int | None = None,
    ):
        super().__init__(source_id, buffer)
        self.spec = spec
        self.options = options or LiveOptions()
        self.to_rgb = RgbConverter(self.options.color_conversion)
        self.reconnects = 0  # sessions lost after they ran
        self.failed_attempts = 0  # connection attempts that failed, in total
        self.sessions = 0
        self._rng = random.Random(seed)
        self._fps = spec.fps_hint
        self._t0: float | None = None  # monotonic time of the first frame ever: the zero of the PTS clock
        self._last_pts = -1.0
        self._read_timeout_s = 0.0  # the current session's read timeout
        self._delivered_at: float | None = None  # finite streams: stream time of the last frame delivered

    # -- set-up -----------------------------------------------------------------------------------
    def describe(self) -> str:
        return redact_url(self.spec.url)

    def open(self) -> SourceInfo:
        """Check what can be checked without connecting; a stream that is down is retried later."""
        dev = self.spec.device
        if dev is not None and not os.path.exists(dev):
            raise SourceError(
                f"source {self.source_id!r}: camera device {dev!r} does not exist; expected a V4L2 device "
                f"(list them with `ls /dev/video*`; in a container, pass it with --device {dev})"
            )
        if self.info is None:
            self.info = SourceInfo(0, 0, self._fps, LIVE_TIME_BASE, None)
        return self.info

    def stop_wait_s(self) -> float:
        """The longest a stop can wait for FFmpeg to give up an open or a read (see the module docstring)."""
        return max(self.options.open_timeout_s, self.stall_timeout_s(), self._read_timeout_s) + 1.0

    def stall_timeout_s(self) -> float:
        """No frame for this long forces a reconnect: ``stall_frames`` intervals, at least ``min_stall_s``."""
        return max(self.options.min_stall_s, self.options.stall_frames / (self._fps or 25.0))

    # -- the state machine ------------------------------------------------------------------------
    def _run(self) -> None:
        self._set_state(SourceState.CONNECTING, self.describe())
        attempt = 0
        while not self.halted.is_set():
            try:
                container = self._connect()
            except _Disconnect as exc:
                attempt += 1
                self.failed_attempts += 1
                if not self._backoff(attempt, str(exc)):
                    return
                continue
            self.sessions += 1
            try:
                reason = self._stream(container)
            finally:
                container.close()
            if self.halted.is_set():
                return
            if not self.spec.live and reason == "end of stream":
                return  # a finite stream (e.g. a VOD URL) that simply ended
            if self.state is not SourceState.RUNNING:  # every session starts not RUNNING
                # opened but never produced a frame (a server that answers PLAY and sends nothing,
                # a camera that drops extra clients): a failed attempt, so it backs off and
                # counts towards max_attempts instead of being retried at the first delay forever
                attempt += 1
                self.failed_attempts += 1
                if not self._backoff(attempt, f"no frame before the session ended: {reason}"):
                    return
                continue
            attempt = 0
            self.reconnects += 1
            if not self._backoff(1, reason):
                return

    def _backoff(self, attempt: int, reason: str) -> bool:
        """Wait before the next attempt; False when halted or out of attempts (then FAILED)."""
        limit = self.options.reconnect.max_attempts
        if limit is not None and attempt >= limit:
            self.error = SourceError(
                f"source {self.source_id!r}: gave up after {attempt} failed attempts in a row to get frames "
                f"from {self.describe()} (last: {reason}); raise reconnect.max_attempts or leave it null to "
                f"retry forever"
            )
            self._set_state(SourceState.FAILED, reason, attempt=attempt)
            return False
        delay = self.options.reconnect.delay(attempt, self._rng)
        self._set_state(SourceState.RECONNECTING, reason, attempt=attempt, retry_in_s=delay)
        return not self.halted.wait(delay)

    def _connect(self) -> av.container.InputContainer:
        spec = self.spec
        read_s = self.stall_timeout_s() * _FFMPEG_TIMEOUT_SHARE
        self._read_timeout_s = read_s / _FFMPEG_TIMEOUT_SHARE  # what FFmpeg will really allow
        try:
            container = av.open(
                spec.url,
                format=spec.format,
                options=dict(spec.options),
                timeout=(self.options.open_timeout_s * _FFMPEG_TIMEOUT_SHARE, read_s),
            )
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
            raise _Disconnect(f"cannot open: {self._safe(exc)}") from None
        if not container.streams.video:
            container.close()
            raise _Disconnect("the stream has no video track")
        return container

    def _safe(self, exc: BaseException) -> str:
        return _redact_text(f"{type(exc).__name__}: {first_line(exc)}", self.spec.url)

    # -- one session ------------------------------------------------------------------------------
    def _stream(self, container: av.container.InputContainer) -> str:
        """Decode one session into the buffer; returns why it ended (or "" when halted)."""
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = self.options.decode_threads
        if self.options.decode_threads != 1:
            stream.thread_type = "SLICE"  # frame threading would delay every frame by N frames
        rate = stream.average_rate or stream.guessed_rate
        if rate and 1 <= float(rate) <= 240:
            self._fps = float(rate)
        tb = stream.time_base or LIVE_TIME_BASE
        anchor: tuple[int, float] | None = None  # (first stream pts of the session, its time on our clock)
        prev_pts: float | None = None
        # a finite stream (live: false) read again after a lost session starts from its beginning:
        # frames up to the last one delivered are decoded (the decoder needs them) but not delivered
        # again, and what follows is whole, so it is not flagged unless frames are really missing
        resume = None if self.spec.live else self._delivered_at
        pending = FrameFlags.AFTER_GAP if self.sessions > 1 and resume is None else FrameFlags.NONE
        wait_key = self.options.skip_until_keyframe and self.sessions > 1 and resume is None
        last_frame = time.monotonic()
        stall_s = self.stall_timeout_s()
        try:
            # every track is demuxed, not only the video: PyAV skips other tracks' packets inside
            # its own loop, so a camera whose video froze while its audio kept flowing would
            # never hand a packet back to the stop and stall checks below
            for packet in container.demux():
                t_dec = time.perf_counter()  # decoding cost only, not the wait for the network
                if self.halted.is_set():
                    return ""
                if time.monotonic() - last_frame > stall_s:
                    return f"stalled: no frame for {stall_s:.1f} s"
                if packet.stream_index != stream.index:
                    continue
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    self.buffer.drop("decode_error")
                    pending |= FrameFlags.CORRUPT | FrameFlags.AFTER_GAP
                    wait_key = wait_key or self.options.skip_until_keyframe
                    _logger.debug("source %s: undecodable packet (%s)", self.source_id, self._safe(exc))
                    continue
                for vf in decoded:
                    if not isinstance(vf, av.VideoFrame):  # a video packet decodes to video frames
                        continue
                    last_frame = time.monotonic()
                    if self.state is not SourceState.RUNNING:
                        self._on_running(vf)
                        stall_s = self.stall_timeout_s()
                    if resume is not None and vf.pts is not None and float(vf.pts * tb) <= resume + 1e-6:
                        continue  # delivered in an earlier session
                    flags, pending = pending, FrameFlags.NONE
                    if vf.is_corrupt:
                        flags |= FrameFlags.CORRUPT
                        wait_key = wait_key or self.options.skip_until_keyframe
                    if wait_key and not vf.key_frame:
                        self.frames_decoded += 1  # its index stays taken: the gap shows
                        self.buffer.drop("until_keyframe")
                        pending |= flags  # the first frame kept still says what came before it
                        continue
                    wait_key = False
                    if self._t0 is None:
                        self._t0 = time.monotonic()
                    now = time.monotonic() - self._t0  # wall time on the source's clock
                    if vf.pts is None:
                        flags |= FrameFlags.NO_PTS
                        pts = now
                    else:
                        if anchor is None and resume is not None:  # a finite stream goes on where it was
                            gap = float(vf.pts * tb) - resume
                            anchor = (vf.pts, self._last_pts + gap)
                            if self._fps and gap > 2.5 / self._fps:
                                flags |= FrameFlags.AFTER_GAP
                        if anchor is None:
                            anchor = (vf.pts, self._clock_start(now))
                        pts = anchor[1] + float((vf.pts - anchor[0]) * tb)
                        if prev_pts is not None and pts < prev_pts:
                            # the stream clock went back (an encoder restart, a camera's clock
                            # reset): start the session's clock again after the last frame
                            # instead of squeezing every later frame behind it
                            anchor = (vf.pts, self._clock_start(now))
                            pts = anchor[1]
                            flags |= FrameFlags.AFTER_GAP
                    if prev_pts is not None and self._fps and pts - prev_pts > 2.5 / self._fps:
                        flags |= FrameFlags.AFTER_GAP  # frames went missing in transport
                    prev_pts = pts
                    image = self.to_rgb(vf)
                    decode_ms = (time.perf_counter() - t_dec) * 1e3
                    if self.spec.realtime and pts > now and self.halted.wait(pts - now):
                        return ""
                    if not self._deliver_live(image, pts, flags, decode_ms):
                        return ""
                    if not self.spec.live and vf.pts is not None:
                        self._delivered_at = float(vf.pts * tb)
                    # time spent waiting for buffer space (policy block) or for the frame's
                    # moment (realtime) is not the stream stalling
                    last_frame = time.monotonic()
                    t_dec = time.perf_counter()  # the packet's next frame, if any
        except av.error.ExitError:
            return f"read timed out (no data for ~{self._read_timeout_s:.1f} s)"
        except (av.error.FFmpegError, OSError) as exc:
            return f"read failed: {self._safe(exc)}"
        return "end of stream"

    def _clock_start(self, now: float) -> float:
        """Where a session's stream clock starts on ours: at the wall clock, but never before the
        previous frame (a stream read faster than real time is ahead of the wall clock)."""
        if self._last_pts < 0:
            return now
        return max(now, self._last_pts + (1.0 / self._fps if self._fps else 0.04))

    def _on_running(self, vf: av.VideoFrame) -> None:
        self.info = SourceInfo(vf.width, vf.height, self._fps, LIVE_TIME_BASE, None)
        fps = f" @ {self._fps:g} fps" if self._fps else ""
        self._set_state(SourceState.RUNNING, f"{vf.width}x{vf.height}{fps}")

    def _deliver_live(self, image: np.ndarray, pts: float, flags: FrameFlags, decode_ms: float) -> bool:
        if pts <= self._last_pts:  # sessions overlap by a hair, or a camera repeats a timestamp
            pts = self._last_pts + 1e-4
        self._last_pts = pts
        # a live buffer never blocks (policy latest); under block it waits, which is what was asked for
        return self._deliver(image, pts, flags, decode_ms, LIVE_TIME_BASE, int(round(pts / LIVE_TIME_BASE)))

    def live_stats(self) -> LiveStats:
        return LiveStats(self.sessions, self.reconnects, self.failed_attempts, self._fps)
