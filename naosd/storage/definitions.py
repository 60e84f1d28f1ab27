"""SQL for agent and supervisor definitions and agent logs (part of the
storage layer: it goes through :class:`naosd.storage.store.Store` and never opens
the database itself).  Every change is written with its audit row in one
transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from actors.domain.definitions import (
    IMPLICIT_SUPERVISOR,
    AgentDef,
    SupervisorDef,
    changed_fields,
    implicit_supervisor,
)
from naosd.errors import Conflict, InvalidRequest, NotFound
from naosd.storage.store import Store, Tx

_AGENT_COLS = ("name, source_kind, source, config, supervisor, restart, position, desired, "
               "shutdown_timeout_s, created_at, requires, execution")
_SUP_COLS = ("name, strategy, max_restarts, window_s, backoff_initial_s, backoff_max_s, "
             "parent, restart, position, desired, created_at")


def _agent(row: tuple[Any, ...]) -> AgentDef:
    (name, kind, source, config, sup, restart, pos, desired, stop_s, created, requires,
     execution) = row
    return AgentDef(name, kind, source, json.loads(config), sup, restart, pos, desired,
                    stop_s, created, tuple(json.loads(requires)), json.loads(execution))


def _sup(row: tuple[Any, ...]) -> SupervisorDef:
    return SupervisorDef(*row)


# -- reads -----------------------------------------------------------------


def get_agent(store: Store, name: str) -> AgentDef:
    rows = store.query(f"SELECT {_AGENT_COLS} FROM agents WHERE name = ?", (name,))
    if not rows:
        raise NotFound(f"no agent named {name!r} (see naosctl status)")
    return _agent(rows[0])


def list_agents(store: Store, *, supervisor: str | None = None) -> list[AgentDef]:
    if supervisor is None:
        rows = store.query(f"SELECT {_AGENT_COLS} FROM agents ORDER BY name")
    elif supervisor == IMPLICIT_SUPERVISOR:
        rows = store.query(f"SELECT {_AGENT_COLS} FROM agents WHERE supervisor IS NULL "
                           "ORDER BY position, name")
    else:
        rows = store.query(f"SELECT {_AGENT_COLS} FROM agents WHERE supervisor = ? "
                           "ORDER BY position, name", (supervisor,))
    return [_agent(r) for r in rows]


def get_supervisor(store: Store, name: str) -> SupervisorDef:
    if name == IMPLICIT_SUPERVISOR:
        return implicit_supervisor()
    rows = store.query(f"SELECT {_SUP_COLS} FROM supervisors WHERE name = ?", (name,))
    if not rows:
        raise NotFound(f"no supervisor named {name!r}")
    return _sup(rows[0])


def list_supervisors(store: Store, *, parent: str | bool | None = False) -> list[SupervisorDef]:
    """All supervisors (``parent=False``), top-level ones (``None``) or the
    children of ``parent``."""
    if parent is False:
        rows = store.query(f"SELECT {_SUP_COLS} FROM supervisors ORDER BY name")
    elif parent is None:
        rows = store.query(f"SELECT {_SUP_COLS} FROM supervisors WHERE parent IS NULL "
                           "ORDER BY position, name")
    else:
        rows = store.query(f"SELECT {_SUP_COLS} FROM supervisors WHERE parent = ? "
                           "ORDER BY position, name", (parent,))
    return [_sup(r) for r in rows]


def children_of(store: Store, supervisor: str) -> list[AgentDef | SupervisorDef]:
    """The children of ``supervisor`` in start order."""
    kids: list[AgentDef | SupervisorDef] = [*list_agents(store, supervisor=supervisor)]
    if supervisor != IMPLICIT_SUPERVISOR:
        kids += list_supervisors(store, parent=supervisor)
    return sorted(kids, key=lambda d: (d.position, d.name))


def name_taken(store: Store, name: str) -> str | None:
    if store.query("SELECT 1 FROM agents WHERE name = ?", (name,)):
        return "agent"
    if store.query("SELECT 1 FROM supervisors WHERE name = ?", (name,)):
        return "supervisor"
    return None


# -- writes ----------------------------------------------------------------


def _next_position(tx: Tx, parent: str | None) -> int:
    rows = tx.execute(
        "SELECT coalesce(max(p), -1) + 1 FROM ("
        " SELECT position AS p FROM agents WHERE supervisor IS ?"
        " UNION ALL SELECT position FROM supervisors WHERE parent IS ?)", (parent, parent))
    return int(rows[0][0])


def create_agent(store: Store, agent: AgentDef) -> AgentDef:
    agent = agent.validated()
    with store.transaction() as tx:
        _check_free(store, agent.name)
        if agent.supervisor:
            get_supervisor(store, agent.supervisor)
        created = store.now_iso()
        pos = _next_position(tx, agent.supervisor)
        tx.execute(f"INSERT INTO agents({_AGENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (agent.name, agent.source_kind, agent.source, json.dumps(agent.config),
                    agent.supervisor, agent.restart, pos, agent.desired,
                    agent.shutdown_timeout_s, created, json.dumps(list(agent.requires)),
                    json.dumps(agent.execution)))
        detail: dict[str, Any] = {"source_kind": agent.source_kind, "source": agent.source}
        if agent.requires:
            detail["requires"] = list(agent.requires)
        detail.update(execution_summary(agent.execution))
        tx.audit("agent.created", agent=agent.name, detail=detail)
    return get_agent(store, agent.name)


def update_code(store: Store, name: str, source: str, digest: str) -> tuple[str, str]:
    """Point agent ``name`` at a new code snapshot; (old digest, new digest),
    audited in the same transaction."""
    agent = get_agent(store, name)
    changed = replace(agent, source=source, execution={**agent.execution, "digest": digest})
    return update_agent(store, changed)


def update_agent(store: Store, new: AgentDef) -> tuple[str, str]:
    """Replace agent ``new.name``'s definition (its code, config, limits,
    place in a tree) in one transaction with an ``agent.updated`` audit row
    naming the changed fields and the old and new code digests.  Returns
    (old digest, new digest)."""
    new = new.validated()
    with store.transaction() as tx:
        old = get_agent(store, new.name)
        if new.supervisor and new.supervisor != old.supervisor:
            get_supervisor(store, new.supervisor)
        changed = changed_fields(old, new)
        old_digest = str(old.execution.get("digest") or "")
        new_digest = str(new.execution.get("digest") or "")
        tx.execute("UPDATE agents SET source_kind = ?, source = ?, config = ?, supervisor = ?,"
                   " restart = ?, shutdown_timeout_s = ?, requires = ?, execution = ?"
                   " WHERE name = ?",
                   (new.source_kind, new.source, json.dumps(new.config), new.supervisor,
                    new.restart, new.shutdown_timeout_s, json.dumps(list(new.requires)),
                    json.dumps(new.execution), new.name))
        tx.audit("agent.updated", agent=new.name,
                 detail={"old_digest": old_digest, "new_digest": new_digest,
                         "source": new.source, "changed": changed,
                         **execution_summary(new.execution)})
    return old_digest, new_digest


def execution_summary(execution: dict[str, Any]) -> dict[str, Any]:
    """What an audit row says of an agent's execution (never env values)."""
    out: dict[str, Any] = {k: execution[k] for k in ("confinement", "grants", "digest",
                                                     "max_concurrency") if k in execution}
    if execution.get("env"):
        out["env_names"] = sorted(execution["env"])
    return out


