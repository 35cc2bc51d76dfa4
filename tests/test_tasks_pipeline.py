"""Detection and segmentation through the whole engine: real H.264 files, real ZMQ sockets.

Each result the engine publishes must equal the bundle + post-processing applied directly to the
same decoded frames, whatever the batch composition.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import zmq

from autotimm_stream.postprocess import Postprocessor
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sources.convert import to_rgb
from tests.helpers import checked, config, decode_pts, read_jsonl, run


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [to_rgb(f) for f in c.decode(video=0)]


def direct(bundle: Path, frames: list[np.ndarray]) -> list[dict]:
    runner = ModelRunner(bundle)
    post = Postprocessor(runner.meta)
    out = []
    for i in range(0, len(frames), 5):
        chunk = frames[i : i + 5]
        out += post(runner.forward(runner.preprocess(chunk)), [f.shape[:2] for f in chunk])
    return out


def subscribe(endpoint: str, received: list[list[bytes]]) -> tuple[threading.Thread, zmq.Socket]:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)

    def listen():
        while sub.poll(10_000):
            parts = sub.recv_multipart()
            received.append(parts)
            if parts[0].startswith(b"eos/"):
                return

    t = threading.Thread(target=listen)
    t.start()
    return t, sub


def test_detections_are_published_in_frame_pixels(clip, det_bundle, tmp_path, endpoint):
    received: list[list[bytes]] = []
    t, sub = subscribe(endpoint, received)
    try:
        summary = run(config(clip, det_bundle, tmp_path, endpoint=endpoint, max_batch=4))
        t.join(15)
    finally:
        sub.close(0)
    assert summary["frames"] == 48
    assert [checked(p) for p in received if "invalid" in checked(p)] == []  # every message follows schema 1
    messages = [json.loads(p[1]) for p in received if p[0] == b"detection/cam"]
    assert all(len(p) == 2 for p in received)  # no payload frames for boxes
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [m["frame_index"] for m in messages] == [r["frame_index"] for r in rows] == list(range(48))
    expected = direct(det_bundle, decoded_frames(clip))
    total = 0
    for msg, row, exp in zip(messages, rows, expected):
        assert msg["detections"] == row["detections"]
        assert "classes" not in msg
        got = msg["detections"]
        assert [d["label"] for d in got] == [d.label for d in exp.detections]
        assert np.allclose(
            [d["box"] for d in got] or np.zeros((0, 4)),
            [d.box for d in exp.detections] or np.zeros((0, 4)),
            atol=0.01,
        )
        for d in got:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
        total += len(got)
    assert total > 48  # the tiny detector fires everywhere: the comparison is not vacuous
    pts, _ = decode_pts(tmp_path / "annotated.mp4")
    assert len(pts) == 48


def test_masks_travel_as_binary_frames_at_source_resolution(clip, seg_bundle, tmp_path, endpoint):
    received: list[list[bytes]] = []
    t, sub = subscribe(endpoint, received)
    try:
        run(config(clip, seg_bundle, tmp_path, endpoint=endpoint, max_batch=3))
        t.join(15)
    finally:
        sub.close(0)
    results = [p for p in received if p[0] == b"segmentation/cam"]
    assert len(results) == 48
    assert [checked(p) for p in received if "invalid" in checked(p)] == []  # every message follows schema 1
    expected = direct(seg_bundle, decoded_frames(clip))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    seen_classes = set()
    for parts, row, exp in zip(results, rows, expected):
        assert len(parts) == 3
        header = json.loads(parts[1])
        spec = header["mask"]
        assert spec == {"encoding": "raw", "dtype": "uint8", "shape": [240, 320], "frame": 2}
        mask = np.frombuffer(parts[2], dtype=np.uint8).reshape(spec["shape"])
        assert np.array_equal(mask, exp.mask)
        counts = np.bincount(mask.ravel(), minlength=4) / mask.size
        fractions = {c["class_id"]: c["fraction"] for c in header["class_fractions"]}
        assert fractions == {i: pytest.approx(f, abs=1e-6) for i, f in enumerate(counts) if f > 0}
        assert row["class_fractions"] == header["class_fractions"]
        seen_classes |= set(fractions)
    assert len(seen_classes) >= 2  # masks are not one flat class
