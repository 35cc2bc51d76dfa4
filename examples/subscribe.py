"""Subscribe to autotimm-stream results over ZeroMQ and print one line per frame.

    python examples/subscribe.py [tcp://127.0.0.1:5555] [--topic classification/]

Messages are multipart ``[topic, header JSON]`` (see docs/protocol.md). Start it before or while
the engine runs; it exits after every source has sent its ``eos/<source_id>`` message.
"""

from __future__ import annotations

import argparse
import json

import zmq


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
            topic, header = sock.recv_multipart()[:2]
            msg = json.loads(header)
            if topic.startswith(b"eos/"):
                print(f"{topic.decode()}: {msg['frames']} frames ({msg['reason']})")
                continue
            best = msg["classes"][0] if msg["classes"] else None
            label = f"{best['label']} {best['score']:.2f}" if best else "-"
            print(
                f"{topic.decode()} #{msg['frame_index']} t={msg['pts'] or 0:.2f}s {label} latency={msg['latency_ms']:.0f}ms"
            )
        print(f"nothing received for {args.timeout:.0f} s; bye")
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
