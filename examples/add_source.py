"""Add and remove sources while a pipeline runs: one from Python, one over the control channel.

Run: python examples/add_source.py [--endpoint tcp://127.0.0.1:5556] [--frames 10] [--out add_out]

The pipeline starts with no source: with ``control.enabled`` it keeps running, waiting for some.
A generated clip is added in Python; a live test pattern (FFmpeg's testsrc2, 10 fps) is added and
later removed over the control channel, as another process would (``autotimm-stream control add``
from a shell, or any ZeroMQ REQ socket sending the JSON requests of docs/protocol.md).
"""

from __future__ import annotations

import argparse
import os
import time

from autotimm_stream.app import build_pipeline, build_source
from autotimm_stream.app.control import request
from autotimm_stream.app.demo import demo_bundle_path
from autotimm_stream.config import validate_config, validate_source
from autotimm_stream.pipeline import Pipeline
from autotimm_stream.synthetic import write_clip


def wait_results(pipeline: Pipeline, source_id: str, count: int, timeout_s: float = 30.0) -> int:
    """Wait (bounded) until ``source_id`` has delivered ``count`` results; returns how many it has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        src = pipeline.stats(detail=False).sources.get(source_id)
        if src is not None and src.frames_out >= count:
            return src.frames_out
        time.sleep(0.1)
    raise TimeoutError(f"{source_id}: fewer than {count} results after {timeout_s:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="control channel (loopback)")
    parser.add_argument("--frames", type=int, default=10, help="results to wait for from the live source")
    parser.add_argument("--out", default="add_out", help="output folder (default: add_out)")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    clip = write_clip(os.path.join(args.out, "clip.mp4"), frames=25, width=320, height=240, seed=7, dominant=False)
    off = {"enabled": False}
    cfg = validate_config(
        {
            "sources": [],  # allowed with control enabled: sources come later
            "model": {"path": demo_bundle_path()},
            "control": {"enabled": True, "endpoint": args.endpoint},
            "sinks": {"zmq": off, "video": off, "report": off},  # JSONL only
            "output_dir": args.out,
        }
    )
    pipeline = build_pipeline(cfg)
    pipeline.start()
    try:
        # In Python: any config's sources[i] entry, built to ring the pipeline's bell.
        pipeline.add_source(build_source(validate_source({"id": "clip", "type": "file", "uri": clip}), pipeline.bell))
        print(f"clip: {wait_results(pipeline, 'clip', 25)} results")

        live = {"id": "cam2", "type": "testsrc", "width": 320, "height": 240, "fps": 10}
        print("add:", request(args.endpoint, {"op": "add", "source": live}))
        print(f"cam2: {wait_results(pipeline, 'cam2', args.frames)} results so far")
        print("list:", [(s["id"], s["state"]) for s in request(args.endpoint, {"op": "list"})["sources"]])
        print("remove:", request(args.endpoint, {"op": "remove", "id": "cam2"}))
    finally:
        pipeline.stop()
        drained = pipeline.wait(30)
        pipeline.close()
    stats = pipeline.stats()
    for sid, s in stats.sources.items():
        print(f"{sid}: {s.frames_out} results, {s.dropped} dropped, state {s.state}, removed {s.removed}")
    print(f"total: {stats.frames} results, drained {drained}")
    return 0 if drained and not stats.error else 1


if __name__ == "__main__":
    raise SystemExit(main())
