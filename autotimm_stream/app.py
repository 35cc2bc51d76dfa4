"""Builds a :class:`Pipeline` from a :class:`RunConfig`, validating everything before writing anything."""

from __future__ import annotations

import json
import logging
import os
import threading

import cv2

from .batching import BatchPolicy
from .config import RunConfig
from .errors import SinkError, SourceError
from .pipeline import Pipeline
from .postprocess import Postprocessor
from .ringbuffer import RingBuffer
from .runtime.runner import ModelRunner
from .sinks import JsonlSink, Sink, VideoSink, ZmqSink
from .sources import FileSource, Source

__all__ = ["build_pipeline", "write_summary"]

_logger = logging.getLogger(__name__)


def build_sources(cfg: RunConfig, stop: threading.Event, model_on_cpu: bool = True) -> list[Source]:
    """Create and open every source (raises SourceError on the first bad one).

    When the model runs on the CPU, every core-ms spent decoding is taken from the model, and one
    decoder thread per source costs ~25 % less CPU per frame than FFmpeg's frame threading; on a
    GPU the CPU is free for decoding, so FFmpeg chooses.
    """
    auto_threads = 1 if model_on_cpu else 0
    if model_on_cpu:
        # Same reasoning for OpenCV's colour conversion: its 2-thread pool woke on every frame and
        # cost the model ~4 % (paired A/B, 4 rounds); each source thread converts its own frames.
        cv2.setNumThreads(1)
    bell = threading.Condition()
    sources: list[Source] = []
    try:
        for i, sc in enumerate(cfg.sources):
            src = FileSource(
                sc.id,
                sc.uri,
                RingBuffer(sc.buffer_size, sc.policy, bell),
                stop,
                decode_threads=auto_threads if sc.decode_threads is None else sc.decode_threads,
                realtime=sc.realtime,
            )
            sources.append(src)
            try:
                src.open()
            except SourceError as exc:
                raise SourceError(f"sources[{i}].uri: {exc}") from None
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
        sinks.append(
            ZmqSink(
                s.zmq.endpoint,
                hwm=s.zmq.hwm,
                wait_subscribers=s.zmq.wait_subscribers,
                wait_timeout_s=s.zmq.wait_timeout_s,
            )
        )
    if s.jsonl.enabled:
        sinks.append(JsonlSink(os.path.join(out, s.jsonl.filename)))
    if s.video.enabled:
        fps = {src.source_id: src.info.fps if src.info else None for src in sources}
        sinks.append(
            VideoSink(
                os.path.join(out, s.video.filename),
                several_sources=len(sources) > 1,
                fps=fps,
                crf=s.video.crf,
                preset=s.video.preset,
            )
        )
    return sinks


def build_pipeline(cfg: RunConfig, stop: threading.Event | None = None) -> Pipeline:
    """Load the model, open the sources, prepare the sinks. Nothing is written before all succeed."""
    stop = stop or threading.Event()
    m = cfg.model
    runner = ModelRunner(m.path, device=m.device, fp16=m.fp16, channels_last=m.channels_last, threads=m.threads)
    sources = build_sources(cfg, stop, model_on_cpu=runner.device.type == "cpu")
    try:
        sinks = build_sinks(cfg, sources)
    except BaseException:
        for src in sources:
            src.close()
        raise
    post = Postprocessor(runner.meta, top_k=m.top_k, threshold=m.threshold)
    b = cfg.batching
    return Pipeline(
        sources,
        runner,
        sinks,
        BatchPolicy(b.max_batch, b.max_wait_ms, b.max_frames_per_source),
        stop=stop,
        postprocessor=post,
        drain_timeout_s=cfg.drain_timeout_s,
        prep_threads=b.prep_threads,
    )


def write_summary(summary: dict, output_dir: str) -> str:
    """Write the run summary as ``summary.json`` in ``output_dir``; returns its path."""
    path = os.path.join(output_dir, "summary.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(tmp, path)
    return path
