"""Receives what an engine publishes, as typed messages with masks decoded to numpy.

    from autotimm_stream.client import Subscriber, ResultMessage

    with Subscriber("tcp://127.0.0.1:5555", topics=["detection/"]) as sub:
        for msg in sub.messages(idle_timeout_s=30, until_eos={"cam1"}):
            if isinstance(msg, ResultMessage):
                print(msg.source_id, msg.frame_index, [d.label for d in msg.detections])

Needs only pyzmq and numpy (no torch). ``mode="pull"`` connects to an engine whose
``sinks.zmq.mode`` is ``push``. With CURVE, pass the server's public key file and, when the engine
only admits known clients, this client's secret key file (``autotimm-stream keygen``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .errors import StreamError
from .messages import Detection, Prediction
from .net import DEFAULT_ENDPOINT
from .protocol import MASK_PART, RESULT_KINDS, SCHEMA_VERSION, ProtocolError, decode_mask, split_topic, validate

__all__ = [
    "Subscriber",
    "Message",
    "ResultMessage",
    "StatusMessage",
    "HeartbeatMessage",
    "EosMessage",
    "parse_message",
]


@dataclass(slots=True)
class Message:
    """Any message: its topic, kind, source and the whole JSON header (fields not modelled below too)."""

    topic: str
    kind: str
    source_id: str
    header: dict[str, Any]


@dataclass(slots=True)
class ResultMessage(Message):
    """A frame's result. ``mask`` (segmentation) is the decoded ``uint8 [H, W]`` class map."""

    task: str = ""
    frame_index: int = 0
    pts: float | None = None
    capture_ns: int = 0
    publish_ns: int = 0
    latency_ms: float = 0.0
    width: int = 0
    height: int = 0
    flags: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    classes: list[Prediction] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    class_fractions: dict[str, float] = field(default_factory=dict)  # label -> share of the frame's pixels
    mask: np.ndarray | None = None


@dataclass(slots=True)
class StatusMessage(Message):
    """A source changed state."""

    state: str = ""
    previous: str | None = None
    reason: str = ""
    attempt: int = 0
    retry_in_s: float | None = None


@dataclass(slots=True)
class HeartbeatMessage(Message):
    """A source's periodic sign of life."""

    state: str | None = None
    fps: float = 0.0
    frames_out: int = 0
    drops: int = 0
    queue_depth: int = 0
    last_frame_index: int | None = None


@dataclass(slots=True)
class EosMessage(Message):
    """A source's last result was published; ``frames`` results in all."""

    frames: int = 0
    reason: str = ""


def parse_message(parts: list[bytes] | list[Any], check: bool = False) -> Message:
    """A received multipart message -> its typed form; ProtocolError when it does not follow schema 1.

    ``check`` also validates the header against the shipped JSON Schema (slower; for tests and audits).
    """
    if len(parts) < 2:
        raise ProtocolError(f"expected [topic, header, payload...], got {len(parts)} part(s)")
    raw = [bytes(p.buffer) if isinstance(p, zmq.Frame) else p for p in parts]
    topic = raw[0].decode(errors="replace")
    kind, source_id = split_topic(topic)
    try:
        header = json.loads(raw[1])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{topic}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{topic}: expected the header to be a JSON object, got {type(header).__name__}")
    version = header.get("schema")
    # type checked too: JSON's true and 1.0 compare equal to 1 in Python but are not schema 1
    if type(version) is not int or version != SCHEMA_VERSION:
        newer = type(version) is int and version > SCHEMA_VERSION
        hint = "upgrade autotimm-stream to read newer engines" if newer else "is this an autotimm-stream engine?"
        raise ProtocolError(
            f"{topic}: expected header field 'schema' to be the integer {SCHEMA_VERSION}, "
            f"got {json.dumps(version)}; {hint}"
        )
    if check:
        validate(topic, header, raw[2:])
    base: dict[str, Any] = {"topic": topic, "kind": kind, "source_id": source_id, "header": header}
    try:
        if kind in RESULT_KINDS:
            mask = None
            if "mask" in header:
                if len(raw) <= MASK_PART:
                    raise ProtocolError(
                        f"{topic}: the header announces a mask, expected it as part {MASK_PART} of the message, "
                        f"got {len(raw)} parts (the mask part is missing)"
                    )
                mask = decode_mask(header["mask"], raw[MASK_PART])
            return ResultMessage(
                **base,
                task=header["task"],
                frame_index=header["frame_index"],
                pts=header["pts"],
                capture_ns=header["capture_ns"],
                publish_ns=header["publish_ns"],
                latency_ms=header["latency_ms"],
                width=header["width"],
                height=header["height"],
                flags=header.get("flags", []),
                timings_ms=header.get("timings_ms", {}),
                classes=[Prediction(c["class_id"], c["label"], c["score"]) for c in header.get("classes", [])],
                detections=[
                    Detection(_box(d["box"]), d["class_id"], d["label"], d["score"])
                    for d in header.get("detections", [])
                ],
                class_fractions={c["label"]: c["fraction"] for c in header.get("class_fractions", [])},
                mask=mask,
            )
        if kind == "status":
            return StatusMessage(
                **base,
                state=header["state"],
                previous=header.get("previous"),
                reason=header.get("reason", ""),
                attempt=header.get("attempt", 0),
                retry_in_s=header.get("retry_in_s"),
            )
        if kind == "heartbeat":
            return HeartbeatMessage(
                **base,
                state=header.get("state"),
                fps=header["fps"],
                frames_out=header["frames_out"],
                drops=header["drops"],
                queue_depth=header["queue_depth"],
                last_frame_index=header.get("last_frame_index"),
            )
        return EosMessage(**base, frames=header["frames"], reason=header["reason"])
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{topic}: the header lacks or mistypes {exc}") from None


