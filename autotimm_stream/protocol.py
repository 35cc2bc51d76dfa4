"""The wire protocol, schema 1: topics, mask encodings and the shipped JSON Schema.

One place for what the publisher writes and the client reads. A message is multipart
``[topic, header, payload...]``: ``topic`` is ``<kind>/<source_id>`` (UTF-8), ``header`` one
UTF-8 JSON object, and a segmentation result adds its class map as part 2 (``header["mask"]``
says how it is encoded). ``schemas/protocol-v1.json`` is the normative description of every
header; :func:`validate` checks a whole message against it (needs ``jsonschema``).
See ``docs/protocol.md``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import numpy as np

from .errors import StreamError
from .tasks import TASKS

__all__ = [
    "SCHEMA_VERSION",
    "RESULT_KINDS",
    "KINDS",
    "MASK_ENCODINGS",
    "ProtocolError",
    "make_topic",
    "split_topic",
    "encode_mask",
    "decode_mask",
    "schema",
    "validate",
]

SCHEMA_VERSION = 1
RESULT_KINDS = TASKS  # a result's topic kind is its task
KINDS = (*RESULT_KINDS, "status", "heartbeat", "eos")
MASK_ENCODINGS = ("raw", "png")
MASK_PART = 2  # index of the message part that carries a segmentation mask
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DTYPES = {1: "uint8", 2: "uint16"}  # itemsize -> wire name
_NUMPY: dict[str, np.dtype[Any]] = {"uint8": np.dtype(np.uint8), "uint16": np.dtype("<u2")}  # wire name -> layout


class ProtocolError(StreamError, ValueError):
    """A message does not follow the wire protocol (wrong topic, header, schema version or payload)."""


def make_topic(kind: str, source_id: str) -> bytes:
    return f"{kind}/{source_id}".encode()


def split_topic(topic: bytes | str) -> tuple[str, str]:
    """``b"detection/cam1"`` -> ``("detection", "cam1")``; ProtocolError for an unknown kind."""
    text = topic.decode() if isinstance(topic, bytes | bytearray | memoryview) else topic
    kind, sep, source_id = text.partition("/")
    if not sep or kind not in KINDS or not source_id:
        raise ProtocolError(f"topic {text!r}: expected '<kind>/<source_id>' with kind one of {', '.join(KINDS)}")
    return kind, source_id


def encode_mask(mask: np.ndarray, encoding: str = "raw") -> tuple[dict[str, Any], bytes | memoryview]:
    """A class map ``[H, W]`` of class ids -> its header description and the payload part.

    Up to 256 classes the map travels as ``uint8``; a model with more classes (the post-processor
    then gives int64 ids) sends ``uint16``, little-endian in ``raw``. ``raw`` costs no CPU (the
    array's bytes, row-major); ``png`` is lossless and typically 20-100x smaller for class maps,
    at about a millisecond per 720p frame.
    """
    if mask.ndim != 2 or mask.dtype.kind not in "ui":
        raise ProtocolError(f"mask: expected an integer [H, W] class map, got {mask.dtype} {list(mask.shape)}")
    if mask.dtype != np.uint8:
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 0xFFFF):
            raise ProtocolError(f"mask: class ids must lie in [0, 65535], got [{mask.min()}, {mask.max()}]")
        mask = mask.astype("<u2")
    spec = {
        "encoding": encoding,
        "dtype": _DTYPES[mask.dtype.itemsize],
        "shape": [int(mask.shape[0]), int(mask.shape[1])],
        "frame": MASK_PART,
    }
    if encoding == "raw":
        return spec, memoryview(np.ascontiguousarray(mask).data).cast("B")
    if encoding == "png":
        import cv2

        ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ProtocolError("mask: PNG encoding failed")
        return spec, buf.tobytes()
    raise ProtocolError(f"mask encoding: expected one of {', '.join(MASK_ENCODINGS)}, got {encoding!r}")


def decode_mask(spec: dict[str, Any], payload: bytes | memoryview) -> np.ndarray:
    """The class map (``uint8`` or ``uint16 [H, W]``) described by ``header["mask"]`` from its payload part."""
    try:
        encoding, dtype = spec["encoding"], spec["dtype"]
        height, width = (int(v) for v in spec["shape"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"mask: expected {{encoding, dtype, shape: [h, w], frame}}, got {spec!r}") from None
    want = _NUMPY.get(dtype)
    if want is None:
        raise ProtocolError(f"mask: expected dtype 'uint8' or 'uint16', got {dtype!r}")
    if encoding == "raw":
        size = height * width * want.itemsize
        if len(payload) != size:
            raise ProtocolError(f"mask: {dtype} {height}x{width} needs {size} bytes, the payload has {len(payload)}")
        return np.frombuffer(payload, dtype=want).reshape(height, width)
    if encoding == "png":
        import cv2

        data = bytes(payload)
        if not data.startswith(_PNG_SIGNATURE):
            raise ProtocolError("mask: encoding 'png' but the payload is not a PNG")
        mask = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.dtype != want or mask.shape != (height, width):
            got = None if mask is None else f"{mask.dtype} {list(mask.shape)}"
            raise ProtocolError(f"mask: the PNG should hold {dtype} [{height}, {width}], it holds {got}")
        return mask
    raise ProtocolError(f"mask: unknown encoding {encoding!r}; expected one of {', '.join(MASK_ENCODINGS)}")


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of schema-1 headers, as shipped in the package."""
    text = (resources.files("autotimm_stream") / "schemas" / "protocol-v1.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator(kind: str) -> Any:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        raise ProtocolError("validating messages needs the 'jsonschema' package: pip install jsonschema") from None
    doc = schema()
    sub = {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{kind}"}
    return jsonschema.Draft202012Validator(sub, format_checker=jsonschema.FormatChecker())


def validate(topic: bytes | str, header: bytes | str | dict[str, Any], payload: tuple | list = ()) -> dict[str, Any]:
    """Check one message against schema 1 and return its parsed header; ProtocolError says what is wrong.

    Beyond the JSON Schema: the topic's kind and source id must match the header, and a mask must
    decode to the shape its header announces.
    """
    kind, source_id = split_topic(topic)
    if not isinstance(header, dict):
        try:
            header = json.loads(header)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{kind}/{source_id}: the header is not JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ProtocolError(f"{kind}/{source_id}: the header must be a JSON object, got {type(header).__name__}")
    errors = sorted(_validator(kind).iter_errors(header), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(header)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ProtocolError(f"{kind}/{source_id}: {where}: {e.message}{more}")
    if header["source_id"] != source_id:
        raise ProtocolError(f"topic names source {source_id!r}, the header {header['source_id']!r}")
    if kind in RESULT_KINDS and header["task"] != kind:
        raise ProtocolError(f"topic kind {kind!r} but header task {header['task']!r}")
    if "mask" in header:
        if len(payload) < 1:
            raise ProtocolError(f"{kind}/{source_id}: the header announces a mask but the message has no part 2")
        mask = decode_mask(header["mask"], payload[0])
        if mask.shape != (header["height"], header["width"]):
            raise ProtocolError(f"mask {list(mask.shape)} is not the frame's size {header['height']}x{header['width']}")
    return header
