"""What the worker holds and counts: read-ahead of prepared batches, counts of a re-added source."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from autotimm_stream.batching import BatchPolicy
from autotimm_stream.errors import ConfigError
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.ringbuffer import RingBuffer
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks.base import Sink
from autotimm_stream.sources.base import Source, SourceInfo
from autotimm_stream.worker import _READ_AHEAD

from .conftest import wait_for


class Frames(Source):
    """``n`` small frames as fast as the buffer takes them (a file read offline)."""

    def __init__(self, source_id: str, n: int):
        super().__init__(source_id, RingBuffer(64, "block"), threading.Event())
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


def test_files_read_ahead_at_most_the_read_ahead_of_prepared_batches(bundle):
    runner = ModelRunner(bundle)
    gate = threading.Event()
    prepared = []
    forward, preprocess = runner.forward, runner.preprocess

    def held_forward(x):
        gate.wait(30)
        return forward(x)

    def counted_preprocess(*args, **kwargs):
        prepared.append(1)
        return preprocess(*args, **kwargs)

    runner.forward, runner.preprocess = held_forward, counted_preprocess
    p = Pipeline([Frames("f", 64)], runner, [], BatchPolicy(max_batch=4, max_wait_ms=1))
    p.start(warmup=False)
    try:
        wait_for(lambda: p._prepared.qsize() == _READ_AHEAD, 10, "the read-ahead to fill")
        time.sleep(0.5)  # what must not happen: one more batch formed and held by preprocessing
        assert len(prepared) == 1 + _READ_AHEAD  # one in the (held) forward pass, the rest waiting
    finally:
        gate.set()
        p.close()


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
    summary = p.summary()
    assert summary["sources"]["cam"]["frames_out"] == summary["sources"]["cam"]["frames_decoded"] == 6
    assert summary["replaced"]["cam"] == {"sessions": 1, "frames_decoded": 10, "frames_out": 10, "drops": {}}
    assert summary["frames"] == 16
