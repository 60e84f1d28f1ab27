"""The method table: ``"audit.tail"`` -> handler, with declared parameters.

Handlers are small: validate (declaratively), call the daemon's parts,
return plain msgpack-able data.  Streaming handlers are async generators.
``methods`` lists everything, so clients in other languages can discover it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from naosd import deadline
from naosd.control.params import Bool, Int, Spec, Str, check, parse_since
from naosd.control.server import Call, Dispatcher, Streaming, Unary
from naosd.errors import InvalidRequest, RequestTimeout

if TYPE_CHECKING:
    from naosd.daemon import Daemon
    from naosd.storage.audit import AuditRow
    from naosd.storage.store import Store

Handler = Callable[["Daemon", dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    handler: Handler
    params: Mapping[str, Spec] = field(default_factory=dict)
    stream: bool = False
    doc: str = ""
    deadline: str | None = None  # the parameter holding the caller's own timeout (s)


METHODS: dict[str, Method] = {}


def method(
    method_name: str, /, *, stream: bool = False, deadline: str | None = None, **params: Spec
) -> Callable[[Handler], Handler]:
    """Register a handler.  ``deadline`` names a parameter in which the client
    sends how long it waits (seconds): given, it replaces ``daemon.request_timeout``
    for that request, so a caller that waits longer is not cut at the default."""
    def register(fn: Handler) -> Handler:
        METHODS[method_name] = Method(method_name, fn, params, stream,
                                      (fn.__doc__ or "").strip(), deadline)
        return fn

    return register


async def invoke(daemon: Daemon, name: str, given: Mapping[str, Any]) -> Any:
    """Run unary method ``name`` in process, its parameters checked by its
    Spec as on the socket (the dashboard's resources and views use this)."""
    entry = METHODS[name]
    return await entry.handler(daemon, check(name, entry.params, dict(given)))


class Api(Dispatcher):
    """Binds the method table to one daemon for the server."""

    def __init__(self, daemon: Daemon, methods: Mapping[str, Method] = METHODS) -> None:
        self._daemon = daemon
        self._methods = methods

    def lookup(self, name: str) -> tuple[Unary | None, Streaming | None]:
        entry = self._methods.get(name)
        if entry is None:
            return None, None
        if entry.stream:
            return None, self._streamer(entry)
        return self._unary(entry), None

    def _unary(self, entry: Method) -> Unary:
        async def run(call: Call) -> Any:
            params = check(entry.name, entry.params, call.params)
            timeout = _timeout(entry, params, self._daemon.config.request_timeout)
            result: Awaitable[Any] = entry.handler(self._daemon, params)
            scope = asyncio.timeout(timeout)
            try:
                with deadline.scope(timeout):
                    async with scope:
                        return await result
            except TimeoutError:
                if not scope.expired():
                    raise  # the handler's own timeout error, with its own message
                raise RequestTimeout(
                    f"{entry.name} did not finish within {timeout:g}s") from None

        return run

    def _streamer(self, entry: Method) -> Streaming:
        async def run(call: Call) -> AsyncIterator[Any]:
            params = check(entry.name, entry.params, call.params)
            agen: AsyncIterator[Any] = entry.handler(self._daemon, params)
            async for item in agen:
                yield item

        return run


MAX_DEADLINE_S = 86400.0


def _timeout(entry: Method, params: dict[str, Any], default: float) -> float:
    """The request's timeout: the client's own if the method takes one, else ``default``."""
    given = params.get(entry.deadline) if entry.deadline is not None else None
    if given is None:
        return default
    if not 0 < given <= MAX_DEADLINE_S:
        raise InvalidRequest(f"{entry.name}: parameter {entry.deadline!r} must be more than 0 "
                             f"and at most {MAX_DEADLINE_S:g} seconds, got {given!r}")
    return float(given)


# ---------------------------------------------------------------------------
# daemon
# ---------------------------------------------------------------------------


@method("ping")
async def ping(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Answer at once: proves the daemon's control loop is alive."""
    return {"pong": True, "pid": os.getpid(), "time": _now_iso()}


@method("actors.ping")
async def actors_ping(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Round trip through the root supervisor actor."""
    return await d.actors_ping()


@method("status")
async def status(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Daemon version, uptime, pid, paths and the actor tree with states."""
    return await d.status()


@method("shutdown")
async def shutdown(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Stop gracefully (same as SIGTERM)."""
    d.request_stop("naosctl shutdown")
    return {"stopping": True, "pid": os.getpid()}


@method("config.reload")
async def config_reload(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Re-read the configuration file (same as SIGHUP)."""
    return await d.reload_config("naosctl")


@method("config.show")
async def config_show(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """The effective configuration and where each value came from."""
    return {"config": d.config.to_toml_dict(), "sources": dict(d.config.sources),
            "file": str(d.config.config_file), "loaded": d.config.config_file_loaded}


@method("dashboard.url")
async def dashboard_url(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's address with its login token."""
    return d.dashboard_info(with_token=True)


@method("methods")
async def list_methods(d: Daemon, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method with its parameters."""
    return [
        {"name": m.name, "stream": m.stream, "doc": m.doc,
         "params": {k: {"required": s.required, "type": _type_name(s)}
                    for k, s in m.params.items()}}
        for m in sorted(METHODS.values(), key=lambda m: m.name)
    ]


def _type_name(spec: Spec) -> str:
    kind = spec.kind if isinstance(spec.kind, type) else spec.kind[0]
    return kind.__name__


# ---------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------

_FILTERS = {"agent": Str(None, max_len=64), "type": Str(None, max_len=128),
            "since": Str(None, max_len=64)}


def _filters(p: dict[str, Any]) -> dict[str, Any]:
    since = parse_since(p["since"], datetime.now(UTC)) if p["since"] else None
    return {"agent": p["agent"], "type": p["type"], "since": since}


@method("audit.tail", stream=True, n=Int(20, lo=0, hi=100_000),
        follow=Bool(False), **_FILTERS)
async def audit_tail(d: Daemon, p: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The last n audit rows; with follow, keep streaming new ones."""
    filters = _filters(p)
    rows = await d.db.call(lambda s: s.audit_tail(p["n"], **filters))
    last = rows[-1].seq if rows else await _head_seq(d)
    for row in rows:
        yield row.to_dict()
    if not p["follow"]:
        return

    def fetch(store: Store, after: int) -> tuple[list[AuditRow], int]:
        # Filtered: when nothing matched, skip past what was scanned.  The head
        # is read first, so a row appended meanwhile is above it, not skipped.
        head = store.audit_head()
        rows = store.audit_after(after, agent=filters["agent"], type=filters["type"])
        if rows:
            return rows, rows[-1].seq
        return rows, max(after, head.seq if head else 0)

    async for batch in d.db.follow(fetch, last):
        for row in batch:
            yield row.to_dict()


@method("events", stream=True, **_FILTERS)
async def events(d: Daemon, p: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Everything that happens from now on, as audit rows, until cancelled."""
    async for row in audit_tail(d, {**p, "n": 0, "follow": True}):
        yield row


async def _head_seq(d: Daemon) -> int:
    head = await d.db.call(lambda s: s.audit_head())
    return head.seq if head else 0


@method("audit.search", query=Str(max_len=1024), limit=Int(100, lo=1, hi=100_000),
        **_FILTERS)
async def audit_search(d: Daemon, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose type, actor, agent or detail contain the query."""
    if not p["query"].strip():
        raise InvalidRequest("audit.search: the query is empty")
    filters = _filters(p)
    rows = await d.db.call(
        lambda s: s.audit_search(p["query"], limit=p["limit"], **filters))
    return [r.to_dict() for r in rows]


@method("audit.verify")
async def audit_verify(d: Daemon, p: dict[str, Any]) -> dict[str, Any]:
    """Walk the whole hash chain and check it against the head checkpoint."""
    result = await d.db.call(lambda s: s.verify_audit())
    return {"ok": result.ok, "checked": result.checked,
            "first_bad_seq": result.first_bad_seq, "reason": result.reason,
            "head_seq": result.head_seq, "head_hash": result.head_hash}


@method("audit.export", stream=True, batch=Int(500, lo=1, hi=10_000), **_FILTERS)
async def audit_export(d: Daemon, p: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
    """Every matching row, in batches (a list per event), oldest first."""
    filters = _filters(p)
    last = 0
    while True:
        rows = await d.db.call(
            lambda s, last=last: s.audit_after(last, agent=filters["agent"],
                                               type=filters["type"], limit=p["batch"]))
        since = filters["since"]
        rows_out = [r for r in rows if r.ts >= since] if since else rows
        if rows_out:
            yield [r.to_dict() for r in rows_out]
        if len(rows) < p["batch"]:
            return
        last = rows[-1].seq


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
