"""The OpenTelemetry tracer behind :mod:`naosd.telemetry` (the ``otel`` extra).

The only module that imports opentelemetry.  Spans go through the SDK's batch
processor (a thread of its own: exporting never runs on the event loop) to
its OTLP/HTTP exporter.  The provider is naosd's own, not installed as
OpenTelemetry's global one, so libraries naosd loads (the MCP SDK calls the
OpenTelemetry API) do not export through it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from naosd import __version__
from naosd.errors import NaosError
from naosd.telemetry import AttrValue, Kind, Settings

KINDS: Final = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER,
                "client": SpanKind.CLIENT}
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class OtelSpan:
    """One span, current between ``__enter__`` and ``__exit__``."""

    __slots__ = ("_span", "_token")
    recording: Final = True

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> OtelSpan:
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None:
                self._span.set_attribute("error.type", error_type(exc))
                self._span.set_status(Status(StatusCode.ERROR, describe(exc)))
        finally:
            context.detach(self._token)  # type: ignore[arg-type]
            self._span.end()

    def set(self, key: str, value: AttrValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def update(self, attributes: Mapping[str, AttrValue | None]) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})


class _Attached:
    __slots__ = ("_context", "_token")

    def __init__(self, ctx: context.Context) -> None:
        self._context = ctx
        self._token: object = None

    def __enter__(self) -> _Attached:
        self._token = context.attach(self._context)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        context.detach(self._token)  # type: ignore[arg-type]


class OtelTracer:
    def __init__(self, settings: Settings) -> None:
        resource = Resource.create({"service.name": settings.service_name,
                                    "service.version": __version__, **settings.resource})
        # shutdown_on_exit off: naosd stops it itself, within a bound (shutdown()).
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=settings.endpoint or None)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("naosd", __version__)

    def span(self, name: str, kind: Kind, attributes: Mapping[str, AttrValue] | None
             ) -> OtelSpan:
        return OtelSpan(self._tracer.start_span(name, kind=KINDS[kind], attributes=attributes))

    def attached(self, carrier: Mapping[str, Any]) -> _Attached:
        text = {k: v for k, v in carrier.items() if isinstance(v, str)}
        return _Attached(_PROPAGATOR.extract(text))

    def carrier(self) -> dict[str, str]:
        out: dict[str, str] = {}
        _PROPAGATOR.inject(out)
        return out

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued, for at most ``timeout_s``: the SDK's own
        shutdown waits out an export's retries (up to its 10 s timeout) when
        the collector is down, and naosd's stop must not."""
        def flush() -> None:
            self._provider.force_flush(int(timeout_s * 1000))
            self._provider.shutdown()

        worker = threading.Thread(target=flush, name="naosd-otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)


def error_type(exc: BaseException) -> str:
    """``error.type``: a naos error's wire code, else the exception's class."""
    if isinstance(exc, NaosError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return type(exc).__qualname__


def describe(exc: BaseException) -> str:
    return (exc.message if isinstance(exc, NaosError) else str(exc))[:500]
