"""Which values may cross a socket into naosd: those JSON could hold (a leaf:
stdlib + msgpack).

nil, booleans, integers, finite floats, strings, arrays and maps with string
keys, nested at most :data:`MAX_DEPTH` deep; binary only directly under one
named key (a request's ``params``: each method declares which parameters
take binary).  :func:`check_values` names the path of the first bad value
(``params.input.a[3]: binary values are not allowed``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from naosd.errors import InvalidRequest

MAX_DEPTH = 64  # nested arrays and maps, the frame's own map being the first


@dataclass(frozen=True, slots=True)
class Ext:
    """A msgpack extension value (``code`` -1 is a timestamp), decoded as a
    marker so that check_values can name where it was; its data is dropped."""

    code: int


class TooManyValues(ValueError):
    """A frame holds more values than its limit."""


def _ext_marker(code: int, data: bytes) -> Ext:
    return Ext(code)


def decode_hooks(limit: int) -> dict[str, Callable[..., Any]]:
    """msgpack hooks for one frame: extension values become :class:`Ext`
    markers, and values are counted as containers are built, stopping the
    decoder once ``limit`` is passed (before the rest is built)."""
    seen = [0]

    def count(container: Any, weight: int) -> Any:
        seen[0] += 1 + weight * len(container)  # itself, then its entries
        if seen[0] > limit:
            raise TooManyValues(f"more than {limit} values in one frame")
        return container

    return {"ext_hook": _ext_marker, "list_hook": lambda items: count(items, 1),
            "object_hook": lambda mapping: count(mapping, 2)}


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
