"""Support threads yield the CPU to the model on file runs, and only there (autotimm_stream.priority)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from autotimm_stream.app import build_sources
from autotimm_stream.config import BatchPolicy, validate_config
from autotimm_stream.messages import Result
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.priority import BACKGROUND_NICE, lower_this_thread, thread_nice
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks.base import Sink

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def nice_of(thread: threading.Thread) -> int:
    """A live thread's nice value, read by the kernel's account (field 19 of /proc/<pid>/task/<tid>/stat)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


class NiceProbe(Sink):
    """Records, on the sink's own thread, its nice value and the capture threads' while they run.

    Sources get a 4-frame buffer so their threads are still decoding (blocked on it) when results arrive.
    """

    name = "probe"

    def __init__(self, pipeline_sources: list) -> None:
        self.sources = pipeline_sources
        self.sink_nice: set[int] = set()
        self.source_nice: dict[str, set[int]] = {}
        self.frames = 0

    def write(self, results: list[Result]) -> None:
        self.frames += len(results)
        self.sink_nice.add(thread_nice())
        for s in self.sources:
            t = s._thread
            if t is not None and t.is_alive():
                try:
                    self.source_nice.setdefault(s.source_id, set()).add(nice_of(t))
                except (FileNotFoundError, ProcessLookupError):  # ended between the check and the read
                    pass


def run_probe(
    bundle: Path, sources: list[dict], priority: str = "auto", frames: int | None = None
) -> tuple[dict, NiceProbe]:
    cfg = validate_config({"sources": sources, "model": {"path": str(bundle)}})
    stop = threading.Event()
    srcs = build_sources(cfg)
    probe = NiceProbe(srcs)
    policy = BatchPolicy(max_batch=4, max_wait_ms=5, support_priority=priority)
    pipeline = Pipeline(srcs, ModelRunner(bundle), [probe], policy, stop=stop)
    pipeline.start(warmup=False)
    try:
        while not pipeline.wait(0.1):
            if frames is not None and probe.frames >= frames:  # live sources never end
                stop.set()
    finally:
        pipeline.close()
    assert pipeline.error is None, pipeline.error
    return pipeline.summary(), probe


def test_a_file_run_puts_decode_and_sinks_below_the_model(clip, bundle):
    summary, probe = run_probe(bundle, [{"id": "cam", "uri": str(clip), "buffer_size": 4}])
    assert summary["support_priority"] == "low"
    assert summary["frames"] == 48  # nothing lost: a lower priority is not a lower guarantee
    assert probe.sink_nice == {BACKGROUND_NICE}
    assert probe.source_nice["cam"] == {BACKGROUND_NICE}
    assert thread_nice() == 0  # the caller's (and so the model's) priority is untouched


def test_a_live_source_keeps_every_thread_at_normal_priority(clip, bundle):
    sources = [
        {"id": "file", "uri": str(clip), "buffer_size": 4},
        {"id": "pattern", "type": "testsrc", "width": 96, "height": 64},
    ]
    summary, probe = run_probe(bundle, sources, frames=48)
    assert summary["support_priority"] == "normal"
    assert probe.sink_nice == {0}
    assert probe.source_nice["pattern"] == {0}
    assert probe.source_nice["file"] == {BACKGROUND_NICE}  # the file alone still yields: it has no clock


def test_a_paced_file_is_live_and_normal_can_be_forced(clip, bundle):
    summary, probe = run_probe(bundle, [{"id": "cam", "uri": str(clip), "buffer_size": 4, "realtime": True}], frames=8)
    assert summary["support_priority"] == "normal" and probe.source_nice["cam"] == {0}
    summary, probe = run_probe(bundle, [{"id": "cam", "uri": str(clip), "buffer_size": 4}], priority="normal")
    assert summary["support_priority"] == "normal" and probe.sink_nice == {0} and probe.source_nice["cam"] == {0}


def test_low_can_be_forced_on_a_live_run(bundle):
    summary, probe = run_probe(bundle, [{"id": "pattern", "type": "testsrc", "width": 96, "height": 64}], "low", 8)
    assert summary["support_priority"] == "low"
    assert probe.sink_nice == {BACKGROUND_NICE} and probe.source_nice["pattern"] == {BACKGROUND_NICE}


def test_lowering_is_idempotent_and_never_raises_priority():
    seen: list[int | None] = []

    def target() -> None:
        assert lower_this_thread(5)
        seen.append(thread_nice())
        assert lower_this_thread(3)  # already lower than asked: left as is
        seen.append(thread_nice())

    t = threading.Thread(target=target)
    t.start()
    t.join(5)
    assert seen == [5, 5]


def test_an_unknown_priority_is_refused(bundle):
    with pytest.raises(ValueError, match=r"support_priority\n.*'auto', 'low' or 'normal'"):
        BatchPolicy(support_priority="high")
    with pytest.raises(Exception, match="support_priority"):
        validate_config({"sources": [{"id": "a", "uri": "x.mp4"}], "batching": {"support_priority": "high"}})
