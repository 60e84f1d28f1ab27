"""The dashboard's views of the features (sagas and workflows, pools, cost,
trust, broker): one JSON document per view, shaped for the page and built
from the same control API methods and tables naosctl reads.

Each view is served only when the methods it needs are registered, so a
build without a feature answers 404 there and the page hides that view.
The shaping (``pool_view`` and friends here, the runs' in
:mod:`naosd.dashboard.runs`) is pure and tested directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from naosd.dashboard import queries as q
from naosd.dashboard.runs import run_view, runs_view
from naosd.errors import NaosError

View = Callable[[Any, web.Request], Awaitable[Any]]


def pool_view(status: dict[str, Any], states: Mapping[str, str] | None = None,
              fanouts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One pool for the page: each member with its agent's real state,
    ``done``/``failed`` counting queued tasks and fan-outs (``pool.run``)
    alike, and ``drained`` once it takes no new tasks."""
    states, fanouts = states or {}, fanouts or {}
    fan_done = fanouts.get("completed", 0) + fanouts.get("partial", 0)
    return {"name": status["name"], "merge": status.get("merge"), "pick": status.get("pick"),
            "members": [{"agent": m["name"], "busy": m.get("busy", 0),
                         "state": states.get(m["name"], "unknown")}
                        for m in status.get("members", [])],
            "queue_depth": status.get("queued", 0), "running": status.get("running", 0),
            "done": status.get("completed", 0) + fan_done,
            "failed": status.get("failed", 0) + fanouts.get("failed", 0),
            "cancelled": status.get("cancelled", 0),
            "tasks_done": status.get("completed", 0),
            "fanouts": {"done": fan_done, "partial": fanouts.get("partial", 0),
                        "failed": fanouts.get("failed", 0),
                        "running": fanouts.get("running", 0)},
            "accepting": status.get("accepting", True),
            "drained": not status.get("accepting", True),
            "throughput_per_s": status.get("throughput_per_s")}


# -- views ---------------------------------------------------------------------------


async def _call(d: Any, name: str, **params: Any) -> Any:
    from naosd.control.api import invoke

    return await invoke(d, name, params)


async def _audit(d: Any, types: tuple[str, ...], n: int) -> list[dict[str, Any]]:
    """The newest ``n`` audit rows of these types, newest first."""
    rows = await d.db.call(lambda s: s.audit_tail(n, type=types))
    return [r.to_dict() for r in reversed(rows)]


async def pools_view(d: Any, request: web.Request) -> dict[str, Any]:
    states = {a["name"]: a["state"] for a in await d.agents.list()}
    fanouts = await d.db.call(q.fanout_counts)
    return {"pools": [pool_view(p, states, fanouts.get(p["name"])) for p in
                      await _call(d, "pool.status")]}


def budget_view(status: dict[str, Any]) -> dict[str, Any]:
    scope = status["scope"]
    state = status.get("state") or (
        "paused" if status.get("paused") else "throttled" if status.get("throttled")
        else "alerting" if status.get("alerted") else "ok")
    return {"since": status.get("since"), "reason": status.get("reason"),
            "scope": "global" if scope == "*" else "agent",
            "agent": None if scope == "*" else scope, "limit_micro": status["limit_micro"],
            "spent_micro": status["spent_micro"], "reserved_micro": status["reserved_micro"],
            "period": status["period"], "period_end": status.get("period_end"),
            "action": status["action"], "alert_at": status.get("alert_at", []),
            "alerted": status.get("alerted", []), "state": state}


def alert_line(row: dict[str, Any]) -> dict[str, Any]:
    d = row["detail"] or {}
    what = {"cost.alert": f"{d.get('percent', '?')}% of the budget spent",
            "cost.paused": "budget exhausted: tasks refused until the period resets",
            "cost.throttled": "over budget: throttled"}.get(row["type"], row["type"])
    scope = d.get("scope")
    agent = row["agent"] or (None if scope in (None, "*") else scope)
    return {"seq": row["seq"], "ts": row["ts"], "agent": agent, "type": row["type"],
            "text": what}


def broker_summary(stats: dict[str, Any]) -> dict[str, Any]:
    by_kind = [{"kind": k, "count": v["tasks"], "failed": v.get("failed", 0),
                "cost_micro": v["cost_micro"]} for k, v in sorted(stats["by_kind"].items())]
    return {"by_kind": by_kind, "tasks": stats["tasks"], "cost_micro": stats["cost_micro"],
            "all_llm_micro": stats["all_llm_micro"], "saving_micro": stats["saved_micro"]}


