"""The JSONL sink: lines reach the file within about a second, and closing never leaks or misreports."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from autotimm_stream.errors import SinkError
from autotimm_stream.frame import Frame
from autotimm_stream.messages import Prediction, Result
from autotimm_stream.sinks.base import SinkRunner
from autotimm_stream.sinks.jsonl import JsonlSink
from tests.helpers import wait_for


def result(index: int) -> Result:
    f = Frame("cam", index, index / 25, 0, np.zeros((2, 2, 3), np.uint8))
    return Result(frame=f, task="classification", classes=[Prediction(0, "a", 0.5)])


def complete_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def test_the_last_lines_reach_the_file_when_results_stop_coming(tmp_path):
    """Results 1 and 2 come right after a flush, then nothing: the runner's ticks flush them within
    about a second, without waiting for a next result or the close."""
    path = tmp_path / "p.jsonl"
    halt = threading.Event()
    sink = JsonlSink(path)
    sink.open()
    runner = SinkRunner(sink, halt)
    runner.start()
    try:
        assert runner.submit([result(0)]) and runner.submit([result(1), result(2)])
        wait_for(lambda: len(complete_lines(path)) == 3, 5, "the last 2 lines to be flushed by tick()")
        assert [r["frame_index"] for r in complete_lines(path)] == [0, 1, 2]
    finally:
        runner.finish()
        assert runner.join(5)
    assert runner.error is None


def _fifo(tmp_path: Path) -> tuple[str, int]:
    path = str(tmp_path / "p.fifo")
    os.mkfifo(path)
    return path, os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the sink can open it


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_failed_close_releases_the_file_and_says_why():
    sink = JsonlSink("/dev/full")  # every write that reaches it fails with ENOSPC
    sink.open()
    fh = sink._fh
    assert fh is not None
    fh.write("{}\n")  # in Python's buffer: the close's flush is what fails
    with pytest.raises(OSError) as failed:  # SinkError is an OSError too
        sink.close()
    assert fh.closed and sink._fh is None  # the descriptor is released, not leaked
    assert isinstance(failed.value, SinkError)
    assert "sinks.jsonl: cannot finish '/dev/full' (No space left on device)" in str(failed.value)
    sink.close()  # idempotent


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("n", [1, 2000], ids=["in-the-flush", "in-the-write"])
def test_a_failed_write_says_why(n):
    """A full disk while results come in (one result: its timed flush fails; many: Python's buffer
    overflows inside write()) is a SinkError naming the file and the fix, not a bare OSError."""
    sink = JsonlSink("/dev/full")
    sink.open()
    try:
        with pytest.raises(OSError) as failed:  # SinkError is an OSError too
            sink.write([result(i) for i in range(n)])
        assert isinstance(failed.value, SinkError), repr(failed.value)
        message = str(failed.value)
        assert message.startswith("sinks.jsonl: cannot write to '/dev/full' (No space left on device)"), message
        assert "pick another output_dir" in message
    finally:
        with contextlib.suppress(SinkError):
            sink.close()
    assert sink._fh is None


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_sink_runner_reports_a_failed_write_as_a_sink_error():
    sink = JsonlSink("/dev/full")
    sink.open()
    runner = SinkRunner(sink, threading.Event())
    runner.start()
    runner.submit([result(0)])
    runner.finish()
    assert runner.join(5)
    assert isinstance(runner.error, SinkError), repr(runner.error)
    assert "sinks.jsonl: cannot write to '/dev/full'" in str(runner.error)


def test_a_fifo_is_closed_without_fsync_and_gets_every_line(tmp_path):
    """fsync on a FIFO (or a pipe behind /dev/stdout) fails with EINVAL: a run that delivered every
    line must not end as a failed sink."""
    path, reader = _fifo(tmp_path)
    try:
        sink = JsonlSink(path)
        sink.open()
        runner = SinkRunner(sink, threading.Event())
        runner.start()
        assert runner.submit([result(0), result(1)])
        runner.finish()
        assert runner.join(5)
        assert runner.error is None
        got = os.read(reader, 1 << 16).split(b"\n")
        assert [json.loads(line)["frame_index"] for line in got[:-1]] == [0, 1] and got[-1] == b""
    finally:
        os.close(reader)


def test_close_syncs_a_regular_file_and_is_idempotent(tmp_path):
    path = tmp_path / "p.jsonl"
    sink = JsonlSink(path)
    with sink:
        sink.write([result(0)])
        sink.write([result(1)])
    sink.close()
    assert [r["frame_index"] for r in complete_lines(path)] == [0, 1]
    assert sink.stats() == {"lines": 2, "path": str(path)}
