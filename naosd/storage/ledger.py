"""SQL for installed skills, budgets and the cost ledger (part of the storage layer:
it goes through :class:`naosd.storage.store.Store` and never opens the database itself).

A skill's module bytes live in its row, so an install is one transaction: a
skill is either wholly installed (manifest, module, digest, audit row) or absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.domain import budget as b
from actors.domain.skill_manifest import SkillManifest, validate_manifest
from naosd.errors import Conflict, NotFound
from naosd.storage.store import Store, Tx


@dataclass(frozen=True, slots=True)
class Event:
    """An audit row to write: type, the agent it concerns, its detail."""

    type: str
    agent: str | None
    detail: dict[str, Any]
    actor: str = "broker"


# -- skills ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstalledSkill:
    manifest: SkillManifest
    module: bytes
    sha256: str
    installed_at: str


def list_skills(store: Store) -> list[InstalledSkill]:
    rows = store.query("SELECT manifest, module, sha256, installed_at FROM skills ORDER BY name")
    return [InstalledSkill(validate_manifest(json.loads(m)), bytes(mod), digest, at)
            for m, mod, digest, at in rows]


def install_skill(store: Store, manifest: SkillManifest, module: bytes, digest: str,
                  *, replace: bool) -> dict[str, Any]:
    """Insert (or with ``replace`` overwrite) a skill and its audit row, atomically.

    Raises:
        Conflict: a skill of that name is installed and ``replace`` is false.
    """
    with store.transaction() as tx:
        old = tx.execute("SELECT version, sha256 FROM skills WHERE name = ?", (manifest.name,))
        if old and not replace:
            raise Conflict(f"skill {manifest.name!r} {old[0][0]} is already installed; "
                           "remove it first or install with --replace")
        now = store.now_iso()
        tx.execute("INSERT INTO skills(name, version, manifest, module, sha256, installed_at) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                   "version = excluded.version, manifest = excluded.manifest, "
                   "module = excluded.module, sha256 = excluded.sha256, "
                   "installed_at = excluded.installed_at",
                   (manifest.name, manifest.version, json.dumps(manifest.to_json()), module,
                    digest, now))
        tx.audit("skill.install", detail={
            "name": manifest.name, "version": manifest.version, "sha256": digest,
            "bytes": len(module), "price_micro": manifest.price_micro,
            "replaced": str(old[0][0]) if old else None})
    return {"name": manifest.name, "version": manifest.version, "sha256": digest,
            "bytes": len(module), "installed_at": now, "replaced": bool(old)}


def remove_skill(store: Store, name: str) -> None:
    """Delete an installed skill with its audit row.

    Raises:
        NotFound: no installed skill has that name.
    """
    with store.transaction() as tx:
        rows = tx.execute("SELECT version, sha256 FROM skills WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no installed skill named {name!r} (see naosctl broker skills)")
        tx.execute("DELETE FROM skills WHERE name = ?", (name,))
        tx.audit("skill.remove", detail={"name": name, "version": rows[0][0],
                                         "sha256": rows[0][1]})


# -- budgets -----------------------------------------------------------------------


def list_budgets(store: Store) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT scope, limit_micro, period, alert_at, action, throttle_rate, throttle_burst, "
        "period_start, spent_micro, alerted, paused FROM budgets ORDER BY scope")
    keys = ("scope", "limit_micro", "period", "alert_at", "action", "throttle_rate",
            "throttle_burst", "period_start", "spent_micro", "alerted", "paused")
    marks = _latest_limit_rows(store) if rows else {}
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["alert_at"] = json.loads(item["alert_at"])
        item["alerted"] = json.loads(item["alerted"])
        item["period_start"] = datetime.fromisoformat(item["period_start"])
        item.update(_limit_marks(marks.get(item["scope"], {}), item))
        out.append(item)
    return out


def delete_budget(store: Store, scope: str) -> None:
    """Delete a budget's row (the cost controller forgot it first)."""
    with store.transaction() as tx:
        tx.execute("DELETE FROM budgets WHERE scope = ?", (scope,))


def _latest_limit_rows(store: Store) -> dict[str, dict[str, tuple[str, dict[str, Any]]]]:
    """The latest ``cost.paused`` and ``cost.throttled`` audit row of each scope: they
    say since when and why (written in the same transaction as the budget row)."""
    latest: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for type_, ts, detail in store.query(
            "SELECT type, ts, detail FROM audit WHERE type IN ('cost.paused', "
            "'cost.throttled') ORDER BY seq"):
        data = json.loads(detail)
        latest.setdefault(str(data.get("scope")), {})[type_] = (ts, data)
    return latest


def _limit_marks(rows: dict[str, tuple[str, dict[str, Any]]], budget: dict[str, Any]
                 ) -> dict[str, Any]:
    def since(type_: str) -> datetime | None:
        ts, data = rows.get(type_, ("", {}))
        text = data.get("since") or ts
        return datetime.fromisoformat(text) if text else None

    paused = since("cost.paused") if budget["paused"] else None
    throttled = since("cost.throttled")
    if throttled is not None and throttled < budget["period_start"]:
        throttled = None  # an earlier period's
    reason = rows.get("cost.paused", ("", {}))[1].get("reason") if paused else None
    return {"paused_since": paused, "pause_reason": reason or ("paused" if paused else ""),
            "throttled_since": throttled}


