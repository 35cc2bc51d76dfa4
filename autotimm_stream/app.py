"""Builds a :class:`Pipeline` from a :class:`RunConfig`, validating everything before writing anything."""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import cv2

from .batching import BatchPolicy
from .config import RunConfig, validate_source
from .control import ControlServer
from .errors import ConfigError, SinkError, SourceError
from .fileio import write_bytes_atomic
from .metrics import MetricsServer, MetricsSink
from .pipeline import Pipeline
from .postprocess import Postprocessor
from .report import ReportSink
from .ringbuffer import RingBuffer
from .runtime.runner import ModelRunner
from .sinks import JsonlSink, Sink, SnapshotSink, VideoSink, ZmqSink
from .sinks.snapshot import check_classes
from .sources import (
    FileSource,
    FolderSource,
    LiveSource,
    ReconnectPolicy,
    Source,
    StreamSpec,
    camera_spec,
    rtsp_spec,
    testsrc_spec,
)

__all__ = ["build_pipeline", "build_source", "write_report", "write_summary"]

_logger = logging.getLogger(__name__)


def build_source(sc: Any, bell: threading.Condition, stop: threading.Event, model_on_cpu: bool = True) -> Source:
    """One source from its config (``sources[i]``), not yet opened."""
    buffer = RingBuffer(sc.buffer_size, sc.policy, bell, max_staleness_ms=sc.max_staleness_ms)
    if sc.type == "file":
        # When the model runs on the CPU, every core-ms spent decoding is taken from the model, and
        # one decoder thread per source costs ~25 % less CPU per frame than FFmpeg's frame
        # threading; on a GPU the CPU is free for decoding, so FFmpeg chooses.
        auto_threads = 1 if model_on_cpu else 0
        threads = auto_threads if sc.decode_threads is None else sc.decode_threads
        return FileSource(sc.id, sc.uri, buffer, stop, decode_threads=threads, realtime=sc.realtime)
    if sc.type == "folder":
        return FolderSource(sc.id, sc.uri, buffer, stop, pattern=sc.pattern, fps=sc.fps, realtime=sc.realtime)
    if sc.type == "rtsp":
        spec = rtsp_spec(sc.uri, sc.transport)
    elif sc.type == "url":
        spec = StreamSpec(sc.uri, live=sc.live, realtime=sc.realtime)
    elif sc.type == "camera":
        spec = camera_spec(sc.device, sc.width, sc.height, sc.fps, sc.input_format)
    elif sc.type == "testsrc":
        spec = testsrc_spec(sc.width, sc.height, sc.fps, sc.pattern)
    else:  # the config's discriminator makes this unreachable
        raise ConfigError(f"unknown source type {sc.type!r}")
    r = sc.reconnect
    return LiveSource(
        sc.id,
        spec,
        buffer,
        stop,
        reconnect=ReconnectPolicy(r.initial_delay_s, r.max_delay_s, r.multiplier, r.jitter, r.max_attempts),
        open_timeout_s=sc.open_timeout_s,
        stall_frames=sc.stall_frames,
        min_stall_s=sc.min_stall_s,
        skip_until_keyframe=sc.skip_until_keyframe,
        decode_threads=sc.decode_threads,
    )


def build_sources(cfg: RunConfig, stop: threading.Event, model_on_cpu: bool = True) -> list[Source]:
    """Create and open every source (raises SourceError on the first bad one).

    Live sources only check what can be checked offline (a camera device exists): a stream that
    is down at start-up is retried by its own thread, it does not stop the pipeline.
    """
    if model_on_cpu:
        # OpenCV's colour conversion pool woke on every frame and cost the model ~4 % (paired A/B,
        # 4 rounds); each source thread converts its own frames.
        cv2.setNumThreads(1)
    bell = threading.Condition()
    sources: list[Source] = []
    try:
        for i, sc in enumerate(cfg.sources):
            src = build_source(sc, bell, stop, model_on_cpu)
            sources.append(src)
            try:
                src.open()
            except SourceError as exc:
                field = "uri" if hasattr(sc, "uri") else "device"
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
        z = s.zmq
        sinks.append(
            ZmqSink(
                z.endpoint,
                mode=z.mode,
                hwm=z.hwm,
                wait_subscribers=z.wait_subscribers,
                wait_timeout_s=z.wait_timeout_s,
                mask_encoding=z.mask_encoding,
                heartbeat_s=z.heartbeat_s,
                curve_secret_key=z.curve.secret_key,
                curve_clients_dir=z.curve.clients_dir,
            )
        )
    if s.jsonl.enabled:
        sinks.append(JsonlSink(os.path.join(out, s.jsonl.filename)))
    if s.video.enabled:
        fps = {src.source_id: src.info.fps if src.info else None for src in sources}
        sinks.append(
            VideoSink(
                os.path.join(out, s.video.filename),
                several_sources=len(sources) > 1 or cfg.control.enabled,  # more may be added
                fps=fps,
                crf=s.video.crf,
                preset=s.video.preset,
            )
        )
    if s.snapshot.enabled:
        sn = s.snapshot
        sinks.append(
            SnapshotSink(
                os.path.join(out, sn.folder),
                sn.classes,
                min_score=sn.min_score,
                min_fraction=sn.min_fraction,
                cooldown_s=sn.cooldown_s,
                annotated=sn.annotated,
                max_files=sn.max_files,
                quality=sn.quality,
            )
        )
    if s.report.enabled:
        sinks.append(ReportSink(bucket_s=s.report.bucket_s, max_buckets=s.report.max_buckets))
    if cfg.metrics.enabled:
        sinks.append(MetricsSink())
    return sinks


