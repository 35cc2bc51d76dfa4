"""The whole engine on real generated H.264 files, real bundles and real ZMQ sockets."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from autotimm_stream.app import build_pipeline
from autotimm_stream.config import BatchPolicy
from autotimm_stream.errors import ConfigError
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.ringbuffer import RingBuffer
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks.base import Sink
from autotimm_stream.sources.base import Source, SourceInfo
from tests.helpers import checked, config, decode_pts, read_jsonl, run, wait_for


def test_every_frame_once_in_order_under_block(clip, bundle, tmp_path):
    summary = run(config(clip, bundle, tmp_path, video=False))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["frame_index"] for r in rows] == list(range(48))
    assert [r["pts"] for r in rows] == pytest.approx([i / 25 for i in range(48)])
    assert summary["frames"] == 48 and summary["drops"] == 0
    assert summary["sources"]["cam"] == {
        "uri": str(clip),
        "frames_decoded": 48,
        "frames_out": 48,
        "drops": {},
        "state": "stopped",
        "states_entered": {"running": 1, "stopped": 1},
        "error": None,
    }
    assert summary["batch_size_mean"] > 1  # the buffer of 4 fills while the model works: batches form
    # the model keeps torch's threads, preprocessing and post-processing get one each, the global default is restored
    assert summary["torch_threads"] == {"infer": torch.get_num_threads(), "prep": 1, "post": 1}
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a thread started later
    t.start()
    t.join(5)
    assert seen == [torch.get_num_threads()]
    for r in rows:
        assert [c["label"] for c in r["classes"]] and r["task"] == "classification"
        assert set(r["timings_ms"]) == {"decode", "queue", "preprocess", "wait", "infer", "post"}


def test_batch_1_and_batch_8_give_identical_results(clip, bundle, tmp_path):
    run(config(clip, bundle, tmp_path / "b1", max_batch=1, video=False))
    run(config(clip, bundle, tmp_path / "b8", max_batch=8, video=False))
    one = read_jsonl(tmp_path / "b1" / "predictions.jsonl")
    eight = read_jsonl(tmp_path / "b8" / "predictions.jsonl")
    assert {r["batch_size"] for r in one} == {1}
    assert max(r["batch_size"] for r in eight) > 1
    assert len(one) == len(eight) == 48
    for a, b in zip(one, eight):
        assert a["frame_index"] == b["frame_index"]
        sa = {c["class_id"]: c["score"] for c in a["classes"]}
        sb = {c["class_id"]: c["score"] for c in b["classes"]}
        assert sa.keys() == sb.keys()
        assert all(abs(sa[k] - sb[k]) < 1e-5 for k in sa)


def test_zmq_subscriber_receives_every_message(clip, bundle, tmp_path, endpoint):
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    received: list[tuple[str, dict]] = []

    def listen():
        while sub.poll(10_000):
            parts = sub.recv_multipart()
            received.append((parts[0].decode(), checked(parts)))
            topic = parts[0]
            if topic.startswith(b"eos/"):
                return

    try:
        t = threading.Thread(target=listen)
        t.start()
        summary = run(config(clip, bundle, tmp_path, endpoint=endpoint, video=False))
        t.join(15)
    finally:
        sub.close(0)
    results = [h for topic, h in received if topic == "classification/cam"]
    assert [h["frame_index"] for h in results] == list(range(48))
    assert received[-1] == ("eos/cam", {"schema": 1, "source_id": "cam", "frames": 48, "reason": "end"})
    h = results[0]
    assert h["schema"] == 1 and h["source_id"] == "cam" and h["model"] == "test_resnet"
    assert {"decode", "queue", "preprocess", "infer", "post", "publish"} <= set(h["timings_ms"])
    assert h["publish_ns"] >= h["capture_ns"] and h["latency_ms"] >= 0
    status = [(h["state"], h["previous"]) for topic, h in received if topic == "status/cam"]
    assert status == [("running", None), ("stopped", "running")]
    zmq_stats = summary["sinks"]["zmq"]
    assert zmq_stats["sent"] - zmq_stats["heartbeats"] == 51 and zmq_stats["dropped"] == 0


def test_annotated_video_has_every_frame_at_source_pts(clip, bundle, tmp_path):
    run(config(clip, bundle, tmp_path))
    video = tmp_path / "annotated.mp4"
    pts, duration = decode_pts(video)
    src_pts, _ = decode_pts(clip)
    assert len(pts) == 48
    assert pts == pytest.approx(src_pts)
    assert duration == pytest.approx(48 / 25, abs=0.05)


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed (.ci/run installs it)")
def test_annotated_video_passes_ffprobe(clip, bundle, tmp_path):
    run(config(clip, bundle, tmp_path))
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-of",
            "json",
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames,duration",
            str(tmp_path / "annotated.mp4"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    st = json.loads(out.stdout)["streams"][0]
    assert (st["codec_name"], st["pix_fmt"], st["width"], st["height"]) == ("h264", "yuv420p", 320, 240)
    assert int(st["nb_read_frames"]) == 48
    assert float(st["duration"]) == pytest.approx(1.92, abs=0.05)


def test_variable_frame_rate_timestamps_survive(vfr_clip, bundle, tmp_path):
    path, pts_ms = vfr_clip
    run(config(path, bundle, tmp_path))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["pts"] for r in rows] == pytest.approx([t / 1000 for t in pts_ms])
    out_pts, _ = decode_pts(tmp_path / "annotated.mp4")
    assert out_pts == pytest.approx([t / 1000 for t in pts_ms])  # right speed despite the gaps


def test_multilabel_results_respect_threshold(clip, multilabel_bundle, tmp_path):
    run(config(clip, multilabel_bundle, tmp_path, video=False))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(rows) == 48 and all(r["task"] == "multilabel" for r in rows)
    scores = [c["score"] for r in rows for c in r["classes"]]
    assert all(s >= 0.5 for s in scores)


def test_stop_mid_run_drains_and_closes(clip, bundle, tmp_path):
    pipeline = build_pipeline(config(clip, bundle, tmp_path, realtime=True))  # 1.92 s at real speed
    pipeline.start()
    time.sleep(0.6)
    t0 = time.monotonic()
    pipeline.stop()
    assert pipeline.wait(5)
    pipeline.close()
    assert time.monotonic() - t0 < 5
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert 0 < len(rows) < 48
    assert [r["frame_index"] for r in rows] == list(range(len(rows)))  # nothing lost before the stop
    pts, _ = decode_pts(tmp_path / "annotated.mp4")
    assert len(pts) == len(rows)
    assert all(not t.is_alive() for t in threading.enumerate() if t.name.startswith(("source-", "worker-", "sink-")))


def test_latest_policy_drops_oldest_and_counts_every_drop(clip, bundle, tmp_path):
    # An unpaced file decodes far faster than the model runs: a 1-frame 'latest' buffer must drop.
    summary = run(config(clip, bundle, tmp_path, video=False, buffer_size=1, policy="latest", max_batch=1))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    src = summary["sources"]["cam"]
    indices = [r["frame_index"] for r in rows]
    assert indices == sorted(set(indices))  # still in order, never twice
    assert src["frames_out"] == len(rows) and src["frames_decoded"] == 48
    assert src["drops"].get("buffer_full", 0) == 48 - len(rows) > 0
    assert indices[-1] == 47  # the newest frame always survives


def test_corrupt_bytes_are_flagged_counted_and_survived(bundle, media, tmp_path):
    import numpy as np

    from autotimm_stream.synthetic import write_clip

    good = write_clip(media / "to_corrupt.mp4", frames=60, width=320, height=240, seed=2, gop=12)
    data = bytearray(Path(good).read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) // 3, len(data) // 3 + 3000, 7):  # damage the middle of the H.264 data
        data[offset] = int(rng.integers(0, 256))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    summary = run(config(bad, bundle, tmp_path / "out"))
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    src = summary["sources"]["cam"]
    assert src["error"] is None and 40 <= src["frames_decoded"] <= 60
    assert src["frames_out"] == src["frames_decoded"] == len(rows)  # every decodable frame, once
    indices = [r["frame_index"] for r in rows]
    assert indices == sorted(indices)
    flagged = [r for r in rows if "corrupt" in r["flags"]]
    assert flagged, "damaged frames must be flagged"
    if src["drops"].get("decode_error", 0):  # a skipped packet: the next frame says so
        assert any("after_gap" in r["flags"] for r in rows)
    assert len(decode_pts(tmp_path / "out" / "annotated.mp4")[0]) == len(rows)


# -- sources added and removed at run time --------------------------------------------------------
class Frames(Source):
    """``n`` small frames as fast as the buffer takes them (a file read offline)."""

    def __init__(self, source_id: str, n: int):
        super().__init__(source_id, RingBuffer(64, "block"))
        self.n = n

    def open(self) -> SourceInfo:
        self.info = SourceInfo(64, 48, 25.0, None, self.n)
        return self.info

    def _run(self) -> None:
        for i in range(self.n):
            if not self._deliver(np.full((48, 64, 3), i % 256, np.uint8), i / 25, 0, 0.0, None, None):
                return


class Ends(Sink):
    name = "ends"

    def __init__(self) -> None:
        self.eos: list = []

    def write(self, results) -> None:
        pass

    def end_of_stream(self, eos) -> None:
        self.eos.append((eos.source_id, eos.frames))


def test_a_source_added_again_under_its_id_counts_from_zero(bundle):
    ends = Ends()
    p = Pipeline([], ModelRunner(bundle), [ends], BatchPolicy(max_batch=4), persistent=True)
    p.start(warmup=False)
    try:
        for n in (10, 6):
            src = Frames("cam", n)
            p.add_source(src)
            wait_for(lambda src=src: src.buffer.exhausted and not src.alive, 10, "the source to end")
            with pytest.raises(ConfigError, match="'cam' has ended .* remove it first"):
                p.add_source(Frames("cam", 1))  # its id is still taken, and the message says why
            p.remove_source("cam")
            wait_for(lambda: "cam" in p.retired, 10, "the source to be retired")
    finally:
        p.close()
    assert ends.eos == [("cam", 10), ("cam", 6)]
    stats = p.stats()
    assert stats.sources["cam"].frames_out == stats.sources["cam"].frames_decoded == 6
    assert stats.to_json()["replaced"]["cam"] == {"sessions": 1, "frames_decoded": 10, "frames_out": 10, "drops": {}}
    assert stats.frames == 16
