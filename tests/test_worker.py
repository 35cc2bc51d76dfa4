"""The worker on its own: real ring buffers, a real bundle, the model's forward pass held at chosen
moments so the test decides when the model is busy. What the worker did is read from what it
emitted: which frames went into which forward pass."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from autotimm_stream.batching import Batcher
from autotimm_stream.config import BatchPolicy
from autotimm_stream.frame import Frame
from autotimm_stream.lifecycle import Shutdown
from autotimm_stream.messages import EndOfStream, Result
from autotimm_stream.postprocess import Postprocessor
from autotimm_stream.ringbuffer import RingBuffer
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sources.base import Source, SourceInfo
from autotimm_stream.worker import READ_AHEAD, Worker
from tests.helpers import wait_for


class Pushed(Source):
    """A source whose frames the test puts into its buffer (its thread is never started)."""

    def open(self) -> SourceInfo:
        self.info = SourceInfo(64, 48, 25.0, None, None)
        return self.info


def frame(i: int, source: str = "cam") -> Frame:
    return Frame(source, i, i / 25, time.time_ns(), np.full((48, 64, 3), i * 20 % 256, np.uint8))


class Rig:
    """A worker over one source, with the model's forward pass held until :meth:`release`."""

    def __init__(self, bundle, policy: str = "latest", max_batch: int = 4, capacity: int = 16, on_failure=None):
        self.runner = ModelRunner(bundle)
        self.shutdown = Shutdown(drain_timeout_s=5.0)
        bell = threading.Condition()
        self.source = Pushed("cam", RingBuffer(capacity, policy, bell))
        self.source.open()
        self.batcher = Batcher([self.source.buffer], bell, BatchPolicy(max_batch=max_batch, max_wait_ms=1))
        self.emitted: list[list[Result] | EndOfStream] = []
        self.gate = threading.Event()
        self.forwarded: list[int] = []  # frames per forward pass, in order
        self.preprocessed: list[list[int]] = []  # frame values per preprocessing call
        self.on_preprocess = None  # called after each preprocessing call, on the prep thread
        forward, preprocess = self.runner.forward, self.runner.preprocess

        def held_forward(x):
            parts = x if isinstance(x, list) else [x]
            self.forwarded.append(sum(p.shape[0] for p in parts))
            self.gate.wait(30)
            return forward(x)

        def counted_preprocess(images):
            out = preprocess(images)
            self.preprocessed.append([int(img[0, 0, 0]) // 20 for img in images])
            if self.on_preprocess is not None:
                self.on_preprocess(len(self.preprocessed))
            return out

        self.runner.forward, self.runner.preprocess = held_forward, counted_preprocess
        self.worker = Worker(
            self.runner,
            Postprocessor(self.runner.meta),
            self.batcher,
            lambda: [self.source],
            self.emitted.append,
            self.shutdown,
            on_failure=on_failure,
        )

    def push(self, *indices: int) -> None:
        for i in indices:
            assert self.source.buffer.put(frame(i), threading.Event(), timeout=1.0)

    def start_busy(self) -> None:
        """Start the worker and give the model frame 0, held there: the model is busy from now on."""
        self.worker.start()
        self.push(0)
        wait_for(lambda: self.forwarded == [1], 10, "the model to take frame 0 (and be held there)")

    def push_alone(self, i: int, what: str) -> None:
        """Push frame ``i`` and wait until it has been preprocessed on its own."""
        self.push(i)
        wait_for(lambda: [i] in self.preprocessed, 10, what)

    def batches(self) -> list[list[int]]:
        """The frame indices of each batch of results emitted so far."""
        return [[r.index for r in item] for item in self.emitted if isinstance(item, list)]

    def finish(self) -> None:
        self.gate.set()
        self.shutdown.request()
        self.source.buffer.close()
        assert self.worker.wait(20), "the worker did not finish"
        self.worker.join(time.monotonic() + 5)


@pytest.fixture
def rig(bundle):
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(bundle, **kw))
        return made[-1]

    yield make
    for r in made:
        r.gate.set()
        r.shutdown.kill()
        r.worker.join(time.monotonic() + 5)


def test_live_frames_join_the_batch_until_the_model_takes_it(rig):
    r = rig()
    r.start_busy()
    r.push_alone(1, "frame 1 to form the next batch")
    r.push_alone(2, "frame 2 to be preprocessed for the waiting batch")
    r.push_alone(3, "frame 3 too")
    r.finish()
    assert r.batches() == [[0], [1, 2, 3]]  # one forward pass for the frames that came while the model ran
    assert r.forwarded == [1, 3]
    eos = [e for e in r.emitted if isinstance(e, EndOfStream)]
    assert [(e.source_id, e.frames, e.reason) for e in eos] == [("cam", 4, "stopped")]


def test_a_full_batch_takes_no_more_and_the_rest_waits_for_the_next(rig):
    r = rig(max_batch=4)
    r.start_busy()
    r.push(1, 2, 3, 4, 5)
    # the batch may form from frame 1 alone and take 2, 3, 4 as they come: count the frames
    wait_for(lambda: sum(len(p) for p in r.preprocessed[1:]) >= 4, 10, "a full batch to form")
    time.sleep(0.3)  # a batch that kept taking frames would have taken frame 5 by now
    assert len(r.source.buffer) == 1  # it waits for the next batch, once the model is free
    r.finish()
    assert r.batches() == [[0], [1, 2, 3, 4], [5]]


def test_frames_that_miss_the_batch_become_the_next_one(rig):
    r = rig()

    def model_takes_the_batch_meanwhile(calls: int) -> None:
        if calls == 3:  # frame 2, preprocessed to join batch [1]: the model takes [1] first
            r.gate.set()
            wait_for(lambda: len(r.forwarded) == 2, 10, "the model to take batch [1]")

    r.on_preprocess = model_takes_the_batch_meanwhile
    r.start_busy()
    r.push_alone(1, "frame 1 to form the next batch")
    r.push_alone(2, "frame 2 to be preprocessed")
    r.finish()
    assert r.batches() == [[0], [1], [2]]


def test_a_stop_ends_a_batch_that_waits_for_company(rig):
    r = rig()
    r.start_busy()
    r.push_alone(1, "frame 1 to wait for company")
    r.shutdown.request()
    time.sleep(0.3)  # a batch that ignored the stop would still be waiting for company now
    r.push(2)
    r.finish()
    assert r.batches() == [[0], [1], [2]]  # frame 2 did not join; what was buffered is still delivered


def test_files_read_ahead_at_most_read_ahead_prepared_batches(rig):
    r = rig(policy="block", capacity=64)
    for i in range(40):
        r.push(i)
    r.worker.start()
    wait_for(lambda: len(r.preprocessed) == 1 + READ_AHEAD, 10, "the read-ahead to fill")
    time.sleep(0.5)  # what must not happen: one more batch formed and held by preprocessing
    assert len(r.preprocessed) == 1 + READ_AHEAD  # one in the (held) forward pass, the rest waiting
    r.finish()
    assert sum(len(b) for b in r.batches()) == 40
    assert r.worker.frames_out["cam"] == 40 and r.worker.batch_sizes.count == len(r.batches())


def test_a_failure_in_the_model_stops_the_worker_and_is_kept(rig):
    failed = threading.Event()
    r = rig(on_failure=failed.set)

    def broken(x):
        raise RuntimeError("out of memory (simulated)")

    r.runner.forward = broken  # the worker calls the runner's forward when a batch comes
    r.worker.start()
    r.push(0)
    assert r.worker.wait(10) and failed.is_set()
    assert str(r.worker.error) == "out of memory (simulated)"
    assert r.shutdown.abort.is_set() and r.shutdown.stop.is_set()
