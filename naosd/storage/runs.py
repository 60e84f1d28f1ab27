"""SQL for saga, workflow and pool definitions and for durable runs (part of
the storage layer: it goes through :class:`naosd.storage.store.Store` only).

A run's row holds the pure state machine's full record (``to_record``); each
save writes the record, the run's timeline rows and the audit rows of the
same transition in ONE transaction, so what is on disk is always a state the
machine was in, with its history and audit trail.  :func:`save_changes`
commits the transitions of many runs in one transaction (group commit), each
in its own savepoint: one that cannot be stored fails alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.domain.orch_defs import named_agents
from naosd.errors import Conflict, InvalidRequest, NaosError, NotFound
from naosd.storage.store import Store, Tx

KINDS = ("saga", "workflow", "pool")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- definitions -----------------------------------------------------------------


def create_def(store: Store, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    with store.transaction() as tx:
        if tx.execute("SELECT 1 FROM orch_defs WHERE kind = ? AND name = ?", (kind, name)):
            raise Conflict(f"a {kind} named {name!r} already exists")
        tx.execute("INSERT INTO orch_defs(kind, name, spec, created_at) VALUES (?, ?, ?, ?)",
                   (kind, name, _dump(spec), store.now_iso()))
        tx.audit(f"{kind}.defined", detail={"name": name, "spec": spec})
    return spec


def update_def(store: Store, kind: str, name: str, spec: dict[str, Any], why: str
               ) -> dict[str, Any]:
    with store.transaction() as tx:
        if not tx.execute("SELECT 1 FROM orch_defs WHERE kind = ? AND name = ?", (kind, name)):
            raise NotFound(f"no {kind} named {name!r}")
        tx.execute("UPDATE orch_defs SET spec = ? WHERE kind = ? AND name = ?",
                   (_dump(spec), kind, name))
        tx.audit(f"{kind}.{why}", detail={"name": name, "spec": spec})
    return spec


def get_def(store: Store, kind: str, name: str) -> dict[str, Any]:
    rows = store.query("SELECT spec FROM orch_defs WHERE kind = ? AND name = ?", (kind, name))
    if not rows:
        raise NotFound(f"no {kind} named {name!r} (naosctl {kind} list)")
    spec: dict[str, Any] = json.loads(rows[0][0])
    return spec


def list_defs(store: Store, kind: str) -> list[dict[str, Any]]:
    rows = store.query("SELECT spec FROM orch_defs WHERE kind = ? ORDER BY name", (kind,))
    return [json.loads(r[0]) for r in rows]


def def_exists(store: Store, kind: str, name: str) -> bool:
    return bool(store.query("SELECT 1 FROM orch_defs WHERE kind = ? AND name = ?",
                            (kind, name)))


def delete_def(store: Store, kind: str, name: str, final: tuple[str, ...]) -> None:
    """Forget a saga, workflow or pool definition (its finished runs stay, for
    history); refused while one of its runs has not ended (status not in
    ``final``)."""
    marks = ", ".join("?" for _ in final)
    with store.transaction() as tx:
        if not tx.execute("SELECT 1 FROM orch_defs WHERE kind = ? AND name = ?", (kind, name)):
            raise NotFound(f"no {kind} named {name!r} (naosctl {kind} list)")
        live = tx.execute(f"SELECT run_id FROM orch_runs WHERE kind = ? AND name = ? AND "
                          f"status NOT IN ({marks}) ORDER BY created_at LIMIT 3",
                          (kind, name, *final))
        if live:
            runs = ", ".join(str(r[0]) for r in live)
            raise Conflict(f"{kind} {name!r} has runs that have not ended ({runs}); "
                           f"wait for them or cancel them first")
        tx.execute("DELETE FROM orch_defs WHERE kind = ? AND name = ?", (kind, name))
        tx.audit(f"{kind}.deleted", detail={"name": name})


def users_of(store: Store, agent: str) -> list[str]:
    """The saga, workflow and pool definitions that name ``agent`` (as a
    step, a compensation, a member, a clone or a reducer), like "saga trip"."""
    return [f"{kind} {spec['name']}" for kind in KINDS for spec in list_defs(store, kind)
            if agent in named_agents(kind, spec)]


# -- runs ------------------------------------------------------------------------


Audits = list[tuple[str, dict[str, Any]]]


def insert_run(store: Store, kind: str, name: str, record: dict[str, Any],
               also: Callable[[Tx, str], None] | None = None) -> None:
    """A new run's first record; ``also(tx, run_id)`` writes more in the same
    transaction (a schedule's firing)."""
    now = store.now_iso()
    with store.transaction() as tx:
        if tx.execute("SELECT 1 FROM orch_runs WHERE run_id = ?", (record["run_id"],)):
            raise Conflict(f"run {record['run_id']!r} already exists")
        tx.execute("INSERT INTO orch_runs(run_id, kind, name, status, record, created_at, "
                   "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (record["run_id"], kind, name, record["status"], _dump(record), now, now))
        tx.audit(f"{kind}.run_created", detail={"run_id": record["run_id"], kind: name})
        if also is not None:
            also(tx, record["run_id"])


def save_run(store: Store, run_id: str, record: dict[str, Any] | None, audits: Audits) -> None:
    """One transition: the new record (if it changed), its timeline and audit rows."""
    with store.transaction() as tx:
        _save(tx, store.now_iso(), Change(run_id, record, audits))


@dataclass(frozen=True, slots=True)
class Change:
    """One run's transition as :func:`save_changes` stores it; ``fallback``
    is stored instead of ``record`` if that cannot be encoded."""

    run_id: str
    record: dict[str, Any] | None
    audits: Audits
    fallback: dict[str, Any] | None = None


def save_changes(store: Store, changes: list[Change]) -> list[NaosError | None]:
    """Commit ``changes`` in ONE transaction, each in its own savepoint; the
    error of each change that could not be stored (it is left out), or None."""
    errors: list[NaosError | None] = []
    now = store.now_iso()
    with store.transaction() as tx:
        for change in changes:
            tx.execute("SAVEPOINT run_change")
            try:
                _save(tx, now, change)
            except NaosError as exc:
                tx.execute("ROLLBACK TO run_change")
                errors.append(exc)
            else:
                errors.append(None)
            tx.execute("RELEASE run_change")
    return errors


def _save(tx: Tx, now: str, change: Change) -> None:
    record = change.record
    if record is not None:
        try:
            encoded = _dump(record)
        except (TypeError, ValueError) as exc:
            if change.fallback is None:
                raise InvalidRequest(f"run {change.run_id}: record cannot be stored: {exc}"
                                     ) from None
            record, encoded = change.fallback, _dump(change.fallback)
        if not tx.execute("UPDATE orch_runs SET status = ?, record = ?, updated_at = ? "
                          "WHERE run_id = ? RETURNING 1",
                          (record["status"], encoded, now, change.run_id)):
            raise NotFound(f"no run {change.run_id!r}")
    for type_, detail in change.audits:
        tx.audit(type_, detail=detail)  # first: it refuses a detail it cannot encode
        try:
            encoded = _dump(detail)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"run {change.run_id}: {type_} cannot be stored: {exc}"
                                 ) from None
        tx.execute("INSERT INTO orch_timeline(run_id, ts, type, step, detail) "
                   "VALUES (?, ?, ?, ?, ?)", (change.run_id, now, type_, detail.get("step"),
                                              encoded))


def get_run(store: Store, run_id: str) -> dict[str, Any]:
    rows = store.query("SELECT kind, name, status, record, created_at, updated_at "
                       "FROM orch_runs WHERE run_id = ?", (run_id,))
    if not rows:
        raise NotFound(f"no run {run_id!r}")
    return _run(run_id, rows[0])


def _run(run_id: str, row: tuple[Any, ...]) -> dict[str, Any]:
    kind, name, status, record, created, updated = row
    return {"run_id": run_id, "kind": kind, "name": name, "status": status,
            "record": json.loads(record), "created_at": created, "updated_at": updated}


def list_runs(store: Store, kind: str, *, name: str | None = None,
              status: str | None = None, since: str | None = None, limit: int = 100
              ) -> list[dict[str, Any]]:
    """Runs of ``kind``, newest first; ``since`` (a UTC ISO time, the store's
    format) keeps the ones created from then on."""
    where, params = ["kind = ?"], [kind]
    for column, op, value in (("name", "=", name), ("status", "=", status),
                              ("created_at", ">=", since)):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    rows = store.query(
        "SELECT run_id, kind, name, status, record, created_at, updated_at FROM orch_runs "
        f"WHERE {' AND '.join(where)} ORDER BY created_at DESC, run_id LIMIT ?",
        (*params, limit))
    return [_run(r[0], r[1:]) for r in rows]


def unfinished_runs(store: Store, kind: str, final: tuple[str, ...]) -> list[dict[str, Any]]:
    marks = ", ".join("?" for _ in final)
    rows = store.query(
        "SELECT run_id, kind, name, status, record, created_at, updated_at FROM orch_runs "
        f"WHERE kind = ? AND status NOT IN ({marks}) ORDER BY created_at, run_id",
        (kind, *final))
    return [_run(r[0], r[1:]) for r in rows]


def timeline(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = store.query("SELECT ts, type, step, detail FROM orch_timeline WHERE run_id = ? "
                       "ORDER BY id", (run_id,))
    return [{"ts": ts, "type": t, "step": step, "detail": json.loads(detail)}
            for ts, t, step, detail in rows]