def _check_free(store: Store, name: str) -> None:
    taken = name_taken(store, name)
    if taken:
        raise Conflict(f"the name {name!r} is already used by a {taken}")


def create_supervisor(store: Store, sup: SupervisorDef) -> SupervisorDef:
    sup = sup.validated()
    with store.transaction() as tx:
        _check_free(store, sup.name)
        if sup.parent:
            get_supervisor(store, sup.parent)
        pos = _next_position(tx, sup.parent)
        tx.execute(f"INSERT INTO supervisors({_SUP_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (sup.name, sup.strategy, sup.max_restarts, sup.window_s,
                    sup.backoff_initial_s, sup.backoff_max_s, sup.parent, sup.restart, pos,
                    sup.desired, store.now_iso()))
        tx.audit("supervisor.created", actor=sup.name, detail=sup.to_dict())
    return get_supervisor(store, sup.name)


def update_supervisor(store: Store, new: SupervisorDef) -> list[str]:
    """Replace supervisor ``new.name``'s strategy, intensity, backoff and
    place in a tree (one transaction, audited); the fields that changed."""
    new = new.validated()
    with store.transaction() as tx:
        old = get_supervisor(store, new.name)
        if new.parent and new.parent != old.parent:
            get_supervisor(store, new.parent)
        changed = changed_fields(old, new)
        tx.execute("UPDATE supervisors SET strategy = ?, max_restarts = ?, window_s = ?, "
                   "backoff_initial_s = ?, backoff_max_s = ?, parent = ?, restart = ? "
                   "WHERE name = ?",
                   (new.strategy, new.max_restarts, new.window_s, new.backoff_initial_s,
                    new.backoff_max_s, new.parent, new.restart, new.name))
        tx.audit("supervisor.updated", actor=new.name,
                 detail={"changed": changed, **new.to_dict()})
    return changed


