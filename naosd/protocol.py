"""The control protocol: length-prefixed msgpack frames (see docs/protocol.md).

A leaf module (stdlib + msgpack): naosctl and other clients import it.

Frame = 4-byte big-endian unsigned length N, then N bytes: one msgpack map.
Every map has a ``"type"`` key:

    hello    client -> server first; server answers with its own hello
    request  {"id": int, "method": str, "params": map}
    reply    {"id": int, "result": any}
    error    {"id": int | nil, "code": str, "message": str}
    event    {"id": int, "data": any}          one item of a stream
    end      {"id": int}                       the stream is finished
    cancel   {"id": int}                       client stops a stream
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from naosd.errors import ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
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


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a message map, checking its shape."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many unrelated types
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from None
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

    Raises :class:`ProtocolError` on an oversized length or an undecodable
    body; the decoder is then unusable (the connection must be closed).
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self._max:
                raise ProtocolError(
                    f"peer announced a {size}-byte frame; the limit is {self._max}"
                )
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            out.append(decode_body(body))
        return out


def hello(role: str, **extra: Any) -> dict[str, Any]:
    """The first frame each side sends."""
    return {"type": "hello", "protocol": PROTOCOL_VERSION, role: True, **extra}


def request(req_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "request", "id": req_id, "method": method, "params": params or {}}


def reply(req_id: int, result: Any) -> dict[str, Any]:
    return {"type": "reply", "id": req_id, "result": result}


def error(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": req_id, "code": code, "message": message}


def event(req_id: int, data: Any) -> dict[str, Any]:
    return {"type": "event", "id": req_id, "data": data}


def end(req_id: int) -> dict[str, Any]:
    return {"type": "end", "id": req_id}
