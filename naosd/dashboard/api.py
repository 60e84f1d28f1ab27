"""The dashboard's versioned JSON API (``/api/v1/...``), its Server-Sent
Events stream and ``/metrics``.  Scripts can use them too, with
``Authorization: Bearer <token>``.

The SSE stream sends every audit row as it is written: ``id`` is the row's
``seq``, so a client that reconnects with ``Last-Event-ID`` gets exactly the
rows it missed (the audit log is the durable event history)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from naosd import defs_store
from naosd.errors import NaosError
from naosd.params import parse_since

DAEMON = web.AppKey("daemon", Any)
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


def _error(exc: NaosError) -> web.HTTPException:
    body = json.dumps({"error": exc.code, "message": exc.message})
    cls = web.HTTPNotFound if exc.code == "not_found" else web.HTTPBadRequest
    return cls(text=body, content_type="application/json")


async def agents(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[DAEMON].agents.list())


async def agent(request: web.Request) -> web.StreamResponse:
    d = request.app[DAEMON]
    name = request.match_info["name"]
    try:
        view = await d.agents.describe(name)
        view["logs"] = await d.db.call(lambda s: defs_store.read_logs(s, name, n=50))
    except NaosError as exc:
        raise _error(exc) from None
    return web.json_response(view)


async def tree(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[DAEMON].agents.tree())


async def audit(request: web.Request) -> web.StreamResponse:
    d = request.app[DAEMON]
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
    result = await request.app[DAEMON].db.call(lambda s: s.verify_audit())
    return web.json_response({"ok": result.ok, "checked": result.checked,
                              "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                              "head_seq": result.head_seq})


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def events(request: web.Request) -> web.StreamResponse:
    """SSE: every audit row from ``Last-Event-ID`` (or from now) on."""
    d = request.app[DAEMON]
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
    await response.prepare(request)
    last = _last_event_id(request)
    if last is None:
        head = await d.db.call(lambda s: s.audit_head())
        last = head.seq if head else 0
    await response.write(b"retry: 2000\n\n")

    def fetch(store: Any, after: int) -> tuple[list[Any], int]:
        rows = store.audit_after(after, limit=500)
        return rows, (rows[-1].seq if rows else after)

    idle = 0.0
    async for rows in d.db.follow(fetch, last, poll_s=POLL_S):
        for row in rows:
            data = json.dumps(row.to_dict(), ensure_ascii=False)
            await response.write(f"id: {row.seq}\nevent: audit\ndata: {data}\n\n".encode())
        idle = 0.0 if rows else idle + POLL_S
        if idle >= HEARTBEAT_S:  # keeps proxies from closing an idle stream
            await response.write(b": heartbeat\n\n")
            idle = 0.0
    return response


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        raise web.HTTPBadRequest(text="Last-Event-ID must be an audit seq\n") from None


async def cost(request: web.Request) -> web.StreamResponse:
    """Budgets and the broker's route/cost statistics (``since``: 1d by default)."""
    from naosd.api_broker import broker_stats, cost_status

    d = request.app[DAEMON]
    try:
        stats = await broker_stats(d, {"since": request.query.get("since", "1d")[:64],
                                       "agent": None})
    except NaosError as exc:
        raise _error(exc) from None
    budgets = (await cost_status(d, {"scope": None}))["budgets"]
    return web.json_response({"budgets": budgets, "stats": stats})


async def metrics(request: web.Request) -> web.StreamResponse:
    from naosd.dashboard.metrics import render

    body, content_type = render(await _snapshot(request.app[DAEMON]))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _snapshot(d: Any) -> dict[str, Any]:
    status = await d.status()
    agent_views = await d.agents.list()
    budgets = d.broker.cost.status(datetime.now(UTC)) if d.broker is not None else []
    return {"status": status, "agents": agent_views, "budgets": budgets}


async def _end_streams(app: web.Application) -> None:
    for task in list(app[STREAMS]):
        task.cancel()


def add_routes(app: web.Application) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/api/v1/agents", agents)
    app.router.add_get("/api/v1/agents/{name}", agent)
    app.router.add_get("/api/v1/tree", tree)
    app.router.add_get("/api/v1/audit", audit)
    app.router.add_get("/api/v1/audit/verify", audit_verify)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/cost", cost)
    app.router.add_get("/metrics", metrics)