# -- what a project file applied (for apply --prune) -------------------------------


def applied_names(store: Store, project: str) -> dict[str, list[str]]:
    """The names (by kind) project file ``project`` defined at its last apply."""
    text = store.get_meta_or_none(f"project:{project}")
    names: dict[str, list[str]] = json.loads(text) if text else {}
    return names


def record_applied(store: Store, project: str, names: dict[str, list[str]]) -> None:
    store.set_meta(f"project:{project}", json.dumps(names, sort_keys=True))


def set_desired(store: Store, kind: str, name: str, desired: str) -> None:
    table = "agents" if kind == "agent" else "supervisors"
    with store.transaction() as tx:
        rows = tx.execute(f"SELECT desired FROM {table} WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no {kind} named {name!r}")
        if rows[0][0] == desired:
            return  # already so: nothing to record
        tx.execute(f"UPDATE {table} SET desired = ? WHERE name = ?", (desired, name))
        tx.audit(f"{kind}.{'start' if desired == 'running' else 'stop'}_requested",
                 agent=name if kind == "agent" else None,
                 actor="naosd" if kind == "agent" else name, detail={"desired": desired})


def attach(store: Store, child: str, supervisor: str, restart: str) -> str:
    """Move agent or supervisor ``child`` under ``supervisor``; returns the
    child's kind.  Refuses cycles."""
    get_supervisor(store, supervisor)
    kind = name_taken(store, child)
    if kind is None:
        raise NotFound(f"no agent or supervisor named {child!r}")
    if kind == "supervisor" and _is_ancestor(store, child, supervisor):
        raise InvalidRequest(f"adding {child!r} under {supervisor!r} would make a cycle")
    parent = None if supervisor == IMPLICIT_SUPERVISOR else supervisor
    with store.transaction() as tx:
        pos = _next_position(tx, parent)
        if kind == "agent":
            tx.execute("UPDATE agents SET supervisor = ?, restart = ?, position = ? "
                       "WHERE name = ?", (parent, restart, pos, child))
        else:
            tx.execute("UPDATE supervisors SET parent = ?, restart = ?, position = ? "
                       "WHERE name = ?", (parent, restart, pos, child))
        tx.audit("supervisor.child_added", actor=supervisor,
                 agent=child if kind == "agent" else None,
                 detail={"child": child, "kind": kind, "restart": restart})
    return kind


def _is_ancestor(store: Store, candidate: str, of: str) -> bool:
    current: str | None = of
    while current:
        if current == candidate:
            return True
        current = get_supervisor(store, current).parent
    return False