def decision(row: dict[str, Any]) -> dict[str, Any]:
    d = row["detail"] or {}
    denied = row["type"] == "broker.denied"
    return {"seq": row["seq"], "ts": row["ts"], "agent": row["agent"],
            "task_id": d.get("task_id"), "task": "", "route": d.get("handler"),
            "kind": d.get("route") or "none", "cost_micro": d.get("cost_micro", 0),
            "ok": not denied and d.get("status") == "ok",
            "error": d.get("reason", "") if denied else d.get("error", ""),
            "scores": []}


def with_scores(row: dict[str, Any], scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A decision from the audit log plus, while the broker still remembers
    it, the task's preview and the candidates' scores."""
    extra = scored.get(row.pop("task_id", None) or "")
    if extra is not None:
        row.update(task=extra["task"], scores=extra["scores"])
    return row


def trust_row(reg: dict[str, Any]) -> dict[str, Any]:
    from actors.domain.trust import rating_of, tier_of

    t, c = reg["t_score"], reg["c_score"]
    return {**reg, "tier": tier_of(t).name if t is not None else None,
            "rating": rating_of(c).value if c is not None else None}


def denial(row: dict[str, Any]) -> dict[str, Any]:
    d = row["detail"] or {}
    return {"seq": row["seq"], "ts": row["ts"], "agent": row["agent"],
            "reason": d.get("reason") or d.get("code") or ""}


def _day_start() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT00:00:00.000000Z")


def _hours_ago(hours: int) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def cost_view(d: Any, request: web.Request) -> dict[str, Any]:
    budgets = (await _call(d, "cost.status"))["budgets"]
    today, day = _day_start(), _hours_ago(24)
    spent = await d.db.call(lambda s: q.spent_since(s, today))
    by_agent = await d.db.call(lambda s: q.spend_by_agent(s, today))
    series = await d.db.call(lambda s: q.hourly(s, day))
    alerts = await _audit(d, ("cost.alert", "cost.paused", "cost.throttled"), 20)
    return {"budgets": [budget_view(b) for b in budgets], "spend_today_micro": spent,
            "by_agent": by_agent, "series": series, "alerts": [alert_line(a) for a in alerts]}


async def broker_view(d: Any, request: web.Request) -> dict[str, Any]:
    since = request.query.get("since", "1d")[:64]
    stats = await _call(d, "broker.stats", since=since)
    recent = await _audit(d, ("broker.execute", "broker.denied"), 25)
    series = await d.db.call(lambda s: q.hourly(s, _hours_ago(24)))
    scored = {r["task_id"]: r for r in d.broker.recent}
    return {**broker_summary(stats),
            "recent": [with_scores(decision(r), scored) for r in recent],
            "series": [{"hour": p["hour"], **p["tasks"]} for p in series]}


async def trust_view(d: Any, request: web.Request) -> dict[str, Any]:
    regs = await d.db.call(q.registrations)
    denials = await _audit(d, ("trust.deny",), 25)
    return {"agents": [trust_row(r) for r in regs], "denials": [denial(r) for r in denials]}


VIEWS: dict[str, tuple[View, tuple[str, ...]]] = {
    # path under /api/v1/ -> (view, the control methods it needs)
    "runs": (runs_view, ("saga.runs", "workflow.runs")),
    "runs/{kind}/{run}": (run_view, ("saga.history", "workflow.history")),
    "pools": (pools_view, ("pool.status",)),
    "cost": (cost_view, ("cost.status",)),
    "broker": (broker_view, ("broker.stats",)),
    "trust": (trust_view, ("axis.status",)),
}


def add_views(app: web.Application, daemon_key: web.AppKey[Any],
              error: Callable[[NaosError], web.HTTPException]) -> None:
    methods = app[daemon_key].methods
    for path, (view, needs) in VIEWS.items():
        if all(name in methods for name in needs):
            app.router.add_get("/api/v1/" + path, _handler(view, daemon_key, error))


def _handler(view: View, daemon_key: web.AppKey[Any],
             error: Callable[[NaosError], web.HTTPException]) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await view(request.app[daemon_key], request))
        except NaosError as exc:
            raise error(exc) from None
        except ValueError:
            raise web.HTTPBadRequest(text="bad query parameter\n") from None

    return handle
