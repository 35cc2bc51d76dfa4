"""Builds a :class:`~autotimm_stream.pipeline.Pipeline` from a :class:`RunConfig`, validating
everything before writing anything, and writes what a run leaves behind (report, summary)."""

from __future__ import annotations

import json
import logging
import os
import threading

import cv2

from ..config import (
    CameraSourceConfig,
    FileSourceConfig,
    FolderSourceConfig,
    RtspSourceConfig,
    RunConfig,
    SourceConfig,
    TestSourceConfig,
    UrlSourceConfig,
    validate_source,
)
from ..errors import SinkError, SourceError
from ..fileio import write_bytes_atomic
from ..pipeline import Pipeline
from ..postprocess import Postprocessor
from ..ringbuffer import RingBuffer
from ..runtime.runner import ModelRunner
from ..sinks import JsonlSink, MetricsSink, ReportSink, Sink, SnapshotSink, VideoSink, ZmqSink
from ..sinks.snapshot import check_classes
from ..sources import FileSource, FolderSource, LiveSource, Source, StreamSpec, camera_spec, rtsp_spec, testsrc_spec
from ..stats import PipelineStats
from .control import ControlServer
from .http import MetricsServer

__all__ = ["build_pipeline", "build_source", "build_sources", "build_sinks", "write_report", "write_summary"]

_logger = logging.getLogger(__name__)


def build_source(sc: SourceConfig, bell: threading.Condition, model_on_cpu: bool = True) -> Source:
    """One source from its config (``sources[i]``), its buffer ringing ``bell``; not yet opened."""
    buffer = RingBuffer(sc.buffer_size, sc.policy, bell, max_staleness_ms=sc.max_staleness_ms)
    if isinstance(sc, FileSourceConfig):
        # on the CPU every core-ms of decoding is taken from the model, and one decoder thread per
        # source costs less CPU per frame than FFmpeg's frame threading; on a GPU FFmpeg chooses
        auto_threads = 1 if model_on_cpu else 0
        threads = auto_threads if sc.decode_threads is None else sc.decode_threads
        return FileSource(
            sc.id, sc.uri, buffer, decode_threads=threads, realtime=sc.realtime, color_conversion=sc.color_conversion
        )
    if isinstance(sc, FolderSourceConfig):
        return FolderSource(sc.id, sc.uri, buffer, pattern=sc.pattern, fps=sc.fps, realtime=sc.realtime)
    spec: StreamSpec
    if isinstance(sc, RtspSourceConfig):
        spec = rtsp_spec(sc.uri, sc.transport)
    elif isinstance(sc, UrlSourceConfig):
        spec = StreamSpec(sc.uri, live=sc.live, realtime=sc.realtime)
    elif isinstance(sc, CameraSourceConfig):
        spec = camera_spec(sc.device, sc.width, sc.height, sc.fps, sc.input_format)
    elif isinstance(sc, TestSourceConfig):
        spec = testsrc_spec(sc.width, sc.height, sc.fps, sc.pattern)
    else:  # the config's discriminator makes this unreachable
        raise TypeError(f"unknown source config {type(sc).__name__}")
    return LiveSource(sc.id, spec, buffer, sc)


def build_sources(cfg: RunConfig, model_on_cpu: bool = True) -> list[Source]:
    """Create and open every source, sharing one bell (raises SourceError on the first bad one).

    Live sources only check what can be checked offline (a camera device exists): a stream that
    is down at start-up is retried by its own thread, it does not stop the pipeline.
    """
    if model_on_cpu:
        # OpenCV's colour conversion pool woke on every frame and slowed the model; each source
        # thread converts its own frames
        cv2.setNumThreads(1)
    bell = threading.Condition()
    sources: list[Source] = []
    try:
        for i, sc in enumerate(cfg.sources):
            src = build_source(sc, bell, model_on_cpu)
            sources.append(src)
            try:
                src.open()
            except SourceError as exc:
                field = "device" if isinstance(sc, CameraSourceConfig) else "uri"
                raise SourceError(f"sources[{i}].{field}: {exc}") from None
    except BaseException:
        for s in sources:
            s.close()
        raise
    return sources


