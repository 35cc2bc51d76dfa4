"""Subscribe to autotimm-stream results over ZeroMQ and print one line per frame.

    python examples/subscribe.py [tcp://127.0.0.1:5555] [--topic classification/]

Messages are multipart ``[topic, header JSON, payload...]`` (see docs/protocol.md); segmentation
messages carry the class map as a third frame, decoded by ``autotimm_stream.protocol.decode_mask``
(raw or PNG). Start it before or while the engine runs; it exits when nothing arrives for ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import zmq

from autotimm_stream.protocol import decode_mask


def describe(msg: dict, payload: list[bytes]) -> str:
    """One phrase per task: best class, objects found, or the mask's classes."""
    if "detections" in msg:
        return f"{len(msg['detections'])} objects " + " ".join(
            f"{d['label']}@{[round(v) for v in d['box']]}" for d in msg["detections"][:3]
        )
    if "mask" in msg:
        mask = decode_mask(msg["mask"], payload[0])  # raw or PNG, uint8 or uint16
        ids, counts = np.unique(mask, return_counts=True)
        return f"mask {mask.shape[1]}x{mask.shape[0]} " + " ".join(
            f"{i}:{c / mask.size:.0%}" for i, c in zip(ids, counts)
        )
    best = msg["classes"][0] if msg["classes"] else None
    return f"{best['label']} {best['score']:.2f}" if best else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5555")
    parser.add_argument("--topic", default="", help="topic prefix, e.g. classification/ or classification/cam1")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many quiet seconds")
    args = parser.parse_args()

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    sock.setsockopt_string(zmq.SUBSCRIBE, "eos/")
    sock.connect(args.endpoint)
    try:
        while sock.poll(int(args.timeout * 1000)):
            topic, header, *payload = sock.recv_multipart()
            msg = json.loads(header)
            if topic.startswith(b"eos/"):
                print(f"{topic.decode()}: {msg['frames']} frames ({msg['reason']})")
                continue
            print(
                f"{topic.decode()} #{msg['frame_index']} t={msg['pts'] or 0:.2f}s {describe(msg, payload)} "
                f"latency={msg['latency_ms']:.0f}ms"
            )
        print(f"nothing received for {args.timeout:.0f} s; bye")
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