def _box(box: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (x1, y1, x2, y2)


class Subscriber:
    """A SUB (or PULL) socket connected to an engine. Context manager; :meth:`close` is idempotent.

    Args:
        endpoint: the engine's ``sinks.zmq.endpoint`` (loopback by default).
        topics: topic prefixes (``""`` = everything; ``"detection/cam1"``; ``"status/"``); PULL
            receives everything and filters here.
        mode: ``sub`` for an engine in ``pub`` mode, ``pull`` for one in ``push`` mode.
        check: validate each message against the JSON Schema.
        curve_server_key: the engine's public key file (``server.key``): encrypt with CURVE.
        curve_client_key: this client's secret key file; without one an ephemeral key pair is used
            (enough when the engine admits any client).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        topics: Iterable[str] = ("",),
        *,
        mode: str = "sub",
        check: bool = False,
        hwm: int = 10000,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
        context: zmq.Context | None = None,
    ):
        if mode not in ("sub", "pull"):
            raise StreamError(f"mode: expected 'sub' or 'pull', got {mode!r}")
        self.endpoint = endpoint
        self.topics = list(topics) or [""]
        self.check = check
        self.mode = mode
        ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = ctx.socket(zmq.SUB if mode == "sub" else zmq.PULL)
        sock = self._sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, hwm)
        try:
            if curve_server_key:
                self._set_curve(sock, curve_server_key, curve_client_key)
        except (OSError, ValueError) as exc:
            self.close()
            raise StreamError(
                f"CURVE keys: {exc}; expected the engine's public key file (server.key) and this client's "
                "secret key file (*.key_secret), as made by `autotimm-stream keygen`"
            ) from None
        try:
            if mode == "sub":
                for t in self.topics:
                    sock.setsockopt_string(zmq.SUBSCRIBE, t)
            sock.connect(endpoint)
        except (zmq.ZMQError, OSError, ValueError) as exc:
            self.close()
            raise StreamError(f"cannot connect to {endpoint!r} ({exc}); expected e.g. {DEFAULT_ENDPOINT}") from None

    @staticmethod
    def _set_curve(sock: zmq.Socket, server_key: str, client_key: str | None) -> None:
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_key)
        if client_key:
            public, secret = zmq.auth.load_certificate(client_key)
            if secret is None:
                raise ValueError(f"{client_key!r} holds no secret key; pass the client's *.key_secret file")
        else:
            public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)

    def _wanted(self, topic: str) -> bool:
        return any(topic.startswith(t) for t in self.topics)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None when none arrives within ``timeout_s`` (None = wait forever)."""
        if self._sock is None:
            raise StreamError("the subscriber is closed")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(None if left is None else int(left * 1000)):
                return None
            parts = self._sock.recv_multipart()
            if self.mode == "pull" and not self._wanted(parts[0].decode(errors="replace")):
                continue
            return parse_message(parts, check=self.check)

    def messages(self, idle_timeout_s: float = 30.0, until_eos: Iterable[str] | None = None) -> Iterator[Message]:
        """Messages as they come; ends after ``idle_timeout_s`` without one, or once every source in
        ``until_eos`` has sent its end of stream."""
        waiting = set(until_eos or ())
        while True:
            msg = self.recv(idle_timeout_s)
            if msg is None:
                return
            yield msg
            if isinstance(msg, EosMessage) and waiting:
                waiting.discard(msg.source_id)
                if not waiting:
                    return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        return self.messages()