def build_pipeline(cfg: RunConfig, stop: threading.Event | None = None) -> Pipeline:
    """Load the model, open the sources, prepare the sinks. Nothing is written before all succeed."""
    stop = stop or threading.Event()
    m = cfg.model
    runner = ModelRunner(m.path, device=m.device, fp16=m.fp16, channels_last=m.channels_last, threads=m.threads)
    if cfg.sinks.snapshot.enabled:  # a misspelt class fails now, before anything is opened or written
        check_classes(cfg.sinks.snapshot.classes, runner.meta.class_names)
    sources = build_sources(cfg, stop, model_on_cpu=runner.device.type == "cpu")
    try:
        sinks = build_sinks(cfg, sources)
    except BaseException:
        for src in sources:
            src.close()
        raise
    post = Postprocessor(runner.meta, top_k=m.top_k, threshold=m.threshold)
    b = cfg.batching
    pipeline = Pipeline(
        sources,
        runner,
        sinks,
        BatchPolicy(b.max_batch, b.max_wait_ms, b.max_frames_per_source),
        stop=stop,
        postprocessor=post,
        drain_timeout_s=cfg.drain_timeout_s,
        prep_threads=b.prep_threads,
        persistent=cfg.control.enabled,
        support_priority=b.support_priority,
    )
    for sink in sinks:
        if isinstance(sink, ZmqSink):
            sink.heartbeat = pipeline.heartbeat
    try:
        if cfg.metrics.enabled:
            metrics_sink = next(s for s in sinks if isinstance(s, MetricsSink))
            server = MetricsServer(pipeline, metrics_sink, cfg.metrics.host, cfg.metrics.port)
            server.open()  # bind now: a busy port fails the run before anything is written
            pipeline.attach(server)
        if cfg.control.enabled:
            _attach_control(cfg, pipeline, runner.device.type == "cpu")
    except BaseException:
        for svc in pipeline.services:
            svc.close()
        for src in sources:
            src.close()
        raise
    return pipeline


def _attach_control(cfg: RunConfig, pipeline: Pipeline, on_cpu: bool) -> None:
    """The control channel: sources added at run time are built like the config's."""

    def make_source(config: dict[str, Any]) -> Source:
        sc = validate_source(config, origin="add: source")
        return build_source(sc, pipeline.bell, pipeline.stop_event, on_cpu)

    control = ControlServer(pipeline, make_source, cfg.control.endpoint)
    control.open()
    pipeline.attach(control)


def write_report(pipeline: Pipeline, summary: dict[str, Any], output_dir: str) -> str | None:
    """Render the run report if a ReportSink ran; returns its path. A failed report is logged, never fatal."""
    for sink in pipeline.sinks:
        if isinstance(sink, ReportSink):
            try:
                return sink.render(output_dir, summary)
            except Exception as exc:  # results are already written; a plot must not fail the run
                _logger.error("report: could not write it into %s: %s", output_dir, exc)
    return None


def write_summary(summary: dict, output_dir: str) -> str:
    """Write the run summary as ``summary.json`` in ``output_dir``; returns its path."""
    path = os.path.join(output_dir, "summary.json")
    write_bytes_atomic(path, json.dumps(summary, indent=1).encode("utf-8"))
    return path
