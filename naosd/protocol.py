"""The control protocol: length-prefixed msgpack frames (see docs/protocol.md).

A leaf module (stdlib + msgpack): naosctl and other clients import it.

Frame = 4-byte big-endian unsigned length N, then N bytes: one msgpack map.
Every map has a ``"type"`` key:

    hello    client -> server first; server answers with its own hello
    request  {"id": int, "method": str, "params": map, "timeout": seconds?}
    reply    {"id": int, "result": any}
    error    {"id": int | nil, "code": str, "message": str}
    event    {"id": int, "data": any}          one item of a stream
    end      {"id": int}                       the stream is finished
    cancel   {"id": int}                       client stops a stream

Decoding is bounded before anything is built: the announced length against
the frame limit, array and map lengths, and the number of values in one
frame.  Values that JSON cannot hold (msgpack extension types, timestamps)
are decoded into an :class:`Ext` marker, never into objects, and
:func:`check_values` refuses them, binary values outside top-level
parameters, non-string map keys, NaN and nesting deeper than
:data:`MAX_DEPTH`, naming the path of the bad value.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from naosd.errors import InvalidRequest, ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
HELLO_MAX_FRAME = 4096  # the largest frame a connection may send before its hello
MAX_CONTAINER_LEN = 1 << 20  # entries in one array or map
MAX_VALUES = 1 << 20  # arrays, maps, their elements, keys and values in one frame
MAX_DEPTH = 64  # nested arrays and maps, the frame's own map being the first
MAX_REQUEST_TIMEOUT = 86400.0  # seconds: the largest ``timeout`` a request may carry
FRAME_TYPES = frozenset(
    {"hello", "request", "reply", "error", "event", "end", "cancel"}
)


@dataclass(frozen=True, slots=True)
class Ext:
    """A msgpack extension value (``code`` -1 is a timestamp), decoded as a
    marker so that check_values can name where it was; its data is dropped."""

    code: int


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
            ext_hook=_ext_marker, max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN, **_counting_hooks(max_values))
    except TooManyValues as exc:
        raise ProtocolError(f"frame refused: {exc}") from None
    except msgpack.StackError:
        raise ProtocolError("frame is nested too deep to decode at all "
                            f"(values may nest {MAX_DEPTH} levels)") from None
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


class TooManyValues(ValueError):
    pass


def _ext_marker(code: int, data: bytes) -> Ext:
    return Ext(code)


def _counting_hooks(limit: int) -> dict[str, Callable[[Any], Any]]:
    """list_hook and object_hook that count values as containers are built
    and stop the decoder once ``limit`` is passed (before the rest is built)."""
    seen = [0]

    def count(container: Any, weight: int) -> Any:
        seen[0] += 1 + weight * len(container)  # itself, then its entries
        if seen[0] > limit:
            raise TooManyValues(f"more than {limit} values in one frame")
        return container

    return {"list_hook": lambda items: count(items, 1),
            "object_hook": lambda mapping: count(mapping, 2)}


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


# -- values at the boundary ---------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def check_values(message: dict[str, Any], *, binary_at: str = "") -> None:
    """Refuse any value of ``message`` that JSON cannot hold, naming its path
    (``params.input.a[3]: binary values are not allowed``).

    Allowed: nil, booleans, integers, finite floats, strings, arrays, and maps
    with string keys, nested at most MAX_DEPTH deep.  Binary values are
    allowed only directly under the key ``binary_at`` (a request's
    ``params``: each method declares which parameters take them).  Raises
    InvalidRequest."""
    for key, value in message.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"{_key_problem(key)} at the top level of the frame")
        path = _join("", key)
        if binary_at and key == binary_at and isinstance(value, dict):
            _check_map(value, path, depth=2, binary=True)
        else:
            _check(value, path, depth=2, binary=False)


def _check(value: Any, path: str, *, depth: int, binary: bool) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{path}: NaN and infinite numbers are not allowed")
        return
    if isinstance(value, (bytes, bytearray)):
        if not binary:
            raise InvalidRequest(f"{path}: binary values are not allowed here "
                                 "(only as a parameter that takes binary)")
        return
    if isinstance(value, Ext | msgpack.Timestamp):
        raise InvalidRequest(f"{path}: {_ext_name(value)} values are not allowed")
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth=depth + 1, binary=False)
        return
    if isinstance(value, dict):
        _check_map(value, path, depth=depth, binary=False)
        return
    raise InvalidRequest(f"{path}: values of type {type(value).__name__} are not allowed")


def _check_map(value: dict[Any, Any], path: str, *, depth: int, binary: bool) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{path}: nested deeper than {MAX_DEPTH} levels")
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"{path}: {_key_problem(key)}")
        _check(item, _join(path, key), depth=depth + 1, binary=binary)


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    shown = key if len(key) <= 40 else key[:40] + "..."
    return f"{path}[{shown!r}]"


def _key_problem(key: Any) -> str:
    shown = repr(key if not isinstance(key, Ext | msgpack.Timestamp) else _ext_name(key))
    return f"map keys must be strings, got {type(key).__name__} {shown[:40]}"


def _ext_name(value: Any) -> str:
    if isinstance(value, msgpack.Timestamp) or (isinstance(value, Ext) and value.code == -1):
        return "msgpack timestamp"
    return f"msgpack extension type {value.code}"


# -- frames -------------------------------------------------------------------

def hello(role: str, **extra: Any) -> dict[str, Any]:
    """The first frame each side sends."""
    return {"type": "hello", "protocol": PROTOCOL_VERSION, role: True, **extra}


def request(req_id: int, method: str, params: dict[str, Any] | None = None,
            *, timeout: float | None = None) -> dict[str, Any]:
    frame = {"type": "request", "id": req_id, "method": method, "params": params or {}}
    if timeout is not None:
        frame["timeout"] = timeout
    return frame


def reply(req_id: int, result: Any) -> dict[str, Any]:
    return {"type": "reply", "id": req_id, "result": result}


def error(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": req_id, "code": code, "message": message}


def event(req_id: int, data: Any) -> dict[str, Any]:
    return {"type": "event", "id": req_id, "data": data}


def end(req_id: int) -> dict[str, Any]:
    return {"type": "end", "id": req_id}
