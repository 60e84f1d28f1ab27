"""The control protocol: length-prefixed msgpack frames (see docs/protocol.md).

A leaf module (stdlib + msgpack): naosctl and other clients import it.

Frame = 4-byte big-endian unsigned length N, then N bytes: one msgpack map.
Every map has a ``"type"`` key:

    hello    client -> server first; server answers with its own hello
    request  {"id": int, "method": str, "params": map, "timeout": seconds?,
              "traceparent": str?}   W3C trace context: the request's span joins it
    reply    {"id": int, "result": any}
    error    {"id": int | nil, "code": str, "message": str}
    event    {"id": int, "data": any}          one item of a stream
    end      {"id": int}                       the stream is finished
    cancel   {"id": int}                       client stops a stream

Decoding is bounded before anything is built: the length against the frame
limit, array and map lengths, the values in one frame (``naosd.values``).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from naosd.errors import ProtocolError
from naosd.values import TooManyValues, decode_hooks

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
HELLO_MAX_FRAME = 4096  # the largest frame a connection may send before its hello
MAX_CONTAINER_LEN = 1 << 20  # entries in one array or map
MAX_VALUES = 1 << 20  # arrays, maps, their elements, keys and values in one frame
MAX_REQUEST_TIMEOUT = 86400.0  # seconds: the largest ``timeout`` a request may carry
FRAME_TYPES = frozenset(
    {"hello", "request", "reply", "error", "event", "end", "cancel"}
)


def encode_frame(message: dict[str, Any], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Serialise one message.  Raises ProtocolError if it cannot be framed."""
    try:
        body = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc
    if len(body) > max_frame:
        raise ProtocolError(
            f"message of {len(body)} bytes exceeds the {max_frame}-byte frame limit"
        )
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes, *, max_values: int = MAX_VALUES) -> dict[str, Any]:
    """Decode one frame body into a message map, checking its shape and
    refusing more than ``max_values`` values as they are built."""
    try:
        message = msgpack.unpackb(
            body, raw=False, strict_map_key=False, timestamp=0,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN,
            **decode_hooks(max_values))
    except TooManyValues as exc:
        raise ProtocolError(f"frame refused: {exc}") from None
    except msgpack.StackError:
        raise ProtocolError("frame is nested too deep to decode at all "
                            "(over 1,024 levels)") from None
    except Exception as exc:  # noqa: BLE001 - msgpack raises many unrelated types
        raise ProtocolError(
            f"frame is not valid msgpack: {str(exc) or type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            f"frame must hold a map, got {type(message).__name__}"
        )
    kind = message.get("type")
    if kind not in FRAME_TYPES:
        raise ProtocolError(f"unknown frame type {kind!r}")
    return message


class FrameDecoder:
    """Push parser: feed bytes in any chunking, get whole messages out.

    Raises :class:`ProtocolError` on an oversized length (as soon as the
    4-byte header is in, before the body is buffered) or an undecodable
    body; the decoder is then unusable (the connection must be closed).
    ``max_frame`` may be raised between frames (the server does after the
    hello).
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME,
                 max_values: int = MAX_VALUES) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.limit_note = ""  # said after the limit when a length is refused
        self._max_values = max_values

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def push(self, data: bytes) -> None:
        """Buffer ``data``; take the frames out one by one with :meth:`next`."""
        self._buf += data

    def next(self) -> dict[str, Any] | None:
        """The next whole message, or None until more bytes arrive."""
        if len(self._buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buf)
        if size > self.max_frame:
            raise ProtocolError(
                f"peer announced a {size}-byte frame; the limit is "
                f"{self.max_frame}{self.limit_note}"
            )
        end = HEADER.size + size
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return decode_body(body, max_values=self._max_values)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Buffer ``data`` and return every whole message it completes."""
        self.push(data)
        out: list[dict[str, Any]] = []
        while (message := self.next()) is not None:
            out.append(message)
        return out


def hello(role: str, **extra: Any) -> dict[str, Any]:
    """The first frame each side sends."""
    return {"type": "hello", "protocol": PROTOCOL_VERSION, role: True, **extra}


def request(req_id: int, method: str, params: dict[str, Any] | None = None,
            *, timeout: float | None = None, traceparent: str | None = None
            ) -> dict[str, Any]:
    frame = {"type": "request", "id": req_id, "method": method, "params": params or {}}
    if timeout is not None:
        frame["timeout"] = timeout
    if traceparent:
        frame["traceparent"] = traceparent
    return frame


def reply(req_id: int, result: Any) -> dict[str, Any]:
    return {"type": "reply", "id": req_id, "result": result}


def error(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": req_id, "code": code, "message": message}


def event(req_id: int, data: Any) -> dict[str, Any]:
    return {"type": "event", "id": req_id, "data": data}


def end(req_id: int) -> dict[str, Any]:
    return {"type": "end", "id": req_id}
