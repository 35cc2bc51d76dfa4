"""Helpers shared by the tests: waiting, ports, decoding outputs, configs and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from autotimm_stream.app import build_pipeline
from autotimm_stream.config import validate_config
from autotimm_stream.synthetic import ShapeScene
from autotimm_stream.testing.rtsp import free_port

CLASSES = ["circle", "square", "triangle"]
CLI = [sys.executable, "-m", "autotimm_stream"]


def checked(parts: list[bytes]) -> dict:
    """The header of a received message after validating the whole message against schema 1 (JSON Schema).

    Listener threads cannot fail a test by raising, so they append what they got; a message that
    breaks the protocol is recorded as ``{"invalid": reason}``, which no test expects.
    """
    from autotimm_stream.protocol import ProtocolError, validate

    try:
        return validate(parts[0], parts[1], parts[2:])
    except ProtocolError as exc:
        return {"invalid": str(exc)}


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true and return the seconds that took; AssertionError naming ``what``
    after ``timeout`` seconds."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def write_vfr_clip(path: Path, pts_ms: list[int], width: int = 160, height: int = 120) -> Path:
    """An H.264 clip whose frames sit at the given timestamps (ms): a variable frame rate."""
    tb = Fraction(1, 1000)
    scene = ShapeScene(width, height, seed=3)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "tune": "zerolatency"})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.time_base = tb
        for t in pts_ms:
            vf = av.VideoFrame.from_ndarray(scene.render(), format="rgb24")
            vf.pts, vf.time_base = t, tb
            scene.step()
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def decode_pts(path: os.PathLike[str] | str) -> tuple[list[float], float]:
    """Presentation times (s) of every frame of a video and its container duration (s)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        pts = [float(f.pts * st.time_base) for f in c.decode(st)]
        duration = float(c.duration / av.time_base) if c.duration else 0.0
    return pts, duration


def python() -> str:
    return sys.executable


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes. Inverted boxes (x2 < x1 or y2 < y1: the YOLOX head's regression has no
    ReLU, and AutoTimm emits them as they are) have no area: they match only a box at the same place."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 1.0 if np.abs(np.asarray(a) - np.asarray(b)).max() <= 0.01 else 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else float(np.allclose(a, b))


def rng_frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def config(source: Path, bundle: Path, out: Path, endpoint: str | None = None, **over):
    data = {
        "sources": [{"id": "cam", "uri": str(source), "buffer_size": over.pop("buffer_size", 4)}],
        "model": {"path": str(bundle)},
        "batching": {"max_batch": over.pop("max_batch", 8), "max_wait_ms": 5},
        "sinks": {
            "zmq": {
                "enabled": endpoint is not None,
                "endpoint": endpoint or "tcp://127.0.0.1:1",
                "wait_subscribers": 1,
            },
            "video": {"enabled": over.pop("video", True)},
        },
        "output_dir": str(out),
    }
    for key, value in over.items():
        data["sources"][0][key] = value
    return validate_config(data)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(cfg) -> dict:
    """Run a config to its end and return its summary (as summary.json has it)."""
    pipeline = build_pipeline(cfg)
    stats = pipeline.run()
    assert pipeline.error is None, pipeline.error
    return stats.to_json()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, source: str, model: str, out: Path, extra: str = "") -> Path:
    path.write_text(
        f"sources:\n  - id: cam\n    uri: {source}\nmodel:\n  path: {model}\n"
        f"sinks:\n  zmq:\n    endpoint: tcp://127.0.0.1:{free_port()}\noutput_dir: {out}\n{extra}"
    )
    return path


def assert_clean_failure(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("autotimm-stream: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
