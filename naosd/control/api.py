"""The method table: ``"audit.tail"`` -> handler, with declared parameters.

Handlers are small: validate (declaratively), call the services (``Services``),
return plain msgpack-able data.  Streaming handlers are async generators.
``methods`` lists everything, so clients in other languages can discover it.

Each method declares, where it is declared, the role it needs
(``role="read"`` or ``"operate"``, naosd.control.roles): ``read`` only for
what changes nothing, spends nothing, runs no code and reveals no secret.
The default is ``operate``: a forgotten declaration fails closed.

A method that records who made a decision (``caller=True``: cancel, approve,
reject, schedules) gets it as ``p["by"]``, filled in here and never taken
from the client: ``uid:N`` from the connection's peer credentials, or what
an in-process caller says (the dashboard, an MCP identity).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from naosd import deadline, telemetry
from naosd.control.params import Bool, Int, Spec, Str, check, parse_since
from naosd.control.roles import READ
from naosd.control.server import Call, Dispatcher, Streaming, Unary
from naosd.control.table import Method, MethodTable
from naosd.errors import AuditError, InvalidRequest, RequestTimeout
from naosd.storage import origin

if TYPE_CHECKING:
    from naosd.services import Services
    from naosd.storage.audit import AuditRow
    from naosd.storage.store import Store

Handler = Callable[["Services", dict[str, Any]], Any]


METHODS = MethodTable("daemon")  # this module's methods: ping, status, audit.*, ...
method = METHODS.method


async def invoke(services: Services, name: str, given: Mapping[str, Any], *,
                 by: str | None = None) -> Any:
    """Run unary method ``name`` in process, its parameters checked by its
    Spec as on the socket (the dashboard's resources and views use this).
    ``by`` says who calls (default: the origin in force, e.g. ``mcp:NAME``)."""
    entry = services.methods[name]
    params = check(name, entry.params, dict(given))
    if entry.caller:
        params["by"] = by or _origin_name()
    with telemetry.span(name, "server") as span:
        if span.recording:
            span.update({"rpc.system": "naos", "rpc.method": name, "naos.transport": "http"})
        return await entry.handler(services, params)


def _origin_name() -> str:
    who = origin.current()
    return f"{who['via']}:{who['as']}" if who else "naosd"


class Api(Dispatcher):
    """Binds the method table to the services for the server."""

    def __init__(self, services: Services, methods: Mapping[str, Method] | None = None
                 ) -> None:
        self._services = services
        self._methods = services.methods if methods is None else methods

    def lookup(self, name: str) -> tuple[Unary | None, Streaming | None]:
        entry = self._methods.get(name)
        if entry is None:
            return None, None
        if entry.stream:
            return None, self._streamer(entry)
        return self._unary(entry), None

    def role_of(self, name: str) -> str | None:
        entry = self._methods.get(name)
        return None if entry is None else entry.role

    def _unary(self, entry: Method) -> Unary:
        async def run(call: Call) -> Any:
            params = check(entry.name, entry.params, call.params)
            if entry.caller:  # the kernel's word for who connected, never the client's
                params["by"] = f"uid:{call.peer.uid}"
            timeout = request_timeout(entry, params, call, self._services.config.request_timeout)
            result: Awaitable[Any] = entry.handler(self._services, params)
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
            agen: AsyncIterator[Any] = entry.handler(self._services, params)
            async for item in agen:
                yield item

        return run


MAX_DEADLINE_S = 86400.0


def request_timeout(entry: Method, params: dict[str, Any], call: Call, default: float) -> float:
    """One deadline per request: the smaller of the client's own (the envelope's
    ``timeout``, or the method's timeout parameter) and, when the client gave
    none, ``default`` (``daemon.request_timeout``).  The handler and everything
    below it see it as :func:`naosd.deadline.current`."""
    bounds: list[float] = []
    if call.deadline is not None:
        bounds.append(max(call.deadline - time.monotonic(), 0.0))
    given = params.get(entry.deadline) if entry.deadline is not None else None
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int | float) \
                or not 0 < given <= MAX_DEADLINE_S:
            raise InvalidRequest(f"{entry.name}: parameter {entry.deadline!r} must be more "
                                 f"than 0 and at most {MAX_DEADLINE_S:g} seconds, "
                                 f"got {given!r}")
        bounds.append(float(given))
    return min(bounds) if bounds else default


# ---------------------------------------------------------------------------
# daemon
# ---------------------------------------------------------------------------


@method("ping", role=READ)
async def ping(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Answer at once: proves the daemon's control loop is alive."""
    return {"pong": True, "pid": os.getpid(), "time": _now_iso()}


@method("actors.ping", role=READ)
async def actors_ping(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Round trip through the root supervisor actor."""
    return await d.daemon.actors_ping()


@method("status", role=READ)
async def status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Daemon version, uptime, pid, paths, the actor tree with states and which
    confinement mechanisms this kernel offers agent code."""
    from naosd.control.confinement_view import support_view

    result = await d.daemon.status()
    result["confinement"] = await asyncio.to_thread(support_view)
    return result


@method("shutdown")
async def shutdown(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop gracefully (same as SIGTERM)."""
    d.daemon.request_stop("naosctl shutdown")
    return {"stopping": True, "pid": os.getpid()}


@method("config.reload")
async def config_reload(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Re-read the configuration file (same as SIGHUP)."""
    return await d.daemon.reload_config("naosctl")


@method("config.show")
async def config_show(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The effective configuration and where each value came from."""
    return {"config": d.config.to_toml_dict(), "sources": dict(d.config.sources),
            "file": str(d.config.config_file), "loaded": d.config.config_file_loaded}


@method("dashboard.url")
async def dashboard_url(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's address with its login token."""
    return d.daemon.dashboard_info(with_token=True)


@method("methods", role=READ)
async def list_methods(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method with the role it needs and its parameters: type, required, default."""
    return [
        {"name": m.name, "stream": m.stream, "role": m.role, "doc": m.doc,
         "params": {k: s.describe() for k, s in m.params.items()}}
        for m in sorted(d.methods.values(), key=lambda m: m.name)
    ]


# ---------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------

class _Filters(TypedDict):  # typed keys: a ** of it cannot pass for stream or role
    agent: Spec
    type: Spec
    since: Spec


_FILTERS = _Filters(agent=Str(None, max_len=64), type=Str(None, max_len=128),
                    since=Str(None, max_len=64))


def _filters(p: dict[str, Any]) -> dict[str, Any]:
    since = parse_since(p["since"], datetime.now(UTC)) if p["since"] else None
    return {"agent": p["agent"], "type": p["type"], "since": since}


@method("audit.tail", stream=True, role=READ, n=Int(20, lo=0, hi=100_000),
        follow=Bool(False), **_FILTERS)
async def audit_tail(d: Services, p: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
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


@method("events", stream=True, role=READ, **_FILTERS)
async def events(d: Services, p: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Everything that happens from now on, as audit rows, until cancelled."""
    async for row in audit_tail(d, {**p, "n": 0, "follow": True}):
        yield row


async def _head_seq(d: Services) -> int:
    head = await d.db.call(lambda s: s.audit_head())
    return head.seq if head else 0


@method("audit.search", role=READ, query=Str(max_len=1024), limit=Int(100, lo=1, hi=100_000),
        **_FILTERS)
async def audit_search(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose type, actor, agent or detail contain the query."""
    if not p["query"].strip():
        raise InvalidRequest("audit.search: the query is empty")
    filters = _filters(p)
    rows = await d.db.call(
        lambda s: s.audit_search(p["query"], limit=p["limit"], **filters))
    return [r.to_dict() for r in rows]


@method("audit.verify", role=READ, anchor=Spec(dict, None))
async def audit_verify(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Walk the whole hash chain and check it against the head checkpoint and,
    given an exported head (anchor, from audit.head export), against that."""
    from naosd.storage.anchor import checkpoint_state
    from naosd.storage.audit import parse_head

    try:
        anchor = parse_head(p["anchor"]) if p["anchor"] is not None else None
    except AuditError as exc:
        raise InvalidRequest(f"anchor: {exc.message}") from None

    def verify(store: Store) -> tuple[Any, dict[str, Any]]:
        return store.verify_audit(anchor), checkpoint_state(store)

    result, checkpoint = await d.db.call(verify)
    return {"ok": result.ok, "checked": result.checked,
            "first_bad_seq": result.first_bad_seq, "reason": result.reason,
            "head_seq": result.head_seq, "head_hash": result.head_hash,
            "alert_seq": result.alert_seq, "checkpoint": checkpoint,
            "anchor": anchor.to_dict() if anchor else None}


@method("audit.head", role=READ, export=Bool(False))
async def audit_head(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The log's head (seq, hash, ts); with export, signed with the audit key
    (HMAC-SHA256) to be kept outside the machine and given to verify later."""
    from naosd.storage.anchor import export_head

    head = await d.db.call(export_head)
    return head.to_dict() if p["export"] else {"seq": head.seq, "hash": head.hash,
                                                "ts": head.ts}


@method("audit.reanchor", confirm=Bool(False))
async def audit_reanchor(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Accept the log as it is now and restart the checkpoint from its head,
    after investigating a verify failure (audited with the old and new head)."""
    from naosd.storage.anchor import reanchor

    if not p["confirm"]:
        raise InvalidRequest("audit.reanchor accepts the log as it is: pass confirm=true")
    row = await d.db.call(lambda s: reanchor(s, actor="naosctl"))
    await d.db.notify()
    return {"row": row.to_dict(), "checkpoint": {"seq": row.seq, "hash": row.hash}}


@method("audit.export", stream=True, role=READ, batch=Int(500, lo=1, hi=10_000),
        **_FILTERS)
async def audit_export(d: Services, p: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
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
