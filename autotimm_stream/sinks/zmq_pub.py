"""Publishes results on a ZeroMQ PUB-compatible socket, never blocking the pipeline.

Wire format (schema 1): multipart ``[topic, header, payload...]``; ``topic`` is
``<task>/<source_id>`` (or ``eos/<source_id>`` after a source's last result, ``status/<source_id>``
when a source changes state), ``header`` a UTF-8 JSON object with a ``schema`` field. Segmentation results add one payload frame, the class map
(raw ``uint8``, row-major, shape and encoding in ``header["mask"]``). See ``docs/protocol.md``.

The socket is an XPUB with ``XPUB_NODROP``: a send that would exceed the high-water mark fails
at once instead of dropping silently, so every lost message is counted. ``wait_subscribers``
makes :meth:`open` wait (bounded) for that many subscriptions, so subscribers that connect
before the run starts get the first message too.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import zmq

from ..errors import SinkError
from ..frame import Result, ms_since
from ..sources.base import StatusEvent
from ..stats import StageStats
from .base import EndOfStream, Sink

__all__ = ["ZmqSink", "SCHEMA_VERSION", "DEFAULT_ENDPOINT", "bind_socket"]

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_CLOSE_LINGER_MS = 1000


def bind_socket(
    ctx: zmq.Context, kind: int, endpoint: str, field: str, example: str, options: dict[int, int]
) -> zmq.Socket:
    """A socket of ``kind`` bound to ``endpoint`` (linger 0), or SinkError naming config ``field``."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in options.items():
        sock.setsockopt(option, value)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise SinkError(
            f"{field}: cannot bind {endpoint!r} ({exc}); expected a free address such as "
            f"{example} (another engine running? pick another port)"
        ) from None
    return sock


class ZmqSink(Sink):
    name = "zmq"

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        hwm: int = 1000,
        wait_subscribers: int = 0,
        wait_timeout_s: float = 5.0,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self.hwm = hwm
        self.wait_subscribers = wait_subscribers
        self.wait_timeout_s = wait_timeout_s
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self.sent = 0
        self.dropped = 0
        self.publish_ms = StageStats()
        self.bound_endpoint = endpoint

    def open(self) -> None:
        options = {zmq.SNDHWM: self.hwm, zmq.XPUB_NODROP: 1}
        sock = bind_socket(self._ctx, zmq.XPUB, self.endpoint, "sinks.zmq.endpoint", DEFAULT_ENDPOINT, options)
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        if self.wait_subscribers:
            self._await_subscribers()

    def _await_subscribers(self) -> None:
        assert self._sock is not None
        deadline = time.monotonic() + self.wait_timeout_s
        seen = 0
        while seen < self.wait_subscribers:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._sock.poll(left_ms, zmq.POLLIN):
                _logger.warning(
                    "zmq: %d of %d subscribers after %.1f s; starting anyway",
                    seen,
                    self.wait_subscribers,
                    self.wait_timeout_s,
                )
                return
            msg = self._sock.recv()
            if msg[:1] == b"\x01":  # subscribe (0x00 is unsubscribe)
                seen += 1

    def _send(self, topic: str, header: dict[str, Any], *payload: Any) -> None:
        assert self._sock is not None
        parts = [topic.encode(), json.dumps(header, separators=(",", ":")).encode(), *payload]
        try:
            self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def write(self, results: list[Result]) -> None:
        for r in results:
            record = r.to_json()  # shared with other sink threads: copy what changes
            publish_ms = ms_since(r.done_ns) if r.done_ns else 0.0
            self.publish_ms.add(publish_ms)
            publish_ns = time.time_ns()
            header = {
                "schema": SCHEMA_VERSION,
                **record,
                "timings_ms": {**record["timings_ms"], "publish": round(publish_ms, 3)},
                "publish_ns": publish_ns,
                "latency_ms": round((publish_ns - r.frame.capture_ns) / 1e6, 3),
            }
            if r.mask is None:
                self._send(f"{r.task}/{r.source_id}", header)
                continue
            mask = np.ascontiguousarray(r.mask)
            header["mask"] = {"encoding": "raw", "dtype": str(mask.dtype), "shape": list(mask.shape), "frame": 2}
            self._send(f"{r.task}/{r.source_id}", header, memoryview(mask).cast("B"))

    def end_of_stream(self, eos: EndOfStream) -> None:
        self._send(
            f"eos/{eos.source_id}",
            {"schema": SCHEMA_VERSION, "source_id": eos.source_id, "frames": eos.frames, "reason": eos.reason},
        )

    def status(self, event: StatusEvent) -> None:
        self._send(f"status/{event.source_id}", {"schema": SCHEMA_VERSION, **event.to_json()})

    def close(self) -> None:
        if self._sock is not None:
            # linger a moment: messages still queued in ZMQ's I/O thread (the last results and the
            # end-of-stream) would otherwise be discarded; bounded, so a stuck subscriber cannot hang
            # the shutdown. Seen on a loaded machine: a subscriber missing the last result and eos.
            self._sock.close(linger=_CLOSE_LINGER_MS)
            self._sock = None

    def stats(self) -> dict[str, Any]:
        return {
            "endpoint": self.bound_endpoint,
            "sent": self.sent,
            "dropped": self.dropped,
            "publish_ms": self.publish_ms.summary(),
        }
