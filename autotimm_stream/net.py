"""Default addresses and the socket helpers shared by the ZeroMQ sink, the control channel and the
metrics server. Everything binds loopback unless configured otherwise."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from .errors import SinkError

if TYPE_CHECKING:
    import zmq

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_CONTROL_ENDPOINT",
    "DEFAULT_METRICS_HOST",
    "DEFAULT_METRICS_PORT",
    "bind_socket",
    "is_local",
    "is_loopback",
    "load_curve_key",
]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # results (sinks.zmq.endpoint)
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5556"  # control.endpoint
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9108


def is_local(endpoint: str) -> bool:
    """True when only this machine can reach ``endpoint`` (ipc, inproc, loopback TCP: 127.x, ::1, localhost)."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return True
    return is_loopback(rest.rsplit(":", 1)[0])


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or address, IPv6 possibly in brackets) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a wildcard (*), 0.0.0.0's name or an interface name: reachable from outside
        return False


def bind_socket(
    ctx: zmq.Context[Any], kind: int, endpoint: str, field: str, example: str, options: dict[int, Any]
) -> zmq.Socket[Any]:
    """A socket of ``kind`` bound to ``endpoint`` (linger 0), or SinkError naming config ``field``."""
    import zmq

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


def load_curve_key(path: str, field: str, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys from a ZeroMQ certificate file, or SinkError naming config ``field``."""
    import zmq.auth

    want = "a secret key file (*.key_secret)" if secret else "a public key file (*.key)"
    hint = "make a pair with `autotimm-stream keygen DIR`"
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SinkError(f"{field}: cannot read {path!r} as {want} ({exc}); {hint}") from None
    if secret and secret_key is None:
        raise SinkError(f"{field}: {path!r} holds only a public key; expected {want}; {hint}")
    return public, secret_key
