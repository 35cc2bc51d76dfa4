"""Publishes results over ZeroMQ: PUB (never blocks the pipeline) or PUSH (reliable, with backpressure).

Wire format (schema 1, :mod:`autotimm_stream.protocol`, ``docs/protocol.md``): multipart
``[topic, header, payload...]``; ``topic`` is ``<kind>/<source_id>`` where kind is the task for
results, ``status`` when a source changes state, ``heartbeat`` once per interval per source and
``eos`` after a source's last result; ``header`` a UTF-8 JSON object with a ``schema`` field.
Segmentation results add one payload part, the class map (raw or PNG, described by
``header["mask"]``).

``pub`` mode binds an XPUB with ``XPUB_NODROP``: a send that would exceed a subscriber's
high-water mark fails at once instead of dropping silently, so every lost message is counted;
``wait_subscribers`` makes :meth:`open` wait (bounded) for that many subscriptions, so
subscribers that connect before the run starts get the first message too; each topic prefix of
each SUB socket counts as one (a client with the default prefix ``""`` counts one). ``push``
mode binds a PUSH socket: nothing is lost while a PULL peer is connected; when every peer is slow
or absent the sink waits, which backs up the pipeline (files wait, live sources drop their oldest
frames), and gives up only when the pipeline aborts. Optional CURVE encryption and client authentication
(key files made by ``autotimm-stream keygen``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import zmq

from ..config import ZmqConfig
from ..errors import SinkError
from ..frame import ms_since
from ..messages import EndOfStream, Result, StatusEvent
from ..net import DEFAULT_ENDPOINT, bind_socket, is_local, load_curve_key
from ..protocol import SCHEMA_VERSION, encode_mask
from ..stats import StageStats
from .base import Sink

__all__ = ["ZmqSink"]

_logger = logging.getLogger(__name__)

_CLOSE_LINGER_MS = 1000
_POLL_MS = 100


class ZmqSink(Sink):
    """Results, source status, heartbeats and ends of streams on one ZeroMQ socket.

    ``settings`` (the config's ``sinks.zmq``): ``endpoint`` to bind (loopback by default;
    ``tcp://*:N`` reaches other machines); ``mode`` ``pub`` (fan-out, never blocks, drops counted)
    or ``push`` (reliable, backpressure); ``hwm`` messages queued per peer; ``wait_subscribers``
    and ``wait_timeout_s`` (``pub``: wait for that many subscriptions first, each topic prefix of
    each subscriber counting one); ``mask_encoding``; ``heartbeat_s`` (a ``heartbeat/<source>``
    per current source of the bound pipeline this often; 0 = none); ``curve`` (encrypt with the
    server's secret key; with ``clients_dir``, admit only those clients' keys).
    """

    name = "zmq"

    def __init__(self, settings: ZmqConfig | None = None, *, context: zmq.Context[Any] | None = None):
        self.settings = settings or ZmqConfig()
        self._curve_keys = self._load_curve()
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None
        self._auth: Any = None
        self.sent = 0  # every message, heartbeats included
        self.dropped = 0
        self.heartbeats = 0  # heartbeats among the messages sent
        self.publish_ms = StageStats()
        self.bound_endpoint = self.settings.endpoint
        self._opened = 0.0
        self._next_beat = 0.0
        self._beat_counts: dict[str, tuple[int, float]] = {}  # source -> (frames_out, when) at the last beat
        self._last_index: dict[str, int] = {}

    # -- set-up ---------------------------------------------------------------------------------
    def _load_curve(self) -> tuple[bytes, bytes] | None:
        """The server's key pair, checked at construction so a bad key fails before anything runs."""
        if not self.settings.curve.secret_key:
            if self.settings.curve.clients_dir:
                raise SinkError("sinks.zmq.curve.clients_dir needs sinks.zmq.curve.secret_key (the server's key)")
            return None
        public, secret = load_curve_key(self.settings.curve.secret_key, "sinks.zmq.curve.secret_key", secret=True)
        if self.settings.curve.clients_dir and not os.path.isdir(self.settings.curve.clients_dir):
            raise SinkError(
                f"sinks.zmq.curve.clients_dir: {self.settings.curve.clients_dir!r} is not a folder; expected a folder of "
                "client public key files (*.key)"
            )
        assert secret is not None
        return public, secret

    def _curve_options(self) -> dict[int, Any]:
        if self._curve_keys is None:
            return {}
        public, secret = self._curve_keys
        from zmq.auth.thread import ThreadAuthenticator

        # a ZAP handler is always installed with CURVE: without a clients folder it admits any
        # client that knows the server's public key (encryption only), with one only those keys
        self._auth = ThreadAuthenticator(self._ctx, log=_logger)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.settings.curve.clients_dir or zmq.auth.CURVE_ALLOW_ANY)
        return {zmq.CURVE_SERVER: 1, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}

    def open(self) -> None:
        options = self._curve_options()
        if self.settings.mode == "pub":
            options.update({zmq.SNDHWM: self.settings.hwm, zmq.XPUB_NODROP: 1})
            if self.settings.wait_subscribers:
                # without VERBOSE libzmq passes on only the first subscription to a prefix, so two
                # clients subscribing to "" (the client's default) would count as one and open()
                # would wait its whole timeout; switched off again once the wait is over
                options[zmq.XPUB_VERBOSE] = 1
            kind = zmq.XPUB
        else:
            options[zmq.SNDHWM] = self.settings.hwm
            kind = zmq.PUSH
        try:
            sock = bind_socket(self._ctx, kind, self.settings.endpoint, "sinks.zmq.endpoint", DEFAULT_ENDPOINT, options)
        except BaseException:
            self._stop_auth()
            raise
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        if not is_local(self.settings.endpoint):
            _logger.warning(
                "zmq: results are published on %s, reachable from other machines%s",
                self.bound_endpoint,
                ""
                if self.settings.curve.secret_key
                else " and unencrypted (set sinks.zmq.curve.secret_key to encrypt)",
            )
        self._opened = self._next_beat = time.monotonic()
        if self.settings.wait_subscribers:
            self._await_subscribers()

    def _await_subscribers(self) -> None:
        """Wait (at most ``wait_timeout_s``) until ``wait_subscribers`` subscriptions have arrived."""
        assert self._sock is not None
        deadline = time.monotonic() + self.settings.wait_timeout_s
        seen = 0
        try:
            while seen < self.settings.wait_subscribers:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not self._sock.poll(left_ms, zmq.POLLIN):
                    _logger.warning(
                        "zmq: %d of %d subscriptions after %.1f s; starting anyway",
                        seen,
                        self.settings.wait_subscribers,
                        self.settings.wait_timeout_s,
                    )
                    return
                msg = self._sock.recv()
                if msg[:1] == b"\x01":  # subscribe (0x00 is unsubscribe)
                    seen += 1
        finally:
            # from now on tick() only drains them: without VERBOSE, libzmq queues only new prefixes
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 0)

    def _drain_subscriptions(self, most: int = 1000) -> None:
        """Read the (un)subscribe messages an XPUB queues for its owner: unread, a run with
        subscribers coming and going would hold them all."""
        assert self._sock is not None
        for _ in range(most):
            try:
                self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    # -- sending --------------------------------------------------------------------------------
    def _send(self, topic: str, header: dict[str, Any], *payload: Any, reliable: bool = True) -> bool:
        """Send one message; False when it was dropped (counted)."""
        assert self._sock is not None
        parts = [topic.encode(), json.dumps(header, separators=(",", ":")).encode(), *payload]
        while True:
            try:
                self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
                self.sent += 1
                return True
            except zmq.Again:
                if self.settings.mode == "pub" or not reliable or self.context.abort.is_set():
                    self.dropped += 1
                    return False
                self._sock.poll(_POLL_MS, zmq.POLLOUT)  # PUSH: wait for a peer with room (backpressure)

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
            self._last_index[r.source_id] = r.index
            if r.mask is None:
                self._send(f"{r.task}/{r.source_id}", header)
                continue
            header["mask"], payload = encode_mask(r.mask, self.settings.mask_encoding)
            self._send(f"{r.task}/{r.source_id}", header, payload)

    def end_of_stream(self, eos: EndOfStream) -> None:
        self._send(
            f"eos/{eos.source_id}",
            {"schema": SCHEMA_VERSION, "source_id": eos.source_id, "frames": eos.frames, "reason": eos.reason},
        )

    def status(self, event: StatusEvent) -> None:
        self._send(f"status/{event.source_id}", {"schema": SCHEMA_VERSION, **event.to_json()})

    def tick(self) -> None:
        if self._sock is not None and self.settings.mode == "pub":
            self._drain_subscriptions()
        if self._sock is None or not self.settings.heartbeat_s:
            return
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + self.settings.heartbeat_s
        at_ns = time.time_ns()
        for src in self.context.sources():
            sid = src.source_id
            frames, since = self._beat_counts.get(sid, (0, self._opened))
            self._beat_counts[sid] = (src.frames_out, now)
            fps = (src.frames_out - frames) / (now - since) if now > since else 0.0
            header = {
                "schema": SCHEMA_VERSION,
                "source_id": sid,
                "state": src.state,
                "frames_decoded": src.frames_decoded,
                "frames_out": src.frames_out,
                "drops": src.dropped,
                "queue_depth": src.queue_depth,
                "fps": round(max(fps, 0.0), 3),
                "last_frame_index": self._last_index.get(sid),
                "uptime_s": round(now - self._opened, 3),
                "at_ns": at_ns,
            }
            self.heartbeats += self._send(f"heartbeat/{sid}", header, reliable=False)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        if self._sock is not None:
            # linger a moment: messages still queued in ZMQ's I/O thread (the last results and the
            # end-of-stream) would otherwise be discarded; bounded, so a stuck subscriber cannot hang
            # the shutdown. Seen on a loaded machine: a subscriber missing the last result and eos.
            self._sock.close(linger=_CLOSE_LINGER_MS)
            self._sock = None
        self._stop_auth()

    def stats(self) -> dict[str, Any]:
        return {
            "endpoint": self.bound_endpoint,
            "mode": self.settings.mode,
            "sent": self.sent,
            "dropped": self.dropped,
            "heartbeats": self.heartbeats,
            "publish_ms": self.publish_ms.summary().to_json(),
        }

    def stages(self) -> dict[str, StageStats]:
        return {"publish": self.publish_ms}

    def summary_lines(self) -> list[str]:
        return [f"zmq {self.bound_endpoint}: {self.sent} messages sent, {self.dropped} dropped (slow subscribers)"]
