"""Methods for the broker, skills and the cost controller (see naosd.broker.service)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from actors.domain import budget as b
from actors.domain import routing
from actors.domain.definitions import validate_name
from naosd.broker.cost import DEFAULT_BURST, DEFAULT_RATE, GLOBAL
from naosd.broker.service import MAX_TASK_CHARS, decision_json
from naosd.control.params import Bool, Int, Spec, Str, parse_since
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import InvalidRequest, NoRoute
from naosd.storage import ledger as bs

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("broker")
method = METHODS.method

TASK = Str(max_len=MAX_TASK_CHARS)
AGENT = Str(None, max_len=64)


def _agent(p: dict[str, Any]) -> str | None:
    return None if p["agent"] is None else validate_name(p["agent"])


@method("broker.skills", role=READ)
async def broker_skills(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Every skill (built-in and installed) with its patterns, route kind and price,
    and the tools of the MCP tool servers (kind mcp: called by name, not routed)."""
    broker = d.broker
    return {"skills": broker.skills(),
            "thresholds": {"skill": broker.thresholds.skill, "wasm": broker.thresholds.wasm},
            "llm": broker.llm is not None,
            # MCP tool servers' tools: called by name (ctx.tools.call), never routed
            "tools": d.mcp_client.servers.catalog() if d.mcp_client is not None else []}


@method("broker.route", role=READ, task=TASK)
async def broker_route(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Which handler would take a task, every candidate's score, ties and near misses."""
    try:
        return decision_json(d.broker.route(p["task"]))
    except NoRoute as exc:
        if exc.decision is None:
            raise
        return {**decision_json(exc.decision), "error": {"code": exc.code,
                                                          "message": exc.message}}


@method("broker.execute", deadline="timeout", task=TASK, agent=AGENT,
        route=Str(None, max_len=200), timeout=Spec((int, float), None))
async def broker_execute(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Route and run a task: trust check, reserve, execute, settle, audit.  ``route``
    (skill:NAME, wasm:NAME or llm) pins the handler: the task's text cannot move it."""
    return await d.broker.execute(p["task"], _agent(p), route=p["route"])


@method("broker.stats", role=READ, since=Str("1d", max_len=64), agent=AGENT)
async def broker_stats(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Tasks and cost by route kind since a time, and the saving against all-LLM."""
    since = parse_since(p["since"], datetime.now(UTC))
    agent = _agent(p)
    rows = await d.db.call(lambda s: bs.ledger_totals(s, since, agent))
    actual, all_llm, saved = routing.savings(
        (r["route_kind"], r["cost_micro"] or 0, r["llm_estimate_micro"] or 0) for r in rows)
    by_kind: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = by_kind.setdefault(r["route_kind"], {"tasks": 0, "failed": 0, "cost_micro": 0,
                                                    "llm_estimate_micro": 0})
        kind["tasks"] += r["tasks"]
        kind["failed"] += r["tasks"] if r["status"] != "ok" else 0
        kind["cost_micro"] += r["cost_micro"] or 0
        kind["llm_estimate_micro"] += r["llm_estimate_micro"] or 0
    return {"since": since, "agent": agent, "by_kind": by_kind,
            "tasks": sum(k["tasks"] for k in by_kind.values()),
            "cost_micro": actual, "all_llm_micro": all_llm, "saved_micro": saved,
            "llm_prices_per_1k_micro": list(d.broker.llm_prices),
            "llm_prices_source": d.broker.llm_prices_source}


@method("skill.install", manifest=Spec((bytes, str), max_len=64 * 1024),
        module=Spec(bytes), sha256=Str(None, max_len=64), replace=Bool(False))
async def skill_install(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Install a WASM skill: strict manifest, sha256 check, module check, one transaction."""
    manifest = p["manifest"]
    raw = manifest if isinstance(manifest, bytes) else manifest.encode()
    return await d.broker.install(raw, bytes(p["module"]), p["sha256"], replace=p["replace"])


@method("skill.remove", name=Str(max_len=64))
async def skill_remove(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Remove an installed skill."""
    await d.broker.remove(p["name"])
    return {"removed": p["name"]}


def _scope(p: dict[str, Any]) -> str:
    if p["scope"] == GLOBAL:
        return GLOBAL
    return validate_name(p["scope"])


@method("cost.set", scope=Str(max_len=64), budget=Str(max_len=64), alert_at=Spec(list, None),
        action=Str("pause", choices=("alert", "throttle", "pause")),
        throttle_rate=Spec((int, float), DEFAULT_RATE), throttle_burst=Int(DEFAULT_BURST, lo=1,
                                                                           hi=1_000_000))
async def cost_set(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Set a budget for an agent (or "*": global): "$10/day", alert levels, action."""
    scope = _scope(p)
    limit, period = b.parse_budget(p["budget"])
    levels = tuple(p["alert_at"]) if p["alert_at"] is not None else b.DEFAULT_ALERTS
    policy = b.BudgetPolicy(limit, period, levels, p["action"])
    rate = p["throttle_rate"]
    if isinstance(rate, bool) or not 0 < rate <= 1e6:
        raise InvalidRequest(f"throttle_rate must be a number of tasks per second in (0, 1e6], "
                             f"got {rate!r}")
    d.broker.cost.set_budget(scope, policy, datetime.now(UTC), rate=float(rate),
                             burst=p["throttle_burst"])
    await d.broker.flush()
    return _one_status(d, scope)


@method("cost.remove", scope=Str(max_len=64))
async def cost_remove(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Delete a budget (an agent's, or "*": the global one); audited."""
    scope = _scope(p)
    d.broker.cost.status_of(scope, datetime.now(UTC))  # NotFound names it
    await d.broker.drop_budget(scope)
    return {"removed": scope}


@method("cost.status", role=READ, scope=Str(None, max_len=64))
async def cost_status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Every budget (or one): limit, spent, reserved, remaining, alerts, paused."""
    if p["scope"] is not None:
        return {"budgets": [_one_status(d, _scope(p))]}
    return {"budgets": d.broker.cost.status(datetime.now(UTC))}


@method("cost.reset", scope=Str(max_len=64))
async def cost_reset(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Start a fresh period for a budget now and lift a pause."""
    scope = _scope(p)
    d.broker.cost.reset(scope, datetime.now(UTC))
    await d.broker.flush()
    return _one_status(d, scope)


@method("cost.history", role=READ, days=Int(7, lo=1, hi=3660), agent=AGENT,
        limit=Int(100, lo=0, hi=10_000))
async def cost_history(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The ledger: per day, agent and route kind, and the latest entries."""
    since = (datetime.now(UTC) - timedelta(days=p["days"])).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    agent = _agent(p)
    days = await d.db.call(lambda s: bs.ledger_days(s, since, agent))
    entries = await d.db.call(lambda s: bs.ledger_entries(s, since, agent, p["limit"]))
    return {"since": since, "agent": agent, "days": days, "entries": entries,
            "total_micro": sum(r["cost_micro"] or 0 for r in days)}


def _one_status(d: Services, scope: str) -> dict[str, Any]:
    return d.broker.cost.status_of(scope, datetime.now(UTC))
