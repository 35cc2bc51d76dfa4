"""Run a pipeline from Python: a config built as a dict, one blocking run, typed statistics back.

Run: python examples/run_pipeline.py [VIDEO] [--out run_out] [--frames 50]

Without VIDEO it writes a generated clip of moving shapes into --out first. The model is the bundled
demo detector; results go to ``<out>/predictions.jsonl`` and the run summary to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from autotimm_stream.app import build_pipeline, write_summary
from autotimm_stream.app.demo import demo_bundle_path
from autotimm_stream.config import validate_config
from autotimm_stream.synthetic import write_clip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="a video file (default: a generated clip)")
    parser.add_argument("--out", default="run_out", help="output folder (default: run_out)")
    parser.add_argument("--frames", type=int, default=50, help="length of the generated clip (default: 50)")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    video = args.video or write_clip(
        os.path.join(args.out, "clip.mp4"), frames=args.frames, width=640, height=360, fps=25, seed=7, dominant=False
    )
    # The same fields as a YAML config (configs/*.yaml); validate_config names any bad field.
    cfg = validate_config(
        {
            "sources": [{"id": "cam1", "type": "file", "uri": video}],
            "model": {"path": demo_bundle_path(), "device": "cpu"},
            "sinks": {  # JSONL only: no ZeroMQ socket, no video encoding, no report plots
                "zmq": {"enabled": False},
                "video": {"enabled": False},
                "report": {"enabled": False},
            },
            "output_dir": args.out,
        }
    )
    stats = build_pipeline(cfg).run()  # blocks until the clip ends; returns PipelineStats

    cam = stats.sources["cam1"]
    print(f"frames: {stats.frames} in {stats.elapsed_s:.2f} s = {stats.fps:.1f} fps, {stats.drops} dropped")
    print(f"cam1: {cam.frames_decoded} decoded, {cam.frames_out} results, state {cam.state}")
    for stage, s in stats.stages.items():
        print(f"  {stage:<10} mean {s.mean:6.2f} ms  p95 {s.p95:6.2f} ms")

    labels: Counter[str] = Counter()
    with open(os.path.join(args.out, "predictions.jsonl"), encoding="utf-8") as f:
        for line in f:  # one JSON record per frame
            labels.update(d["label"] for d in json.loads(line).get("detections", []))
    print("objects:", ", ".join(f"{k} {n}" for k, n in labels.most_common()) or "none")
    print("summary:", write_summary(stats, args.out))  # stats.to_json(), as the CLI writes it
    if stats.error:
        print("error:", stats.error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
