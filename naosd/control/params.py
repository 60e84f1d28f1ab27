"""Declarative request-parameter checking (pure).

Each method declares ``{"name": Spec}``; :func:`check` turns the raw params
of a request into validated values or raises InvalidRequest naming the
method, the parameter and the reason.  Unknown parameters are refused, so a
typo never silently does nothing.  A binary value is accepted only by a
parameter whose kind includes ``bytes`` (the server already refused binary
anywhere deeper, see ``naosd.values.check_values``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from naosd.errors import InvalidRequest

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Spec:
    kind: type | tuple[type, ...]
    default: Any = _MISSING
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    max_len: int = 4096
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def type_name(self) -> str:
        """``str``, ``int``, ``bool``, ``float``, ``dict`` (map), ``list``,
        ``bytes`` (bin), ``object`` (any value); ``int|float`` for either."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return "|".join(k.__name__ for k in kinds)

    def describe(self) -> dict[str, Any]:
        """What ``methods`` says about the parameter."""
        out: dict[str, Any] = {"required": self.required, "type": self.type_name}
        if not self.required:  # JSON-safe: the dashboard serves this list too
            default = self.default
            out["default"] = default.decode() if isinstance(default, bytes) else default
        if self.choices:
            out["choices"] = list(self.choices)
        if str in (self.kind if isinstance(self.kind, tuple) else (self.kind,)):
            out["max_len"] = self.max_len
        if self.lo is not None or self.hi is not None:
            out["range"] = [self.lo, self.hi]
        return out

    @property
    def takes_binary(self) -> bool:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return bytes in kinds

    def convert(self, value: Any) -> Any:
        if value is None and not self.required and self.default is None:
            return None
        if isinstance(value, bytes) and not self.takes_binary:
            raise ValueError("binary values are not allowed (send text or JSON values)")
        if isinstance(value, bool) and self.kind is not bool:
            raise ValueError("expected a number or string, got a boolean")
        if not isinstance(value, self.kind):
            raise ValueError(f"expected {_kind_name(self.kind)}, got {type(value).__name__}")
        if isinstance(value, int) and not isinstance(value, bool):
            self._check_range(value)
        if isinstance(value, str):
            self._check_text(value)
        return value

    def _check_range(self, value: int) -> None:
        if self.lo is not None and value < self.lo:
            raise ValueError(f"must be at least {self.lo}, got {value}")
        if self.hi is not None and value > self.hi:
            raise ValueError(f"must be at most {self.hi}, got {value}")

    def _check_text(self, value: str) -> None:
        if len(value) > self.max_len:
            raise ValueError(f"longer than {self.max_len} characters")
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {value!r}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", int: "an integer", str: "a string", dict: "a map",
             list: "a list", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def Str(default: Any = _MISSING, **kw: Any) -> Spec:
    return Spec(str, default, **kw)


def Int(default: Any = _MISSING, **kw: Any) -> Spec:
    return Spec(int, default, **kw)


def Bool(default: Any = _MISSING, **kw: Any) -> Spec:
    return Spec(bool, default, **kw)


def check(method: str, specs: Mapping[str, Spec], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against ``specs``; raises InvalidRequest."""
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        allowed = ", ".join(sorted(specs)) or "none"
        raise InvalidRequest(
            f"{method}: unknown parameter(s) {', '.join(unknown)} (allowed: {allowed})"
        )
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in raw:
            if spec.required:
                raise InvalidRequest(f"{method}: missing required parameter {name!r}")
            out[name] = spec.default
            continue
        try:
            out[name] = spec.convert(raw[name])
        except ValueError as exc:
            raise InvalidRequest(f"{method}: parameter {name!r}: {exc}") from None
    return out


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> str:
    """``"15m"``, ``"2h"``, ``"1d"`` or an ISO-8601 time -> UTC ISO string
    comparable with audit timestamps.  Raises InvalidRequest."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return _iso(now - delta)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"since: {text!r} is neither a duration like 15m/2h/1d "
            "nor an ISO-8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _iso(when)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
