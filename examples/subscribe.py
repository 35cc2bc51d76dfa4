"""Read results in a subscriber: typed messages from a running engine over ZeroMQ, a line per frame.

Run: python examples/subscribe.py [tcp://127.0.0.1:5555] [--topic detection/] [--count N] [--timeout 60]

Start it before or while an engine publishes (``autotimm-stream demo`` does, on tcp://127.0.0.1:5555).
``autotimm_stream.client.Subscriber`` needs only pyzmq and numpy (no torch); it parses each message
(docs/protocol.md) into a typed one, segmentation class maps decoded to numpy arrays. It stops after
--count results, or when nothing arrives for --timeout seconds.
"""

from __future__ import annotations

import argparse

import numpy as np

from autotimm_stream.client import EosMessage, ResultMessage, StatusMessage, Subscriber


def describe(msg: ResultMessage) -> str:
    """One phrase per task: the objects found, the mask's classes, or the best class."""
    if msg.task == "detection":
        boxes = " ".join(f"{d.label}@{[round(v) for v in d.box]}" for d in msg.detections[:3])
        return f"{len(msg.detections)} objects {boxes}"
    if msg.mask is not None:  # segmentation: the class map, a numpy uint8 [H, W] of class ids
        shares = " ".join(f"{label} {share:.0%}" for label, share in msg.class_fractions.items())
        return f"mask {msg.mask.shape[1]}x{msg.mask.shape[0]}, {np.unique(msg.mask).size} classes: {shares}"
    return f"{msg.classes[0].label} {msg.classes[0].score:.2f}" if msg.classes else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5555", help="the engine's sinks.zmq.endpoint")
    parser.add_argument("--topic", default="", help="topic prefix, e.g. detection/ or detection/cam1 (default: all)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many results (default: 0 = no limit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many quiet seconds")
    args = parser.parse_args()

    topics = [args.topic, "status/", "eos/"] if args.topic else [""]  # "" = every topic
    results = 0
    with Subscriber(args.endpoint, topics) as sub:
        try:
            for msg in sub.messages(idle_timeout_s=args.timeout):
                if isinstance(msg, ResultMessage):
                    results += 1
                    t = msg.pts or 0.0
                    print(f"{msg.topic} #{msg.frame_index} t={t:.2f}s {describe(msg)} latency={msg.latency_ms:.0f}ms")
                elif isinstance(msg, StatusMessage):
                    print(f"{msg.topic}: {msg.state} {msg.reason}".rstrip())
                elif isinstance(msg, EosMessage):
                    print(f"{msg.topic}: end of stream, {msg.frames} frames ({msg.reason})")
                # HeartbeatMessage (one a second per source: fps, queue depth) is left out here
                if args.count and results >= args.count:
                    break
            else:
                print(f"nothing received for {args.timeout:g} s; bye")
        except KeyboardInterrupt:
            pass
    print(f"{results} results", flush=True)
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
