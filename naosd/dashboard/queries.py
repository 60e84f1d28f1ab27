"""Read-only SQL behind the dashboard's cost, broker and trust views (run on
the store thread through ``AsyncStore.call``).  Nothing here writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naosd.storage.store import Store


def spend_by_agent(store: Store, since: str) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT agent, sum(cost_micro), count(*) FROM cost_ledger WHERE ts >= ? "
        "GROUP BY agent ORDER BY sum(cost_micro) DESC, agent LIMIT 50", (since,))
    return [{"agent": r[0], "micro": int(r[1] or 0), "tasks": r[2]} for r in rows]


def ledger_spend(store: Store) -> dict[str, int]:
    """All-time broker spend per agent (empty before the ledger exists)."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'cost_ledger'"):
        return {}
    rows = store.query("SELECT agent, sum(cost_micro) FROM cost_ledger "
                       "WHERE agent IS NOT NULL GROUP BY agent")
    return {r[0]: int(r[1] or 0) for r in rows}


def hourly(store: Store, since: str) -> list[dict[str, Any]]:
    """Per UTC hour since ``since``: cost and task count by route kind."""
    rows = store.query(
        "SELECT substr(ts, 1, 13), route_kind, sum(cost_micro), count(*) FROM cost_ledger "
        "WHERE ts >= ? GROUP BY 1, 2 ORDER BY 1", (since,))
    out: dict[str, dict[str, Any]] = {}
    for hour, kind, micro, tasks in rows:
        point = out.setdefault(hour, {"hour": hour + ":00Z", "tasks": {}})
        point[kind] = int(micro or 0)
        point["tasks"][kind] = tasks
    return list(out.values())


def spent_since(store: Store, since: str) -> int:
    return int(store.query("SELECT coalesce(sum(cost_micro), 0) FROM cost_ledger "
                           "WHERE ts >= ?", (since,))[0][0])


def registrations(store: Store) -> list[dict[str, Any]]:
    """Every agent in the local AXIS registry with the scores naos holds for
    it: its local scores, else the cached AXIS answer (no network here)."""
    rows = store.query(
        "SELECT a.agent, a.auid, a.t_score, a.c_score, a.updated_at, c.t_score, c.c_score, "
        "c.fetched_at FROM axis_agents a LEFT JOIN axis_cache c ON c.auid = a.auid "
        "ORDER BY a.agent")
    out = []
    for agent, auid, lt, lc, updated, ct, cc, fetched in rows:
        if lt is not None and lc is not None:
            t, c, source, when = lt, lc, "local", updated
        elif ct is not None:
            t, c, source, when = ct, cc, "axis (cached)", fetched
        else:
            t, c, source, when = None, None, "unverified", None
        out.append({"agent": agent, "auid": auid, "t_score": t, "c_score": c,
                    "source": source, "verified_at": when})
    return out



def fanout_counts(store: Store) -> dict[str, dict[str, int]]:
    """Per pool, its fan-outs (``pool.run``) by status: running, completed,
    partial, failed."""
    out: dict[str, dict[str, int]] = {}
    for pool, status, n in store.query("SELECT name, status, count(*) FROM orch_runs "
                                       "WHERE kind = 'pool' GROUP BY name, status"):
        out.setdefault(pool, {})[status] = int(n)
    return out
