"""The control channel: add, remove and list sources of a running engine over ZeroMQ REQ/REP.

A REP socket (``tcp://127.0.0.1:5556`` by default; loopback unless configured otherwise) answers
one JSON object per request with one JSON object::

    {"op": "list"}                                   -> {"ok": true, "sources": [{id, uri, state, ...}]}
    {"op": "add", "source": {"id": "cam2", "type": "rtsp", "uri": "rtsp://..."}}
                                                     -> {"ok": true, "id": "cam2"}
    {"op": "remove", "id": "cam2"}                   -> {"ok": true, "id": "cam2", "stopped": true}
    {"op": "stats"}                                  -> {"ok": true, "summary": {...}}
    {"op": "stop"}                                   -> {"ok": true}   (the engine stops gracefully)

A request that cannot be honoured gets ``{"ok": false, "error": "..."}`` (what was expected, what
came); the engine keeps running. ``source`` takes exactly what a config's ``sources[i]`` takes.
See ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import StreamError, first_line
from ..net import DEFAULT_CONTROL_ENDPOINT, bind_socket, is_local
from ..sources.base import Source
from ..stats import SourceStats

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["ControlServer", "request"]

_logger = logging.getLogger(__name__)
_POLL_MS = 100
_REMOVE_WAIT_S = 5.0
_MAX_REQUEST = 1 << 20  # bytes; a source config is a few hundred


class ControlServer:
    """Serves control requests for ``pipeline`` on its own thread until :meth:`close`.

    ``make_source(config: dict) -> Source`` validates one source config and builds the source.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        make_source: Callable[[object], Source],
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        context: zmq.Context[Any] | None = None,
    ):
        self.pipeline = pipeline
        self.make_source = make_source
        self.endpoint = endpoint
        self.bound_endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0

    def open(self) -> None:
        """Bind now, so that a busy address fails the run before anything is written."""
        if self._sock is not None:
            return
        options: dict[int, Any] = {zmq.MAXMSGSIZE: _MAX_REQUEST}
        sock = bind_socket(self._ctx, zmq.REP, self.endpoint, "control.endpoint", DEFAULT_CONTROL_ENDPOINT, options)
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        if not is_local(self.endpoint):
            _logger.warning(
                "control channel on %s accepts requests from other machines, unauthenticated: anyone who "
                "reaches it can add sources (files on this machine included) or stop the engine",
                self.bound_endpoint,
            )

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._serve, name="control")
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the socket; idempotent."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._halt.is_set():
            if not sock.poll(_POLL_MS, zmq.POLLIN):
                continue
            raw = sock.recv()
            self.requests += 1
            try:
                reply = self.handle(raw)
            except Exception as exc:  # a bad request must never take the engine down
                _logger.exception("control request failed")
                reply = {"ok": False, "error": f"internal error: {first_line(exc)}"}
            sock.send(json.dumps(reply, default=str).encode())

    def handle(self, raw: bytes) -> dict[str, Any]:
        """The reply to one request (also usable without a socket)."""
        try:
            req = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(f'a request must be one JSON object, e.g. {{"op": "list"}} ({first_line(exc)})')
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return _error(f"a request must be a JSON object with an 'op' string, got {str(req)[:80]!r}")
        op = req["op"]
        p = self.pipeline
        try:
            if op == "list":
                return {"ok": True, "sources": [_describe(s) for s in p.source_stats()]}
            if op == "add":
                config = req.get("source")
                if not isinstance(config, dict):
                    return _error("'add' needs 'source': an object like a config's sources[i] entry")
                source = self.make_source(config)
                p.add_source(source)
                return {"ok": True, "id": source.source_id}
            if op == "remove":
                sid = req.get("id")
                if not isinstance(sid, str):
                    return _error("'remove' needs 'id': the id of a running source")
                stopped = p.remove_source(sid, timeout=_REMOVE_WAIT_S)
                return {"ok": True, "id": sid, "stopped": stopped}
            if op == "stats":
                return {"ok": True, "summary": p.stats().to_json()}
            if op == "stop":
                p.stop()
                return {"ok": True}
        except StreamError as exc:
            return _error(str(exc))
        return _error(f"unknown op {op!r}; expected one of list, add, remove, stats, stop")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _describe(s: SourceStats) -> dict[str, Any]:
    return {
        "id": s.source_id,
        "uri": s.uri,
        "state": s.state,
        "frames_decoded": s.frames_decoded,
        "frames_out": s.frames_out,
        "drops": dict(s.drops),
        "removed": s.removed,
    }


def request(endpoint: str, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one control request and return the reply (raises TimeoutError when none comes)."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(payload).encode())
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from {endpoint} within {timeout_s:g} s; is an engine running with control?")
        return json.loads(sock.recv())
    finally:
        sock.close(0)
