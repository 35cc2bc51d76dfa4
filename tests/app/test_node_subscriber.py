"""A non-Python subscriber: Node.js with zeromq@6 (tests/node/subscriber.mjs) receives real runs of
the engine and checks every message against docs/protocol.md in JavaScript.

Needs node and ``tests/node/node_modules`` (``bash tests/node/install.sh``); without them the tests
skip, unless ``AUTOTIMM_STREAM_REQUIRE_NODE=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import zmq

from autotimm_stream.protocol import encode_mask
from tests.helpers import free_port

NODE_DIR = Path(__file__).parents[1] / "node"
SUBSCRIBER = NODE_DIR / "subscriber.mjs"
pytestmark = pytest.mark.node
REQUIRE_NODE = "AUTOTIMM_STREAM_REQUIRE_NODE"
CLI = [sys.executable, "-m", "autotimm_stream"]
READY_TIMEOUT_S = 30  # node start-up and loading the zeromq addon: well under a second when idle
ENGINE_TIMEOUT_S = 240
SUBSCRIBER_TIMEOUT_S = ENGINE_TIMEOUT_S + 30  # its own deadline: always reached after the engine's


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, once tests/node/install.sh has installed zeromq beside the subscriber."""
    path = shutil.which("node")
    if path is None:
        problem = "node is not on PATH"
    elif not (NODE_DIR / "node_modules" / "zeromq" / "package.json").is_file():
        problem = "tests/node/node_modules/zeromq is missing"
    else:
        return path
    reason = f"{problem}; install with `bash tests/node/install.sh` (needs Node.js >= 18 and npm)"
    if os.environ.get(REQUIRE_NODE) == "1":
        pytest.fail(f"{REQUIRE_NODE}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class NodeSubscriber:
    """tests/node/subscriber.mjs in a subprocess: started, READY awaited, summary read; always killed."""

    def __init__(self, node: str, endpoint: str, *args: str):
        self.proc = subprocess.Popen(
            [node, str(SUBSCRIBER), "--endpoint", endpoint, *args],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.subscriptions: list[str] = []
        self._ready = threading.Event()  # set on READY, or when stderr closes without it
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), name="node-stdout"),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), name="node-stderr"),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if stream is self.proc.stderr and line.startswith("READY "):
                self.subscriptions = json.loads(line.split(" ", 2)[2])
                self._ready.set()
        if stream is self.proc.stderr:
            self._ready.set()

    def __enter__(self) -> NodeSubscriber:
        if not self._ready.wait(READY_TIMEOUT_S) or not self.subscriptions:
            self.close()
            raise AssertionError(f"the Node subscriber printed no READY within {READY_TIMEOUT_S} s: {self.err}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def err(self) -> str:
        return "".join(self.stderr)

    def summary(self, timeout: float) -> tuple[int, dict[str, Any]]:
        """Its exit code and its one JSON line, waiting at most ``timeout`` seconds for it to end."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        assert self.stdout, f"the Node subscriber exited {code} without a summary: {self.err}"
        return code, json.loads(self.stdout[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def jsonl_frames(path: Path) -> Counter[str]:
    """Results per source written by the engine's JSONL sink."""
    return Counter(json.loads(line)["source_id"] for line in path.read_text().splitlines())


def two_source_config(request: pytest.FixtureRequest, out: Path) -> Path:
    """``run`` with a classifier bundle over two sources (48 frames each), no video."""
    clip, bundle = request.getfixturevalue("clip"), request.getfixturevalue("bundle")
    path = out.parent / "two_sources.yaml"
    path.write_text(
        f"sources:\n  - {{id: cam1, uri: '{clip}'}}\n  - {{id: cam2, uri: '{clip}'}}\n"
        f"model: {{path: '{bundle}'}}\nsinks: {{video: {{enabled: false}}}}\noutput_dir: '{out}'\n"
    )
    return path


# task, engine command (without --out and the ZMQ overrides), more overrides, the topic prefixes
# the subscriber asks for (none: everything), the sources it waits for
RUNS = [
    pytest.param("detection", ["demo", "--fast", "--frames", "30"], [], [], ["demo"], id="detection-demo"),
    pytest.param(
        "segmentation",
        ["demo", "--task", "segmentation", "--fast", "--frames", "20"],
        [],
        ["segmentation/demo"],
        ["demo"],
        id="segmentation-demo-one-topic",
    ),
    pytest.param(
        "segmentation",
        ["demo", "--task", "segmentation", "--fast", "--frames", "20"],
        ["sinks.zmq.mask_encoding=png"],
        [],
        ["demo"],
        id="segmentation-demo-png-masks",
    ),
    pytest.param("classification", ["run", "{config}"], [], [], ["cam1", "cam2"], id="classification-run-two-sources"),
]


@pytest.mark.slow
@pytest.mark.parametrize("task, command, overrides, prefixes, sources", RUNS)
def test_node_subscriber_checks_a_real_run(node, tmp_path, request, task, command, overrides, prefixes, sources):
    out = tmp_path / "out"
    if command[-1] == "{config}":
        command = [*command[:-1], str(two_source_config(request, out))]
    else:
        command = [*command, "--out", str(out)]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ["--sources", ",".join(sources), "--timeout", str(SUBSCRIBER_TIMEOUT_S), *prefixes]
    with NodeSubscriber(node, endpoint, *args) as sub:
        # each subscription counts once: the engine starts when all of the subscriber's have come
        zmq_set = [f"endpoint={endpoint}", f"wait_subscribers={len(sub.subscriptions)}", "wait_timeout_s=60"]
        sets = [*(f"sinks.zmq.{s}" for s in zmq_set), *overrides]
        engine = subprocess.run(
            [*CLI, *command, *(arg for s in sets for arg in ("--set", s))],
            capture_output=True,
            text=True,
            timeout=ENGINE_TIMEOUT_S,
        )
        assert engine.returncode == 0, engine.stderr
        code, summary = sub.summary(timeout=60)
    assert (code, summary["errors"]) == (0, []), summary
    frames = jsonl_frames(out / "predictions.jsonl")
    assert sorted(frames) == sorted(sources) and all(frames.values()), frames
    for source in sources:
        seen = summary["sources"][source]
        assert (seen["results"], seen["first_index"], seen["last_index"]) == (frames[source], 0, frames[source] - 1)
        assert seen["eos"] == {"frames": frames[source], "reason": "end"}
        assert seen["tasks"] == [task] and seen["states"] == ([] if prefixes else ["running", "stopped"])
        if task == "segmentation":
            encoding = "png" if "sinks.zmq.mask_encoding=png" in overrides else "raw"
            assert seen["masks"] == {encoding: frames[source]}
    counts = dict(summary["counts"])
    heartbeats = counts.pop("heartbeat", 0)  # timed: a few per second of the run
    unseen = 2 * len(sources) if prefixes else 0  # status messages outside the subscriptions
    assert counts == {task: sum(frames.values()), "eos": len(sources)} | (
        {} if prefixes else {"status": 2 * len(sources)}
    )
    zmq_stats = json.loads((out / "summary.json").read_text())["sinks"]["zmq"]
    assert zmq_stats["dropped"] == 0
    # every message but heartbeats came (a heartbeat may leave after the last eos, when it has gone)
    assert sum(counts.values()) + unseen == zmq_stats["sent"] - zmq_stats["heartbeats"]
    assert heartbeats <= (0 if prefixes else zmq_stats["heartbeats"])


# -- the checker itself: a fake engine breaks one rule at a time ----------------------------------
W, H = 64, 48
# a class map: a circle (class 2) and a square (class 1) on background (class 0)
MASK = bytes(
    2 if (x - 20) ** 2 + (y - 24) ** 2 < 100 else 1 if 40 <= x < 56 and 8 <= y < 30 else 0
    for y in range(H)
    for x in range(W)
)
# the same map as a model with more than 256 classes sends it: class ids 0, 300 and 600 in uint16
MASK16 = [300 * v for v in MASK]


def fractions(mask: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {"class_id": c, "label": f"c{c}", "fraction": round(n / len(mask), 6)} for c, n in sorted(Counter(mask).items())
    ]


FRACTIONS = fractions(MASK)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = ["decode", "queue", "preprocess", "wait", "infer", "post", "publish"]


def png(pixels: Sequence[int], width: int, height: int, depth: int = 8) -> bytes:
    """A grayscale PNG (8- or 16-bit), its rows filtered with types 0..4 in turn: every path of the decoder."""

    def paeth(a: int, b: int, c: int) -> int:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else b if pb <= pc else c

    bpp = depth // 8  # the filters predict each byte from the same byte of the pixel to the left
    samples = b"".join(v.to_bytes(bpp, "big") for v in pixels)  # 16-bit samples are big-endian
    stride = width * bpp
    data = bytearray()
    for y in range(height):
        row, up = samples[y * stride : (y + 1) * stride], samples[(y - 1) * stride : y * stride] if y else bytes(stride)
        kind = y % 5
        data.append(kind)
        for x in range(stride):
            a, b, c = (row[x - bpp] if x >= bpp else 0), up[x], (up[x - bpp] if x >= bpp else 0)
            data.append((row[x] - (0, a, b, (a + b) // 2, paeth(a, b, c))[kind]) & 0xFF)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(data))) + chunk(b"IEND", b"")


def header(task: str = "detection", index: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid result header of source ``cam``; ``fields`` replace fields (``...`` removes one)."""
    now = time.time_ns()
    h: dict[str, Any] = {
        "schema": 1,
        "source_id": "cam",
        "frame_index": index,
        "pts": index / 25,
        "capture_ns": now - 5_000_000,
        "publish_ns": now,
        "latency_ms": 5.0,
        "width": W,
        "height": H,
        "flags": [],
        "task": task,
        "model": "fake",
        "model_version": "0123456789ab",
        "batch_size": 1,
        "timings_ms": dict.fromkeys(STAGES, 0.5),
    }
    if task == "detection":
        h["detections"] = [{"box": [0.0, 1.5, W, H], "class_id": 1, "label": "c1", "score": 0.9}]
    elif task == "segmentation":
        h["class_fractions"] = FRACTIONS
        h["mask"] = {"encoding": "raw", "dtype": "uint8", "shape": [H, W], "frame": 2}
    else:
        h["classes"] = [{"class_id": 0, "label": "c0", "score": 0.7}, {"class_id": 1, "label": "c1", "score": 0.2}]
    h.update(fields)
    return {k: v for k, v in h.items() if v is not ...}


def msg(topic: str, head: dict[str, Any] | str, *payload: bytes) -> list[bytes]:
    text = head if isinstance(head, str) else json.dumps(head, separators=(",", ":"))
    return [topic.encode(), text.encode(), *payload]


def det(index: int = 0, **fields: Any) -> list[bytes]:
    return msg("detection/cam", header("detection", index, **fields))


def box(*xyxy: float, score: float = 0.5) -> dict[str, Any]:
    return {"detections": [{"box": list(xyxy), "class_id": 0, "label": "c0", "score": score}]}


def seg(payload: bytes = MASK, encoding: str = "raw", dtype: str = "uint8", **fields: Any) -> list[bytes]:
    mask = {"encoding": encoding, "dtype": dtype, "shape": [H, W], "frame": 2}
    return msg("segmentation/cam", header("segmentation", mask=mask, **fields), payload)


def seg16(payload: bytes, encoding: str = "raw") -> list[bytes]:
    return seg(payload, encoding, "uint16", class_fractions=fractions(MASK16))


MASK16_RAW = b"".join(v.to_bytes(2, "little") for v in MASK16)


def engine_seg16(encoding: str, index: int) -> list[bytes]:
    """MASK16 as the engine's own encoder sends it (int64 ids, as a > 256-class post-processor gives)."""
    spec, payload = encode_mask(np.array(MASK16, dtype=np.int64).reshape(H, W), encoding)
    return msg("segmentation/cam", header("segmentation", index, mask=spec, class_fractions=fractions(MASK16)), payload)


def status(state: str, previous: str | None) -> list[bytes]:
    head = {"schema": 1, "source_id": "cam", "state": state, "previous": previous, "reason": "", "attempt": 0}
    return msg("status/cam", head | {"retry_in_s": None, "at_ns": time.time_ns()})


def heartbeat(last: int | None) -> list[bytes]:
    head = {"schema": 1, "source_id": "cam", "state": "running", "frames_decoded": 3, "frames_out": 1, "drops": 0}
    more = {"queue_depth": 0, "fps": 25.0, "last_frame_index": last, "uptime_s": 1.0, "at_ns": time.time_ns()}
    return msg("heartbeat/cam", head | more)


def eos(frames: int, source: str = "cam") -> list[bytes]:
    return msg(f"eos/{source}", {"schema": 1, "source_id": source, "frames": frames, "reason": "end"})


CLASSES = {"classes": [{"class_id": 0, "label": "c0", "score": 0.1}, {"class_id": 1, "label": "c1", "score": 0.8}]}
# the messages of source cam, and the error the subscriber must report (None: none)
CHECKS = [
    pytest.param(
        [
            status("running", None),
            det(0),
            heartbeat(0),
            seg(index=1),
            msg("classification/cam", header("classification", 2)),
        ]
        + [status("stopped", "running"), eos(3)],
        None,
        id="valid-every-kind",
    ),
    pytest.param([seg(png(MASK, W, H), "png"), eos(1)], None, id="valid-png-mask"),
    pytest.param([engine_seg16("raw", 0), engine_seg16("png", 1), eos(2)], None, id="engine-uint16-masks"),
    pytest.param([seg16(MASK16_RAW), eos(1)], None, id="valid-uint16-raw-mask"),
    pytest.param([seg16(png(MASK16, W, H, 16), "png"), eos(1)], None, id="valid-uint16-png-mask"),
    pytest.param(
        [seg16(MASK16_RAW[:-2]), eos(1)], "expected height*width*2 = 6144 bytes, got 6142", id="uint16-length"
    ),
    pytest.param([seg(png(MASK, W, H), "png", "uint16"), eos(1)], "expected a 16-bit grayscale", id="uint16-png-depth"),
    pytest.param(
        [seg(MASK16_RAW, "raw", "uint16"), eos(1)], "class_fractions: class 300 covers", id="uint16-fractions"
    ),
    pytest.param([seg(MASK, dtype="int32"), eos(1)], 'mask.dtype: expected "uint8" or "uint16"', id="mask-dtype"),
    pytest.param([det(schema=2), eos(1)], "schema: expected 1, got 2", id="schema"),
    pytest.param(
        [msg("detection/cam", header("classification")), eos(1)], 'task: expected "detection"', id="topic-task"
    ),
    pytest.param([det(source_id="cam2"), eos(1)], 'source_id: expected "cam"', id="topic-source"),
    pytest.param([msg("keypoints/cam", header()), eos(0)], "topic kind: expected one of", id="unknown-kind"),
    pytest.param([msg("detection/cam", '{"schema":1,"x":NaN'), eos(0)], "header is not valid JSON", id="not-json"),
    pytest.param(
        [det(frame_index=...), eos(1)], "frame_index: expected an integer >= 0, got undefined", id="missing-field"
    ),
    pytest.param([det(3), det(3), eos(2)], "frame_index: expected > 3", id="index-order"),
    pytest.param(
        [det(capture_ns=1.7e18), eos(1)], "capture_ns: expected an integer literal, got 1.7e+18", id="ns-float"
    ),
    pytest.param([det(publish_ns=5_000_000), eos(1)], "publish_ns: expected ns since the epoch", id="ns-not-epoch"),
    pytest.param(
        [det(latency_ms=7.5), eos(1)], "latency_ms: expected (publish_ns - capture_ns) / 1e6 = 5, got 7.5", id="latency"
    ),
    pytest.param([det(timings_ms={"decode": 1.0}), eos(1)], 'timings_ms: stage "infer" is missing', id="timings"),
    pytest.param([det(flags=["after_gap", "after_gap"]), eos(1)], "flags: expected distinct flags", id="flags"),
    pytest.param(
        [det(**box(1, 2, W + 1, 9)), eos(1)],
        "box: expected 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 48",
        id="box-outside",
    ),
    pytest.param([det(**box(9, 2, 5, 9)), eos(1)], "detections[0].box: expected 0 <= x1 <= x2", id="box-inverted"),
    pytest.param(
        [det(**box(1, 2, 3, 4, score=1.5)), eos(1)], "score: expected a number in [0, 1], got 1.5", id="score"
    ),
    pytest.param(
        [msg("classification/cam", header("classification", **CLASSES)), eos(1)], "expected best first", id="best-first"
    ),
    pytest.param(
        [seg(class_fractions=FRACTIONS[:1]), eos(1)], "class_fractions: expected a sum of 1", id="fraction-sum"
    ),
    pytest.param(
        [seg(class_fractions=[{"class_id": c, "label": "", "fraction": 1 / 3} for c in range(3)]), eos(1)],
        "class 0 is listed at 0.333",
        id="fraction-vs-mask",
    ),
    pytest.param([seg(MASK[:-1]), eos(1)], "expected height*width = 3072 bytes, got 3071", id="mask-length"),
    pytest.param(
        [msg("segmentation/cam", header("segmentation")), eos(1)],
        "mask.frame: expected the index of a payload part",
        id="mask-missing",
    ),
    pytest.param([seg(MASK, "png"), eos(1)], "does not start with the PNG signature", id="png-signature"),
    pytest.param([seg(png(MASK, H, W), "png"), eos(1)], "the PNG is 48x64, the frame 64x48", id="png-size"),
    pytest.param([seg(png(MASK, W, H)[:-30], "png"), eos(1)], "PNG chunk IDAT is cut short", id="png-cut"),
    pytest.param([status("sleeping", None), eos(0)], "state: expected one of", id="state"),
    pytest.param(
        [status("running", None), status("stopped", "connecting"), eos(0)],
        'previous: expected "running"',
        id="previous",
    ),
    pytest.param(
        [det(0), heartbeat(5), eos(1)], "last_frame_index: expected 0 (the last result received), got 5", id="heartbeat"
    ),
    pytest.param([det(0), eos(2)], "frames: expected 1 (the results received for cam), got 2", id="eos-frames"),
    pytest.param([eos(0), det(0)], "result after the source's eos", id="after-eos"),
]


@pytest.mark.parametrize("messages, error", CHECKS)
def test_node_subscriber_reports_each_broken_rule(node, messages, error):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # a second source, ended after cam's messages: the subscriber reads them all, even past eos/cam
    with NodeSubscriber(node, endpoint, "--sources", "cam,last", "--timeout", "30") as sub:
        pub = zmq.Context.instance().socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 1000)
        try:
            pub.bind(endpoint)
            assert pub.poll(10_000), "the Node subscriber did not subscribe within 10 s"
            assert pub.recv() == b"\x01"  # one subscription, to everything
            for parts in [*messages, eos(0, "last")]:
                pub.send_multipart(parts)
            code, summary = sub.summary(timeout=30)
        finally:
            pub.close()
    if error is None:
        assert (code, summary["errors"]) == (0, []), summary
    else:
        assert code == 1 and any(error in e for e in summary["errors"]), summary["errors"]


def test_node_subscriber_gives_up_at_its_timeout(node):
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing is bound there
    with NodeSubscriber(node, endpoint, "--sources", "a,b", "--timeout", "0.5") as sub:
        code, summary = sub.summary(timeout=30)
    assert (code, summary["errors"], summary["messages"]) == (1, ['timeout: no eos for ["a","b"] within 0.5 s'], 0)


def test_node_subscriber_connects_to_loopback_only(node):
    proc = subprocess.run(
        [node, str(SUBSCRIBER), "--endpoint", "tcp://0.0.0.0:5555"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "expected tcp://127.0.0.1:PORT (loopback only)" in proc.stderr