def build_sinks(cfg: RunConfig, sources: list[Source]) -> list[Sink]:
    """The configured sinks; the ZMQ sink comes first because binding is what most often fails."""
    out = cfg.output_dir
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"output_dir: cannot create {out!r} ({exc.strerror}); pick a writable folder") from None
    sinks: list[Sink] = []
    s = cfg.sinks
    if s.zmq.enabled:
        sinks.append(ZmqSink(s.zmq))
    if s.jsonl.enabled:
        sinks.append(JsonlSink(os.path.join(out, s.jsonl.filename)))
    if s.video.enabled:
        fps = {src.source_id: src.info.fps if src.info else None for src in sources}
        several = len(sources) > 1 or cfg.control.enabled  # more may be added
        sinks.append(VideoSink(os.path.join(out, s.video.filename), s.video, several_sources=several, fps=fps))
    if s.snapshot.enabled:
        sinks.append(SnapshotSink(os.path.join(out, s.snapshot.folder), s.snapshot))
    if s.report.enabled:
        sinks.append(ReportSink(s.report))
    if cfg.metrics.enabled:
        sinks.append(MetricsSink())
    return sinks


def build_pipeline(cfg: RunConfig, stop: threading.Event | None = None) -> Pipeline:
    """Load the model, open the sources, prepare the sinks. Nothing is written before all succeed."""
    m = cfg.model
    runner = ModelRunner(
        m.path,
        device=m.device,
        precision=m.precision,
        fp16=m.fp16,
        channels_last=m.channels_last,
        threads=m.threads,
        fidelity=m.fidelity,
        resize_on=m.resize_on,
    )
    if cfg.sinks.snapshot.enabled:  # a misspelt class fails now, before anything is opened or written
        check_classes(cfg.sinks.snapshot.classes, runner.meta.class_names)
    on_cpu = runner.device.type == "cpu"
    sources = build_sources(cfg, model_on_cpu=on_cpu)
    try:
        sinks = build_sinks(cfg, sources)
    except BaseException:
        for src in sources:
            src.close()
        raise
    pipeline = Pipeline(
        sources,
        runner,
        sinks,
        cfg.batching,
        stop=stop,
        postprocessor=Postprocessor(runner.meta, top_k=m.top_k, threshold=m.threshold),
        drain_timeout_s=cfg.drain_timeout_s,
        persistent=cfg.control.enabled,
    )
    try:
        if cfg.metrics.enabled:
            metrics_sink = next(s for s in sinks if isinstance(s, MetricsSink))
            server = MetricsServer(pipeline, metrics_sink, cfg.metrics.host, cfg.metrics.port)
            server.open()  # bind now: a busy port fails the run before anything is written
            pipeline.attach(server)
        if cfg.control.enabled:

            def make_source(config: object) -> Source:  # sources added at run time are built like the config's
                return build_source(validate_source(config, origin="add: source"), pipeline.bell, on_cpu)

            control = ControlServer(pipeline, make_source, cfg.control.endpoint)
            control.open()
            pipeline.attach(control)
    except BaseException:
        for svc in pipeline.services:
            svc.close()
        for src in sources:
            src.close()
        raise
    return pipeline


def write_report(pipeline: Pipeline, stats: PipelineStats, output_dir: str) -> str | None:
    """Render the run report if a ReportSink ran; returns its path. A failed report is logged, never fatal."""
    for sink in pipeline.sinks:
        if isinstance(sink, ReportSink):
            try:
                return sink.render(output_dir, stats)
            except Exception as exc:  # results are already written; a plot must not fail the run
                _logger.error("report: could not write it into %s: %s", output_dir, exc)
    return None


def write_summary(stats: PipelineStats, output_dir: str) -> str:
    """Write the run summary as ``summary.json`` in ``output_dir``; returns its path."""
    path = os.path.join(output_dir, "summary.json")
    write_bytes_atomic(path, json.dumps(stats.to_json(), indent=1).encode("utf-8"))
    return path
