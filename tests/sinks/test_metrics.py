"""The metrics sink alone: what each result adds to its Prometheus registry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autotimm_stream.frame import Frame, FrameFlags
from autotimm_stream.messages import EndOfStream, Result
from autotimm_stream.sinks.metrics import MetricsSink

STAGES = ("decode", "queue", "preprocess", "wait", "infer", "post")


# -- the sink alone ----------------------------------------------------------------------------------
def result(source: str, index: int, batch: int, done_ns: int, flags: FrameFlags = FrameFlags.NONE) -> Result:
    frame = Frame(source, index, index / 25, time.time_ns(), np.zeros((4, 4, 3), np.uint8), flags=flags)
    timings = dict.fromkeys(STAGES, 2.0) | {"publish": 1.0}
    return Result(frame, "classification", timings=timings, batch_size=batch, done_ns=done_ns)


def test_a_batch_is_counted_once_and_stages_once_per_frame():
    sink = MetricsSink()
    # one forward pass of 3 frames across two sources, then a pass of 1 (a write may hold several)
    sink.write([result("a", 0, 3, 10), result("b", 0, 3, 10), result("a", 1, 3, 10, FrameFlags.AFTER_GAP)])
    sink.write([result("a", 2, 1, 11, FrameFlags.CORRUPT | FrameFlags.AFTER_GAP), result("b", 1, 1, 12)])
    value = sink.registry.get_sample_value
    assert value("autotimm_stream_batch_size_count") == 3 and value("autotimm_stream_batch_size_sum") == 5
    assert value("autotimm_stream_frames_out_total", {"source": "a"}) == 3
    assert value("autotimm_stream_frames_out_total", {"source": "b"}) == 2
    assert value("autotimm_stream_stage_latency_seconds_count", {"stage": "infer"}) == 5
    assert value("autotimm_stream_stage_latency_seconds_sum", {"stage": "infer"}) == pytest.approx(0.010)
    assert value("autotimm_stream_stage_latency_seconds_count", {"stage": "publish"}) is None  # the ZMQ sink's own
    assert value("autotimm_stream_frames_flagged_total", {"source": "a", "flag": "after_gap"}) == 2
    assert value("autotimm_stream_frames_flagged_total", {"source": "a", "flag": "corrupt"}) == 1


def test_fps_is_measured_over_a_recent_window():
    now = [0.0]
    sink = MetricsSink(fps_window_s=10.0, clock=lambda: now[0])
    sink.write([result("a", 0, 1, 0)])
    assert sink.fps() == {"a": 1.0}  # a young source is measured over at least 1 s, never 1/0
    for i in range(1, 500):  # 25 fps for 20 s
        now[0] = i / 25
        sink.write([result("a", i, 1, i)])
    assert sink.fps()["a"] == pytest.approx(25, rel=0.01)  # the last 10 s only
    now[0] += 10.0
    assert sink.fps() == {"a": 0.0}
    sink.end_of_stream(EndOfStream("a", 500))
    assert sink.fps() == {}
    with pytest.raises(ValueError, match="fps_window_s must be > 0"):
        MetricsSink(fps_window_s=0)
