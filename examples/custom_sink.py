"""A custom sink: count detected objects per class and print an alert when a watched class appears.

Run: python examples/custom_sink.py [VIDEO] [--alert triangle] [--min-score 0.5] [--out sink_out]

A sink subclasses ``autotimm_stream.sinks.Sink``; the pipeline calls ``write`` on the sink's own
thread with each batch of results, in frame order per source, so a slow sink never stalls the model.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

from autotimm_stream.app import build_sinks, build_sources
from autotimm_stream.app.demo import demo_bundle_path
from autotimm_stream.config import validate_config
from autotimm_stream.messages import EndOfStream, Result
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.sinks import Sink
from autotimm_stream.synthetic import write_clip


class ClassCounter(Sink):
    name = "class_counter"  # its stats() appear under sinks.class_counter in the run summary

    def __init__(self, alert: set[str], min_score: float = 0.5):
        self.alert, self.min_score = alert, min_score
        self.objects: Counter[str] = Counter()
        self.frames = 0
        self.last: dict[str, set[str]] = {}  # per source: the classes in its previous frame

    def write(self, results: list[Result]) -> None:
        for r in results:  # r.task is Task.DETECTION here; classifiers fill r.classes, segmentors r.mask
            labels = [d.label for d in r.detections if d.score >= self.min_score]
            self.frames += 1
            self.objects.update(labels)
            for label in sorted((set(labels) - self.last.get(r.source_id, set())) & self.alert):
                print(f"ALERT {r.source_id} #{r.index} t={r.frame.pts or 0:.2f}s: {label} appeared", flush=True)
            self.last[r.source_id] = set(labels)

    def end_of_stream(self, eos: EndOfStream) -> None:
        print(f"{eos.source_id}: end of stream after {eos.frames} frames ({eos.reason})", flush=True)

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "objects": dict(self.objects)}

    def summary_lines(self) -> list[str]:
        counts = ", ".join(f"{k} {n}" for k, n in self.objects.most_common()) or "none"
        return [f"class_counter: {self.frames} frames, objects: {counts}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="a video file (default: a generated clip)")
    parser.add_argument("--alert", action="append", default=[], help="class to alert on (repeatable; default: all)")
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("--out", default="sink_out", help="output folder (default: sink_out)")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    video = args.video or write_clip(os.path.join(args.out, "clip.mp4"), frames=50, seed=7, dominant=False)
    off = {"enabled": False}
    cfg = validate_config(
        {
            "sources": [{"id": "cam1", "type": "file", "uri": video}],
            "model": {"path": demo_bundle_path()},
            "sinks": {"zmq": off, "video": off, "report": off},  # the built-in JSONL sink stays on
            "output_dir": args.out,
        }
    )
    # The parts build_pipeline(cfg) would assemble, with one more sink beside the configured ones.
    runner = ModelRunner(cfg.model.path, device=cfg.model.device)
    if unknown := set(args.alert) - set(runner.meta.class_names):
        parser.error(f"--alert: unknown classes {sorted(unknown)}; the model knows {runner.meta.class_names}")
    counter = ClassCounter(set(args.alert or runner.meta.class_names), args.min_score)
    sources = build_sources(cfg)
    stats = Pipeline(sources, runner, [*build_sinks(cfg, sources), counter], cfg.batching).run()
    print("\n".join(counter.summary_lines()))
    print(f"pipeline: {stats.frames} frames, {stats.fps:.1f} fps; summary entry: {stats.to_json()['sinks']}")
    return 1 if stats.error else 0


if __name__ == "__main__":
    raise SystemExit(main())
