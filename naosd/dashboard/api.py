"""The dashboard's versioned JSON API (``/api/v1/...``), its Server-Sent
Events stream and ``/metrics``.  Scripts can use them too, with
``Authorization: Bearer <token>``.

The SSE stream sends every audit row (``event: audit``) and every agent log
line (``event: log``) as it is written.  Each event's ``id`` is the cursor
``AUDIT_SEQ.LOG_ID`` after it, so a client that reconnects with
``Last-Event-ID`` gets exactly what it missed of both (the audit log and the
log table are the durable history); a bare ``AUDIT_SEQ`` resumes the audit
rows and starts the log lines from now.

Read-only control API methods are also served as REST resources (see
:data:`RESOURCES`), so the page and scripts see the same data naosctl does."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from naosd.control.params import parse_since
from naosd.dashboard import queries
from naosd.errors import NaosError
from naosd.services import Services
from naosd.storage import definitions as defs_store

log = logging.getLogger("naosd.dashboard")

SERVICES = web.AppKey("services", Services)
STREAMS = web.AppKey("streams", set)
HEARTBEAT_S = 15.0
POLL_S = 0.5


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None
    return max(lo, min(hi, value))


_HTTP_ERRORS: dict[str, type[web.HTTPException]] = {
    "invalid_request": web.HTTPBadRequest, "config_error": web.HTTPBadRequest,
    "not_found": web.HTTPNotFound, "conflict": web.HTTPConflict,
    "already_running": web.HTTPConflict, "not_running": web.HTTPConflict,
    "permission_denied": web.HTTPForbidden, "timeout": web.HTTPGatewayTimeout,
    "actor_timeout": web.HTTPGatewayTimeout, "unavailable": web.HTTPServiceUnavailable,
    "shutting_down": web.HTTPServiceUnavailable,
}


def _error(exc: NaosError) -> web.HTTPException:
    body = json.dumps({"error": exc.code, "message": exc.message})
    cls = _HTTP_ERRORS.get(exc.code, web.HTTPInternalServerError)
    return cls(text=body, content_type="application/json")


async def agents(request: web.Request) -> web.StreamResponse:
    d = request.app[SERVICES]
    views = await d.agents.list()
    stats = await d.db.call(defs_store.run_stats)
    spend = await d.db.call(queries.ledger_spend)
    for view in views:
        view.update(stats.get(view["name"]) or
                    {"messages": 0, "failures": 0, "cost_micro_usd": 0, "last_run": None})
        view["cost_micro_usd"] += spend.get(view["name"], 0)  # its tasks through the broker
    return web.json_response(views)


async def agent(request: web.Request) -> web.StreamResponse:
    d = request.app[SERVICES]
    name = request.match_info["name"]
    try:
        view = await d.agents.describe(name)
        view["logs"] = await d.db.call(lambda s: defs_store.read_logs(s, name, n=50))
        view["runs"] = await d.db.call(lambda s: defs_store.recent_runs(s, name, n=20))
    except NaosError as exc:
        raise _error(exc) from None
    return web.json_response(view)


async def logs(request: web.Request) -> web.StreamResponse:
    """Log lines of every agent, deleted ones included: the last ``n``, or
    those after id ``after``; ``agent=`` narrows to one."""
    n = _int(request, "n", 200, 1, 5_000)
    after = _int(request, "after", 0, 0, 2**62)
    name = request.query.get("agent") or None
    lines = await request.app[SERVICES].db.call(
        lambda s: defs_store.read_logs(s, name, n=n, after=after))
    return web.json_response(lines)


async def tree(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[SERVICES].agents.tree())


async def audit(request: web.Request) -> web.StreamResponse:
    d = request.app[SERVICES]
    n = _int(request, "n", 100, 1, 10_000)
    agent_name = request.query.get("agent") or None
    type_ = request.query.get("type") or None
    query = request.query.get("q", "").strip()
    try:
        since = parse_since(request.query["since"], _now()) if request.query.get("since") \
            else None
        if query:
            rows = await d.db.call(lambda s: s.audit_search(
                query, limit=n, agent=agent_name, type=type_, since=since))
        else:
            rows = await d.db.call(lambda s: s.audit_tail(
                n, agent=agent_name, type=type_, since=since))
    except NaosError as exc:
        raise _error(exc) from None
    return web.json_response([r.to_dict() for r in rows])


async def audit_verify(request: web.Request) -> web.StreamResponse:
    result = await request.app[SERVICES].db.call(lambda s: s.verify_audit())
    return web.json_response({"ok": result.ok, "checked": result.checked,
                              "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                              "head_seq": result.head_seq})


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def events(request: web.Request) -> web.StreamResponse:
    """SSE: every audit row from ``Last-Event-ID`` (or from now) on."""
    d = request.app[SERVICES]
    task = asyncio.current_task()
    request.app[STREAMS].add(task)
    try:  # cancelled by _end_streams when the dashboard stops
        return await _stream(request, d)
    finally:
        request.app[STREAMS].discard(task)


async def _stream(request: web.Request, d: Any) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    try:
        await _pump(request, response, d)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: a tab was closed
        log.debug("event stream: the client went away")
    return response


async def _pump(request: web.Request, response: web.StreamResponse, d: Any) -> None:
    """Write events until the client goes away (ConnectionResetError) or the
    dashboard stops (cancelled)."""
    await response.prepare(request)
    audit_seq, log_id = _last_event_id(request)
    if audit_seq is None:
        head = await d.db.call(lambda s: s.audit_head())
        audit_seq = head.seq if head else 0
    if log_id is None:
        log_id = await d.db.call(defs_store.log_head)
    await response.write(b"retry: 2000\n\n")

    def fetch(store: Any, cursor: tuple[int, int]) -> tuple[list[bytes], tuple[int, int]]:
        seq, lid = cursor
        events = []
        for row in store.audit_after(seq, limit=500):
            seq = row.seq
            events.append(_event("audit", f"{seq}.{lid}", row.to_dict()))
        for line in defs_store.logs_after(store, lid, limit=500):
            lid = line["id"]
            events.append(_event("log", f"{seq}.{lid}", line))
        return events, (seq, lid)

    idle = 0.0
    async for events in d.db.follow(fetch, (audit_seq, log_id), poll_s=POLL_S):
        if events:
            await response.write(b"".join(events))
        idle = 0.0 if events else idle + POLL_S
        if idle >= HEARTBEAT_S:  # keeps proxies from closing an idle stream
            await response.write(b": heartbeat\n\n")
            idle = 0.0


def _event(kind: str, event_id: str, data: dict[str, Any]) -> bytes:
    body = json.dumps(data, ensure_ascii=False)
    return f"id: {event_id}\nevent: {kind}\ndata: {body}\n\n".encode()


def _last_event_id(request: web.Request) -> tuple[int | None, int | None]:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None:
        return None, None
    seq, _, lid = raw.partition(".")
    try:
        return max(0, int(seq)), (max(0, int(lid)) if lid else None)
    except ValueError:
        raise web.HTTPBadRequest(
            text="Last-Event-ID must be AUDIT_SEQ or AUDIT_SEQ.LOG_ID\n") from None


async def metrics(request: web.Request) -> web.StreamResponse:
    from naosd.dashboard.metrics import render

    d = request.app[SERVICES]
    if d.metrics is not None:
        await d.metrics.catch_up()  # what was committed before this scrape
    body, content_type = render(await _snapshot(d),
                                d.metrics.registry if d.metrics is not None else None)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _snapshot(d: Any) -> dict[str, Any]:
    status = await d.daemon.status()
    agent_views = await d.agents.list()
    budgets = d.broker.cost.status(datetime.now(UTC)) if d.broker is not None else []
    try:
        pools = await d.pools.status() if d.pools is not None else []
    except NaosError:  # a pool deleted while it was read: the next scrape has it right
        pools = []
    return {"status": status, "agents": agent_views, "budgets": budgets, "pools": pools}


async def _end_streams(app: web.Application) -> None:
    for task in list(app[STREAMS]):
        task.cancel()


RESOURCES: dict[str, str] = {
    # /api/v1/<path> -> a read-only control API method; path parameters and
    # query parameters become the method's parameters (checked by its Spec).
    "supervisors": "supervisor.list",
    "methods": "methods",
    "sagas": "saga.list",
    "workflows": "workflow.list",
    "cluster/nodes": "cluster.nodes",
}
"""Served only when the method is registered (features register their own)."""


ACTIONS: dict[str, str] = {
    # POST /api/v1/<path> -> a state-changing control API method; the JSON body
    # and path parameters become its parameters.  Guarded by Origin + CSRF.
    "agents/{name}/start": "agent.start",
    "agents/{name}/stop": "agent.stop",
    "agents/{name}/kill": "agent.kill",
}


def _query_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # a plain string


Route = Callable[[Mapping[str, str]], tuple[str, dict[str, Any]]]
"""Path parameters -> the method to call and the parameters the path gives it."""


def _resource(route: Route) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        from naosd.control.api import invoke

        if request.method == "POST":
            given = await _json_body(request)
        else:
            given = {k: _query_value(v) for k, v in request.query.items()}
        try:
            method_name, from_path = route(request.match_info)
            result = await invoke(request.app[SERVICES], method_name, {**given, **from_path},
                                  by="dashboard")  # who approved, rejected, cancelled
        except NaosError as exc:
            raise _error(exc) from None
        return web.json_response(result)

    return handler


def _fixed(method_name: str) -> Route:
    return lambda path: (method_name, dict(path))


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the request body is not JSON\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object\n")
    return body


def add_resource(app: web.Application, path: str, method_name: str,
                 http_method: str = "GET") -> None:
    entry = app[SERVICES].methods.get(method_name)
    if entry is not None and not entry.stream:
        app.router.add_route(http_method, "/api/v1/" + path, _resource(_fixed(method_name)))


def add_routes(app: web.Application) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/api/v1/agents", agents)
    app.router.add_get("/api/v1/agents/{name}", agent)
    app.router.add_get("/api/v1/tree", tree)
    app.router.add_get("/api/v1/audit", audit)
    app.router.add_get("/api/v1/audit/verify", audit_verify)
    app.router.add_get("/api/v1/logs", logs)
    app.router.add_get("/api/v1/events", events)
    for path, method_name in RESOURCES.items():
        add_resource(app, path, method_name)
    for path, method_name in ACTIONS.items():
        add_resource(app, path, method_name, "POST")
    from naosd.dashboard.features import add_views
    from naosd.dashboard.runs import action_call

    add_views(app, SERVICES, _error)
    # a run's actions (retry_compensation, resolve, cancel, approve, reject): 404 when
    # this build has no method for the verb, see naosd/dashboard/runs.py
    methods = app[SERVICES].methods
    app.router.add_post("/api/v1/runs/{kind}/{run}/{verb}",
                        _resource(lambda path: action_call(path, methods)))
    app.router.add_get("/metrics", metrics)

