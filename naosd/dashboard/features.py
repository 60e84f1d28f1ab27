"""The dashboard's views of the features (sagas and workflows, pools, cost,
trust, broker): one JSON document per view, shaped for the page and built
from the same control API methods and tables naosctl reads.

Each view is served only when the methods it needs are registered, so a
build without a feature answers 404 there and the page hides that view.
The shaping (``run_segments`` and friends) is pure and tested directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from naosd.dashboard import queries as q
from naosd.errors import NaosError

View = Callable[[Any, web.Request], Awaitable[Any]]

FINAL_RUN_STATES = frozenset({"completed", "compensated", "compensation_failed", "failed",
                              "resolved"})

# timeline suffix -> (phase, what it does to that step's open segment)
_OPENS = {"step_started": "forward", "compensation_started": "compensate"}
_CLOSES = {
    "step_succeeded": ("forward", "completed"), "step_failed": ("forward", "failed"),
    "step_retrying": ("forward", "failed"), "step_skipped": ("forward", "skipped"),
    "compensated_step": ("compensate", "compensated"),
    "compensation_failed_step": ("compensate", "failed"),
    "compensation_retrying": ("compensate", "failed"),
}


def run_segments(timeline: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's timeline rows as bars: one segment per attempt of a step or of
    its compensation, with start, end and outcome.  A segment still open when
    the same step starts again was interrupted (a daemon restart left it in
    doubt); one still open at the end is running (``ended_at`` None)."""
    segments: list[dict[str, Any]] = []
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    for row in timeline:
        kind = row["type"].split(".", 1)[-1]
        step, ts, detail = row.get("step"), row["ts"], row.get("detail") or {}
        if step is None:
            continue
        if kind in _OPENS:
            key = (step, _OPENS[kind])
            if key in open_:
                open_.pop(key).update(status="interrupted", ended_at=ts)
            seg = {"name": step, "phase": key[1], "status": "running", "started_at": ts,
                   "ended_at": None, "attempt": detail.get("attempt", 1), "error": ""}
            open_[key] = seg
            segments.append(seg)
        elif kind in _CLOSES:
            phase, status = _CLOSES[kind]
            seg = open_.pop((step, phase), None)
            if seg is None:  # e.g. a skip without a start: a zero-length mark
                seg = {"name": step, "phase": phase, "started_at": ts,
                       "attempt": detail.get("attempt", 1)}
                segments.append(seg)
            seg.update(status=status, ended_at=ts, error=detail.get("error", ""))
        elif kind == "compensation_skipped":
            segments.append({"name": step, "phase": "compensate", "status": "skipped",
                             "started_at": ts, "ended_at": ts, "attempt": 0, "error": ""})
    return segments  # the page draws a running segment up to its own clock


def run_summary(view: dict[str, Any]) -> dict[str, Any]:
    steps = view.get("steps") or []
    done = sum(1 for s in steps if s.get("status") in ("succeeded", "skipped", "compensated"))
    final = view["status"] in FINAL_RUN_STATES
    return {"kind": view["kind"], "id": view["run_id"], "name": view["name"],
            "status": view["status"], "started_at": view.get("created_at"),
            "ended_at": view.get("updated_at") if final else None,
            "steps_done": done, "steps_total": len(steps), "error": view.get("error", "")}


def run_detail(history: dict[str, Any]) -> dict[str, Any]:
    segments = run_segments(history.get("timeline") or [])
    outputs = {s["name"]: s.get("output") for s in history.get("steps") or []}
    for seg in segments:
        if seg["phase"] == "forward" and seg["status"] == "completed":
            seg["output"] = outputs.get(seg["name"])
    return {**run_summary(history), "input": history.get("input"),
            "resolution": history.get("resolution", ""), "steps": segments}


def pool_view(status: dict[str, Any]) -> dict[str, Any]:
    return {"name": status["name"], "merge": status.get("merge"), "pick": status.get("pick"),
            "members": [{"agent": m["name"], "busy": m.get("busy", 0)}
                        for m in status.get("members", [])],
            "queue_depth": status.get("queued", 0), "running": status.get("running", 0),
            "done": status.get("completed", 0), "failed": status.get("failed", 0),
            "cancelled": status.get("cancelled", 0),
            "accepting": status.get("accepting", True),
            "throughput_per_s": status.get("throughput_per_s")}


# -- views ---------------------------------------------------------------------------


async def _call(d: Any, name: str, **params: Any) -> Any:
    from naosd.control.api import invoke

    return await invoke(d, name, params)


async def _audit(d: Any, types: tuple[str, ...], n: int) -> list[dict[str, Any]]:
    """The newest ``n`` audit rows of these types, newest first."""
    rows = await d.db.call(lambda s: s.audit_tail(n, type=types))
    return [r.to_dict() for r in reversed(rows)]


async def runs_view(d: Any, request: web.Request) -> dict[str, Any]:
    limit = min(max(int(request.query.get("limit", "50") or 50), 1), 1000)
    found = [*await _call(d, "saga.runs", limit=limit),
             *await _call(d, "workflow.runs", limit=limit)]
    found.sort(key=lambda v: v.get("created_at") or "", reverse=True)
    return {"runs": [run_summary(v) for v in found[:limit]]}


async def run_view(d: Any, request: web.Request) -> dict[str, Any]:
    kind = request.match_info["kind"]
    if kind not in ("saga", "workflow"):
        raise web.HTTPNotFound(text=f"no run kind {kind!r}\n")
    return run_detail(await _call(d, f"{kind}.history", run=request.match_info["run"]))


async def pools_view(d: Any, request: web.Request) -> dict[str, Any]:
    return {"pools": [pool_view(p) for p in await _call(d, "pool.status")]}


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
    from naosd.control.api import METHODS

    for path, (view, needs) in VIEWS.items():
        if all(name in METHODS for name in needs):
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