def _write_budget(tx: Tx, scope: str, state: b.BudgetState, bucket: b.TokenBucket,
                  now: str) -> None:
    policy = state.policy
    tx.execute(
        "INSERT INTO budgets(scope, limit_micro, period, alert_at, action, throttle_rate, "
        "throttle_burst, period_start, spent_micro, alerted, paused, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(scope) DO UPDATE SET "
        "limit_micro = excluded.limit_micro, period = excluded.period, "
        "alert_at = excluded.alert_at, action = excluded.action, "
        "throttle_rate = excluded.throttle_rate, throttle_burst = excluded.throttle_burst, "
        "period_start = excluded.period_start, spent_micro = excluded.spent_micro, "
        "alerted = excluded.alerted, paused = excluded.paused, updated_at = excluded.updated_at",
        (scope, policy.limit_micro, policy.period.value, json.dumps(list(policy.alert_at)),
         policy.action.value, bucket.rate_per_s, bucket.burst, state.period_start.isoformat(),
         state.spent_micro, json.dumps(sorted(state.alerted)), int(state.paused), now))


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    task_id: str
    agent: str | None
    route_kind: str
    handler: str
    status: str
    reserved_micro: int
    cost_micro: int
    llm_estimate_micro: int
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """What one task (or one budget change) persists: its ledger row (if any), the
    budgets it changed, the cost events and its own audit row."""

    events: tuple[Event, ...]
    budgets: tuple[tuple[str, b.BudgetState, b.TokenBucket], ...]
    entry: LedgerEntry | None = None
    audit: Event | None = None


def record(store: Store, records: Iterable[Record]) -> None:
    """Write ``records`` in one transaction (group commit: one fsync for the lot),
    in order, so the last snapshot of a budget wins."""
    with store.transaction() as tx:
        now = store.now_iso()
        for rec in records:
            _write_record(tx, rec, now)


def _write_record(tx: Tx, rec: Record, now: str) -> None:
    entry = rec.entry
    if entry is not None:
        tx.execute(
            "INSERT INTO cost_ledger(ts, task_id, agent, route_kind, handler, status, "
            "reserved_micro, cost_micro, llm_estimate_micro, estimated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, entry.task_id, entry.agent, entry.route_kind, entry.handler,
             entry.status, entry.reserved_micro, entry.cost_micro,
             entry.llm_estimate_micro, int(entry.estimated)))
    for scope, state, bucket in rec.budgets:
        _write_budget(tx, scope, state, bucket, now)
    for event in (*rec.events, *([rec.audit] if rec.audit else [])):
        tx.audit(event.type, actor=event.actor, agent=event.agent, detail=event.detail)


# -- reading the ledger ------------------------------------------------------------


def ledger_totals(store: Store, since: str, agent: str | None = None) -> list[dict[str, Any]]:
    """Per route kind and status: tasks, spent, the LLM estimates (for all-LLM)."""
    return _select(store, ("route_kind", "status", "tasks", "cost_micro", "llm_estimate_micro"),
                   "SELECT route_kind, status, COUNT(*), SUM(cost_micro), SUM(llm_estimate_micro) "
                   "FROM cost_ledger WHERE {where} GROUP BY route_kind, status "
                   "ORDER BY route_kind", since, agent)


def ledger_days(store: Store, since: str, agent: str | None = None) -> list[dict[str, Any]]:
    """Per UTC day, agent and route kind: tasks and spent."""
    return _select(store, ("day", "agent", "route_kind", "tasks", "cost_micro"),
                   "SELECT substr(ts, 1, 10), COALESCE(agent, ''), route_kind, COUNT(*), "
                   "SUM(cost_micro) FROM cost_ledger WHERE {where} GROUP BY 1, 2, 3 "
                   "ORDER BY 1, 2, 3", since, agent)


def ledger_entries(store: Store, since: str, agent: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """The latest ``limit`` entries, oldest first."""
    keys = ("id", "ts", "task_id", "agent", "route_kind", "handler", "status",
            "reserved_micro", "cost_micro", "llm_estimate_micro", "estimated")
    rows = _select(store, keys, f"SELECT {', '.join(keys)} FROM cost_ledger WHERE {{where}} "
                   f"ORDER BY id DESC LIMIT {int(limit)}", since, agent)
    return rows[::-1]


def _select(store: Store, keys: tuple[str, ...], sql: str, since: str,
            agent: str | None) -> list[dict[str, Any]]:
    where, params = _ledger_where(since, agent)
    rows = store.query(sql.format(where=where), params)
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _ledger_where(since: str, agent: str | None) -> tuple[str, tuple[Any, ...]]:
    if agent is None:
        return "ts >= ?", (since,)
    return "ts >= ? AND agent = ?", (since, agent)
