"""A real RTSP server for tests: ``tests/rtsp_server.py`` (gst-rtsp-server) run as a subprocess.

The server needs GStreamer's GObject bindings, which only Debian's system interpreter has, so it runs
under ``/usr/bin/python3`` whatever interpreter runs the tests. Tests skip where
:func:`rtsp_available` is False (``.ci/run`` installs the packages).

    with RtspServer(width=320, height=240) as server:
        container = av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=(5, 5))

Every wait has a timeout and every process started here is ended by :meth:`RtspServer.close`, by
garbage collection or at interpreter exit; it also gets SIGKILL when the thread that started it ends
(Linux ``PR_SET_PDEATHSIG``), so a killed test run leaves none behind: start servers from the thread
that uses them (pytest fixtures do).
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import select
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)
_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "videoconvert", "x264enc", "rtph264pay") if not Gst.ElementFactory.find(e)]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


@functools.cache
def rtsp_missing() -> str | None:
    """Why the RTSP test server cannot run here, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot probe GStreamer: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} lacks GStreamer RTSP server bindings ({last}); apt-get install {PACKAGES}"
    return None


def rtsp_available() -> bool:
    """True when ``/usr/bin/python3`` can import GstRtspServer 1.0 and the elements the server uses."""
    return rtsp_missing() is None


def corrupted_frames(probability: float, seed: int, count: int) -> list[int]:
    """Which of a client's first ``count`` frames (counted from 0, the stream's first keyframe) a
    server with ``corrupt=probability, seed=seed`` mangles: the same choice ``rtsp_server.py`` makes."""
    pick = random.Random(seed)
    return [i for i in range(count) if pick.random() < probability]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (gst-rtsp-server cannot report port 0's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """End ``proc`` for sure: SIGCONT (it may be stopped), SIGTERM, 5 s, then SIGKILL."""
    if proc.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                break
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


class RtspServer:
    """One live H.264 RTSP stream on 127.0.0.1, served by ``tests/rtsp_server.py``.

    ``corrupt`` is the probability that a frame gets mangled (see the script's doc: in ``frame``
    mode the client's ``packet.decode()`` raises InvalidDataError for it). ``seed`` fixes which
    frames, counted from the start of each client's stream.
    """

    def __init__(
        self,
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        corrupt: float = 0.0,
        port: int | None = None,
        *,
        mount: str = "/live",
        corrupt_mode: str = "frame",
        seed: int | None = None,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.corrupt, self.corrupt_mode, self.seed = corrupt, corrupt_mode, seed
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.port = port
        self._fixed_port = port is not None
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._url: str | None = None
        self.startup_s: float | None = None  # how long the last start took to READY

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> RtspServer:
        """Start the server and wait (at most ``timeout`` s) until it listens; raise if it does not.

        A port picked here that got taken before the server bound it is replaced by another; a
        given port (or a restart's) that is busy is retried until ``timeout``.
        """
        if self.running:
            raise RuntimeError(f"RTSP server already running at {self.url}")
        deadline = time.monotonic() + timeout
        busy_error = ""
        while True:
            if self.port is None:
                self.port = free_port()
            error = self._spawn(deadline)
            if error is None:
                return self
            if "Address already in use" in error:
                busy_error = error
                if not self._fixed_port:
                    self.port = None  # lost the race for a port picked here: pick another
                    continue
                if time.monotonic() + 0.2 < deadline:
                    time.sleep(0.1)
                    continue
            elif busy_error:
                error += f" (earlier tries: {busy_error})"
            raise RuntimeError(f"RTSP server on 127.0.0.1:{self.port} did not start: {error}")

    def restart(self, timeout: float = 10) -> RtspServer:
        """Start again on the same port (and so the same URL), ending the current process first."""
        self.close()
        if self.port is not None:
            self._fixed_port = True
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word to its clients, as a crashed camera would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server stops sending (and answering) but keeps its connections open."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def close(self) -> None:
        """End the server (SIGCONT, SIGTERM, 5 s, SIGKILL). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # runs _reap once
            self._finalizer = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RtspServer:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("RTSP server not started")
        return self._url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    # -- internals -------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--mount", self.mount]
        cmd += ["--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps)]
        if self.corrupt > 0:
            cmd += ["--corrupt", repr(float(self.corrupt)), "--corrupt-mode", self.corrupt_mode]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return cmd

    def _spawn(self, deadline: float) -> str | None:
        """Start one server process: None once it is READY, else why not (the process is ended)."""
        self.close()
        self._stderr = tempfile.TemporaryFile()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,  # only a prctl() call: safe enough between fork and exec
        )
        self.proc = proc
        self._finalizer = weakref.finalize(self, _reap, proc)
        line = self._read_line(proc, deadline)
        if line is not None and line.startswith("READY "):
            self._url = line.split(" ", 1)[1]
            self.startup_s = time.monotonic() - t0
            return None
        timed_out = line is None and proc.poll() is None
        self._finalizer()  # ends the process; its stderr stays readable until close()
        self._finalizer = None
        stderr = self.stderr().strip()
        if timed_out:
            return f"no READY line in time; stderr: {stderr or '(empty)'}"
        return "\n".join(x for x in (line, stderr) if x) or f"exit status {proc.returncode}"

    @staticmethod
    def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        """The first stdout line, or None at EOF or deadline (never blocks past it)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return data.decode(errors="replace").strip() or None
                data += chunk
        return data.split(b"\n", 1)[0].decode(errors="replace").strip()

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise RuntimeError("RTSP server not running")
        assert self.proc is not None
        self.proc.send_signal(sig)
