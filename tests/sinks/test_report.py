"""The run report: bucket maths on hand-made results, then a real pipeline's report on disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotimm_stream.app import build_sources
from autotimm_stream.config import BatchPolicy, ReportConfig, validate_config
from autotimm_stream.frame import Frame
from autotimm_stream.messages import ClassFraction, Detection, EndOfStream, Prediction, Result, SourceState, StatusEvent
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks.report import LABELS_PER_BUCKET, REPORT_FILES, ReportSink
from autotimm_stream.synthetic import write_clip

_IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)  # shared: the report never looks at pixels
NAMES = ["circle", "square", "triangle"]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def result(source: str, index: int, task: str = "detection", latency_ms: float = 20.0, labels=("circle",)) -> Result:
    frame = Frame(source_id=source, index=index, pts=None, capture_ns=0, image=_IMAGE, enqueued_ns=10**9)
    done_ns = 10**9 + int(latency_ms * 1e6)
    if task == "detection":
        dets = [Detection((0.0, 0.0, 1.0, 1.0), NAMES.index(n) if n in NAMES else 0, n, 0.9) for n in labels]
        return Result(frame=frame, task=task, detections=dets, done_ns=done_ns, model="m")
    if task == "segmentation":
        fractions = [
            ClassFraction(0, "background", 0.7),
            ClassFraction(1, "circle", 0.2),
            ClassFraction(2, "square", 0.1),
        ]
        return Result(frame=frame, task=task, class_fractions=fractions, done_ns=done_ns, model="m")
    preds = [Prediction(NAMES.index(n), n, 0.9) for n in labels]
    return Result(frame=frame, task=task, classes=preds, done_ns=done_ns, model="m")


def feed(sink: ReportSink, clock: Clock, rows: list[tuple[float, Result]], start: float = 100.0) -> None:
    """Hand each result to the sink at its time (seconds after ``start``)."""
    for t, r in rows:
        clock.t = start + t
        sink.write([r])


def test_fps_per_bucket_including_partial_first_and_last_buckets():
    clock = Clock()
    sink = ReportSink(clock=clock)
    rows = [(i / 10, result("a", i)) for i in range(50)]  # 10 fps over [0, 5)
    rows += [(2.3 + i / 20, result("b", i)) for i in range(40)]  # 20 fps over [2.3, 4.3)
    rows += [(4.5 + i / 10, result("c", i)) for i in range(3)]  # 0.3 s: shorter than a bucket
    feed(sink, clock, sorted(rows, key=lambda tr: tr[0]))
    starts, fps, drops = sink.rates("a")
    assert starts.tolist() == [0, 1, 2, 3, 4]
    assert fps == pytest.approx([10] * 5)
    assert drops.tolist() == [0] * 5
    starts, fps, _ = sink.rates("b")
    assert starts.tolist() == [2, 3, 4]
    # 2.3-3.0 (0.7 s, 14 frames) and 3.0-4.0 are rated; 4.0-4.3 is under half a bucket: not plotted
    assert fps[:2] == pytest.approx([20, 20]) and np.isnan(fps[2])
    assert [b.frames for _, b in sink.buckets("b")] == [14, 20, 6]
    assert sink.rates("c")[1] == pytest.approx([10])  # rated over its own span


def test_fps_of_results_that_arrive_a_batch_at_a_time(tmp_path):
    # 8 results a second, delivered as one batch of 8 each second for 4 s: 8 fps, not 10.3
    clock = Clock()
    sink = ReportSink(clock=clock)
    for sec in range(4):
        clock.t = 100.0 + sec
        sink.write([result("cam", 8 * sec + j) for j in range(8)])
    md = Path(sink.render(str(tmp_path))).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| cam "))
    assert row.split(" | ")[3] == "8.0"


def test_index_gaps_are_counted_as_drops_in_their_bucket():
    clock = Clock()
    sink = ReportSink(clock=clock)
    indices = [3, 4, 5, 9, 10, 0, 1, 2]  # 3 lost before the first result, 3 in a gap, then the source restarts
    feed(sink, clock, [(0.5 * i, result("cam", idx)) for i, idx in enumerate(indices)])
    assert [(s, b.frames, b.dropped) for s, b in sink.buckets("cam")] == [(0, 2, 3), (1, 2, 3), (2, 2, 0), (3, 2, 0)]
    starts, _, drops = sink.rates("cam")
    assert drops[1] == pytest.approx(3.0)  # per second, in the bucket of the first frame after the gap


@pytest.mark.parametrize("max_buckets", [50, 3600])
def test_merging_buckets_keeps_totals_exact_and_memory_bounded(max_buckets):
    clock = Clock()
    sink = ReportSink(ReportConfig(max_buckets=max_buckets), clock=clock, reservoir=512)
    n, kept, dropped = 100_000, 0, 0
    for i in range(n):  # 25 fps for 4000 s; every 10th frame is lost before inference
        if i % 10 == 9:
            dropped += 1
            continue
        clock.t = i / 25
        sink.write([result("cam", i, latency_ms=float(i % 100), labels=("circle", "square")[: 1 + i % 2])])
        kept += 1
    rows = sink.buckets("cam")
    assert len(rows) <= max_buckets
    assert sink.bucket_s == 2 ** int(np.ceil(np.log2(4000 / max_buckets)))  # doubled just enough
    assert sum(b.frames for _, b in rows) == kept == sink.frames
    assert sum(b.dropped for _, b in rows) == dropped - 1  # the last frame lost is after the last result
    assert sum(b.lat_n for _, b in rows) == kept
    assert max(b.lat_max for _, b in rows) == 98.0
    assert sum(b.out_total for _, b in rows) == sum(1 + i % 2 for i in range(n) if i % 10 != 9)
    assert len(sink._samples) == 512
    _, fps, drops = sink.rates("cam")
    assert np.nanmedian(fps) == pytest.approx(22.5) and np.nanmedian(drops) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "task, labels, expected",
    [
        ("detection", ("circle", "circle", "square"), {"circle": 4.0, "square": 2.0}),
        ("classification", ("square", "circle"), {"square": 2.0}),  # top-1 only
        ("multilabel", ("square", "circle"), {"square": 2.0, "circle": 2.0}),
        ("segmentation", (), {"background": 1.4, "circle": 0.4, "square": 0.2}),  # fraction sums over 2 frames
    ],
)
def test_outputs_per_class_per_task(task, labels, expected):
    clock = Clock()
    sink = ReportSink(clock=clock)
    feed(sink, clock, [(0.0, result("cam", 0, task, labels=labels)), (0.5, result("cam", 1, task, labels=labels))])
    [(_, bucket)] = sink.buckets("cam")
    assert bucket.outputs == pytest.approx(expected)
    assert bucket.out_total == pytest.approx(sum(expected.values()))


def test_classes_per_bucket_are_capped_but_the_total_is_exact():
    clock = Clock()
    sink = ReportSink(clock=clock)
    many = tuple(f"class_{i}" for i in range(40))
    feed(sink, clock, [(0.0, result("cam", 0, labels=many)), (2.0, result("cam", 1, labels=many[:5]))])
    first = sink.buckets("cam")[0][1]
    assert len(first.outputs) == LABELS_PER_BUCKET and first.out_total == 40
    clock.t += 10_000  # a long run: everything merges into few buckets, still capped
    sink.max_buckets = 4
    sink.write([result("cam", 2, labels=many[30:])])
    assert all(len(b.outputs) <= LABELS_PER_BUCKET for _, b in sink.buckets("cam"))
    assert sum(b.out_total for _, b in sink.buckets("cam")) == 55


def test_a_run_without_results_still_writes_a_report(tmp_path):
    sink = ReportSink()
    sink.status(StatusEvent("cam", SourceState.CONNECTING, None))
    sink.status(StatusEvent("cam", SourceState.FAILED, SourceState.CONNECTING, "unreachable"))
    sink.end_of_stream(EndOfStream("cam", 0, "error", {}))
    path = Path(sink.render(tmp_path / "out"))
    text = path.read_text()
    assert path.name == "report.md" and "No frames were inferred" in text
    assert "| cam | 0 |" in text and "failed 1" in text and "(error)" in text
    assert not list(path.parent.glob("*.png")) and not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("task", ["detection", "classification", "multilabel", "segmentation"])
def test_render_writes_every_plot_for_every_task(tmp_path, task):
    clock = Clock()
    sink = ReportSink(clock=clock)
    labels = ("circle", "square") if task != "segmentation" else ()
    rows = [(i / 10, result("long", i, task, latency_ms=10 + i % 7, labels=labels)) for i in range(60)]
    rows += [(i / 5, result("short", 2 * i, task, labels=labels[:1])) for i in range(10)]  # ends early, drops half
    rows.sort(key=lambda tr: tr[0])
    feed(sink, clock, [row for row in rows if row[0] < 2])
    clock.t = 102.0
    sink.end_of_stream(EndOfStream("short", 10, "end", {"buffer_full": 9}))
    feed(sink, clock, [row for row in rows if row[0] >= 2])
    sink.end_of_stream(EndOfStream("long", 60, "end", {}))
    text = Path(sink.render(tmp_path)).read_text()
    assert "| short | 10 |" in text and "buffer_full 9" in text and "(end at 2.0 s)" in text
    assert_linked_pngs(tmp_path, text)


def assert_linked_pngs(folder: Path, text: str) -> None:
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(linked) == sorted(REPORT_FILES.values())
    for name in linked:
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.width > 0 and im.height > 0
            assert np.asarray(im.convert("RGB")).std() > 0, name


def test_report_of_a_real_pipeline_run(clip, bundle, tmp_path):
    short = write_clip(tmp_path / "short.mp4", frames=20, width=160, height=120, fps=25, seed=4, gop=10)
    cfg = validate_config(
        {
            "sources": [{"id": "left", "uri": str(clip)}, {"id": "short", "uri": str(short)}],
            "model": {"path": str(bundle)},
            "batching": {"max_batch": 8, "max_wait_ms": 5},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}, "jsonl": {"enabled": False}},
            "output_dir": str(tmp_path / "out"),
        }
    )
    runner = ModelRunner(str(bundle))
    sink = ReportSink()
    pipeline = Pipeline(build_sources(cfg), runner, [sink], BatchPolicy(max_batch=8, max_wait_ms=5))
    stats = pipeline.run()
    assert pipeline.error is None, pipeline.error
    assert stats.frames == 68 and stats.sinks["report"]["frames"] == 68
    path = Path(sink.render(tmp_path / "out", stats))
    text = path.read_text()
    assert path == tmp_path / "out" / "report.md" and sink.stats()["path"] == str(path)
    assert "| left | 48 | 48 |" in text and "| short | 20 | 20 |" in text
    assert "classification" in text and "## Stage latency (ms)" in text and "| infer |" in text
    assert_linked_pngs(path.parent, text)
    for source in ("left", "short"):  # each stream has a rate to plot, however short the run
        assert np.nanmax(sink.rates(source)[1]) > 0
