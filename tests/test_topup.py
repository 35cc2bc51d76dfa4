"""Live batches take the frames that arrive until the model takes them (Pipeline._top_up).

The worker threads are not started here: the test plays the model's part (taking the batch) at
chosen moments, with real ring buffers, real frames and the bundle's real preprocessing.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from autotimm_stream.batching import BatchPolicy
from autotimm_stream.frame import Frame
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.ringbuffer import RingBuffer
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sources.base import Source
from autotimm_stream.worker import _Pending

from .conftest import wait_for


class _Idle(Source):
    """A source that is never started: the test pushes its frames."""

    live = True

    def open(self):
        return None


def frame(i: int) -> Frame:
    img = np.full((48, 64, 3), i * 20 % 256, np.uint8)
    return Frame("cam", i, i / 25, time.time_ns(), img)


@pytest.fixture
def rig(bundle):
    bell = threading.Condition()
    buf = RingBuffer(16, "latest", bell)
    pipeline = Pipeline([_Idle("cam", buf, threading.Event())], ModelRunner(bundle), [], BatchPolicy(max_batch=4))
    yield pipeline, buf
    pipeline.abort.set()


def push(buf: RingBuffer, *indices: int) -> None:
    for i in indices:
        assert buf.put(frame(i), threading.Event(), timeout=1.0)


def take(p: _Pending, pipeline: Pipeline) -> None:
    """What the infer thread does when it takes a batch."""
    with p.lock:
        p.taken = True
    with pipeline.bell:
        pipeline.bell.notify_all()


def first(pipeline: Pipeline, *indices: int) -> _Pending:
    frames = [frame(i) for i in indices]
    x, ms = pipeline._preprocess(frames)
    return _Pending(frames, x, time.monotonic_ns(), ms)


def test_frames_join_until_the_model_takes_the_batch(rig):
    pipeline, buf = rig
    pending = first(pipeline, 0)
    push(buf, 1)
    done = []
    t = threading.Thread(target=lambda: done.append(pipeline._top_up(pending, threading.Event())))
    t.start()
    wait_for(lambda: len(pending.frames) == 2, 5, "frame 1 to join")
    push(buf, 2)
    wait_for(lambda: len(pending.frames) == 3, 5, "frame 2 to join")
    take(pending, pipeline)
    t.join(5)
    assert done == [True]
    push(buf, 3)  # after the model took it: waits in its buffer for the next batch
    assert [f.index for f in pending.frames] == [0, 1, 2] and len(buf) == 1
    assert pipeline._held(pending) == {id(buf): 3}  # what the per-source share counts on the next top-up
    # the tensor the model gets is what one preprocessing call of the three frames gives
    x = torch.cat(pending.x)
    assert torch.equal(x, pipeline._preprocess([frame(i) for i in (0, 1, 2)])[0])
    assert len(pending.formed) == 3 and pending.formed[0] <= pending.formed[1] <= pending.formed[2]


def test_a_full_batch_stops_taking(rig):
    pipeline, buf = rig
    pending = first(pipeline, 0, 1)
    push(buf, 2, 3, 4)
    assert pipeline._top_up(pending, threading.Event())  # returns at once: full, nothing to wait for
    assert [f.index for f in pending.frames] == [0, 1, 2, 3] and len(buf) == 1


def test_frames_that_miss_the_batch_become_the_next_one(rig, monkeypatch):
    pipeline, buf = rig
    pending = first(pipeline, 0)
    preprocess = pipeline._preprocess

    def model_takes_it_meanwhile(frames):
        take(pending, pipeline)  # the model takes the batch while newcomers are being preprocessed
        return preprocess(frames)

    monkeypatch.setattr(pipeline, "_preprocess", model_takes_it_meanwhile)
    push(buf, 1)
    t = threading.Thread(target=pipeline._top_up, args=(pending, threading.Event()))
    t.start()
    wait_for(lambda: pipeline._prepared.qsize() == 1, 5, "the missed frame to become a batch")
    nxt = pipeline._prepared.get_nowait()
    assert [f.index for f in pending.frames] == [0]
    assert [f.index for f in nxt.frames] == [1] and not nxt.taken
    take(nxt, pipeline)
    t.join(5)
    assert not t.is_alive()


def test_stop_ends_a_top_up_that_waits(rig):
    pipeline, _ = rig
    pending = first(pipeline, 0)
    t = threading.Thread(target=pipeline._top_up, args=(pending, threading.Event()))
    t.start()
    pipeline.stop_event.set()
    t.join(2)
    assert not t.is_alive() and [f.index for f in pending.frames] == [0]