def delete_agent(store: Store, name: str) -> None:
    with store.transaction() as tx:
        if not tx.execute("SELECT 1 FROM agents WHERE name = ?", (name,)):
            raise NotFound(f"no agent named {name!r}")
        tx.execute("DELETE FROM agents WHERE name = ?", (name,))
        tx.audit("agent.deleted", agent=name)


def delete_supervisor(store: Store, name: str) -> None:
    with store.transaction() as tx:
        if children_of(store, name):
            raise Conflict(f"supervisor {name!r} still has children; move or delete them")
        if not tx.execute("SELECT 1 FROM supervisors WHERE name = ?", (name,)):
            raise NotFound(f"no supervisor named {name!r}")
        tx.execute("DELETE FROM supervisors WHERE name = ?", (name,))
        tx.audit("supervisor.deleted", actor=name)


# -- agent logs --------------------------------------------------------------


def append_logs(store: Store, agent: str, lines: Iterable[tuple[str, str, str]]) -> None:
    """Store ``(ts, level, text)`` lines of one agent in one transaction."""
    batch = list(lines)
    if not batch:
        return
    with store.transaction() as tx:
        for ts, level, text in batch:
            tx.execute("INSERT INTO agent_logs(agent, ts, level, text) VALUES (?,?,?,?)",
                       (agent, ts, level, text[:8192]))


def read_logs(store: Store, agent: str | None, *, n: int = 50, after: int = 0
              ) -> list[dict[str, Any]]:
    """The last ``n`` lines (``after=0``) or the lines after id ``after``."""
    if after:
        return logs_after(store, after, agent=agent, limit=1000)
    where, params = ("WHERE agent = ?", [agent]) if agent else ("", [])
    sql = (f"SELECT id, agent, ts, level, text FROM agent_logs {where} "
           "ORDER BY id DESC LIMIT ?")
    return _log_dicts(store.query(sql, (*params, n))[::-1])


def logs_after(store: Store, after: int, *, agent: str | None = None, limit: int = 1000
               ) -> list[dict[str, Any]]:
    """Up to ``limit`` lines with an id above ``after``, oldest first."""
    where, params = ("AND agent = ?", [agent]) if agent else ("", [])
    sql = (f"SELECT id, agent, ts, level, text FROM agent_logs WHERE id > ? {where} "
           "ORDER BY id LIMIT ?")
    return _log_dicts(store.query(sql, (after, *params, limit)))


def _log_dicts(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"id": r[0], "agent": r[1], "ts": r[2], "level": r[3], "text": r[4]} for r in rows]


def log_head(store: Store) -> int:
    """The id of the newest log line (0 when there is none)."""
    return int(store.query("SELECT coalesce(max(id), 0) FROM agent_logs")[0][0])


# -- run statistics (from the audit log's ``agent.run`` rows) ----------------------


def run_stats(store: Store) -> dict[str, dict[str, Any]]:
    """Per agent: messages handled, failures, recorded cost and the last run,
    counted from the durable ``agent.run`` audit rows."""
    rows = store.query(
        "SELECT agent, count(*), "
        "sum(CASE WHEN json_extract(detail, '$.ok') THEN 0 ELSE 1 END), "
        "coalesce(sum(json_extract(detail, '$.cost_micro_usd')), 0), max(ts) "
        "FROM audit WHERE type = 'agent.run' AND agent IS NOT NULL GROUP BY agent")
    return {r[0]: {"messages": r[1], "failures": r[2], "cost_micro_usd": int(r[3]),
                   "last_run": r[4]} for r in rows}


def recent_runs(store: Store, agent: str, *, n: int = 20) -> list[dict[str, Any]]:
    """The agent's last ``n`` runs, newest first."""
    rows = store.audit_tail(n, agent=agent, type="agent.run")
    return [{"seq": r.seq, "ts": r.ts, "ok": bool(r.detail.get("ok")), "ms": r.detail.get("ms"),
             "error": r.detail.get("error"), "cost_micro_usd": r.detail.get("cost_micro_usd") or 0}
            for r in reversed(rows)]
