"""Traces, optional: the hooks naosd's request, agent and spending paths call.

Off (the default, and always without the ``otel`` extra) every hook is a
no-op that allocates nothing: :func:`span` returns one shared do-nothing span,
:func:`attached` the same object as a do-nothing context, :func:`carrier` an
empty map, and nothing of OpenTelemetry is imported.  :func:`start` (naosd.main,
when ``telemetry.enabled``) installs the real tracer of
:mod:`naosd.telemetry.otel`, which exports spans over OTLP/HTTP.

Context crosses boundaries as a W3C ``traceparent`` carrier (``{"traceparent":
"00-<trace id>-<span id>-<flags>"}``): a client's request envelope, an agent
channel's ``run`` parameters (so a ``ctx.ask`` chain is one trace), and the
header of each request to the LLM server.

The tracer is a module global on purpose: spans open in a handful of places
deep in the services, and OpenTelemetry keeps its own provider global the same
way; threading a tracer through every constructor would add a parameter to
each of them for one cross-cutting concern.

Imports only the standard library and naosd.errors (the otel module imports
opentelemetry).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Protocol

from naosd.errors import ConfigError

AttrValue = str | bool | int | float | Sequence[str]
Kind = Literal["internal", "server", "client"]

TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
"""A version-00 W3C traceparent (https://www.w3.org/TR/trace-context/)."""


class Span(Protocol):
    """What a hook may do with its span; ``recording`` is False when tracing
    is off (build attributes only when it is True)."""

    @property
    def recording(self) -> bool: ...

    def set(self, key: str, value: AttrValue | None) -> None:
        """Set one attribute (None: leave it unset)."""
        ...

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None: ...


class OpenSpan(Span, Protocol):
    """A span as :func:`span` returns it: attributes may be set before and
    inside the ``with`` block that makes it current and ends it."""

    def __enter__(self) -> Span: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Tracer(Protocol):
    """An installed tracer (:class:`naosd.telemetry.otel.OtelTracer`)."""

    def span(self, name: str, kind: Kind, attributes: Mapping[str, AttrValue] | None
             ) -> OpenSpan: ...

    def attached(self, carrier: Mapping[str, Any]) -> AbstractContextManager[object]: ...

    def carrier(self) -> dict[str, str]: ...

    def shutdown(self, timeout_s: float) -> None: ...


class _Off:
    """The span and the context every hook returns when tracing is off."""

    __slots__ = ()
    recording: Final = False

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def set(self, key: str, value: AttrValue | None) -> None:
        return None

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None:
        return None


OFF: Final = _Off()
_tracer: Tracer | None = None


def span(name: str, kind: Kind = "internal",
         attributes: Mapping[str, AttrValue] | None = None) -> OpenSpan:
    """A span, current for the ``with`` block, child of the current one.  An
    exception leaving the block marks it failed with ``error.type`` (a naos
    error's wire code)."""
    tracer = _tracer
    if tracer is None:
        return OFF
    return tracer.span(name, kind, attributes)


def attached(carrier: Mapping[str, Any]) -> AbstractContextManager[object]:
    """Make the context ``carrier`` holds (its ``traceparent``) current for the
    ``with`` block; an empty or unreadable carrier changes nothing."""
    tracer = _tracer
    if tracer is None or not carrier:
        return OFF
    return tracer.attached(carrier)


def carrier() -> dict[str, str]:
    """The current context as a carrier (``{}`` when off or outside a span)."""
    tracer = _tracer
    return {} if tracer is None else tracer.carrier()


def enabled() -> bool:
    return _tracer is not None


def check_traceparent(value: Any, where: str) -> str:
    """``value`` if it is a version-00 W3C traceparent.

    Raises:
        ValueError: naming ``where`` and the expected form.
    """
    if isinstance(value, str) and (match := TRACEPARENT.fullmatch(value)) \
            and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        return value
    shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
    raise ValueError(f"{where} must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, "
                     f"ids not all zero), got {shown}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Where spans go (``telemetry.*`` in naosd's configuration)."""

    endpoint: str  # OTLP/HTTP traces URL; "" = the OTEL_EXPORTER_OTLP_* variables
    service_name: str
    resource: Mapping[str, str]


def start(settings: Settings) -> None:
    """Install the OpenTelemetry tracer (once, before any span is opened).

    Raises:
        ConfigError: the ``otel`` extra is not installed.
    """
    global _tracer
    try:
        from naosd.telemetry.otel import OtelTracer
    except ImportError as exc:
        raise ConfigError(f"telemetry.enabled needs the otel extra "
                          f"(pip install 'naos[otel]'): {exc}") from None
    _tracer = OtelTracer(settings)


def stop(timeout_s: float = 5.0) -> None:
    """Export what is left (at most ``timeout_s``) and turn tracing off."""
    global _tracer
    tracer, _tracer = _tracer, None
    if tracer is not None:
        tracer.shutdown(timeout_s)
