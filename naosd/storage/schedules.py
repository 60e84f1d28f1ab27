"""SQL for schedules (part of the storage layer: it goes through
:class:`naosd.storage.store.Store` only).

A schedule's row holds its spec (``actors/domain/schedule.py``) and where it
stands: ``next_due`` (the first slot not fired yet, seconds since the
epoch), the last slot fired and what it started, counts, and the agent
firings sent but not answered (``in_flight``: re-sent after a restart under
the same idempotency key).  Every change of where a schedule stands is
written with its audit row in one transaction; a saga or workflow firing is
written in the transaction that inserts the run (:func:`fired` takes that
transaction), so the run exists if and only if the slot is recorded fired."""

from __future__ import annotations

import json
from typing import Any

from naosd.errors import Conflict, InvalidRequest, NotFound
from naosd.storage.audit import format_ts
from naosd.storage.store import Store, Tx, utcnow

_COLUMNS = ("name, spec, next_due, last_slot, last_run, last_error, fired, skipped, "
            "in_flight, created_at, updated_at")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def add(store: Store, spec: dict[str, Any], next_due: float, by: str) -> dict[str, Any]:
    """A new schedule, first due at ``next_due``; Conflict if the name is taken,
    NotFound if its target does not exist."""
    try:
        encoded = _dump(spec)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"schedule input cannot be stored as JSON: {exc}") from None
    now = store.now_iso()
    with store.transaction() as tx:
        if tx.execute("SELECT 1 FROM schedules WHERE name = ?", (spec["name"],)):
            raise Conflict(f"a schedule named {spec['name']!r} already exists")
        _check_target(tx, spec["target_kind"], spec["target"])
        tx.execute(f"INSERT INTO schedules({_COLUMNS}) VALUES (?, ?, ?, NULL, '', '', 0, 0, "
                   "'[]', ?, ?)", (spec["name"], encoded, next_due, now, now))
        tx.audit("schedule.added", detail={"schedule": spec["name"], "spec": spec, "by": by})
    return get(store, spec["name"])


def _check_target(tx: Tx, kind: str, name: str) -> None:
    if kind == "agent":
        found = tx.execute("SELECT 1 FROM agents WHERE name = ?", (name,))
    else:
        found = tx.execute("SELECT 1 FROM orch_defs WHERE kind = ? AND name = ?", (kind, name))
    if not found:
        raise NotFound(f"no {kind} named {name!r}")


def remove(store: Store, name: str, by: str) -> None:
    with store.transaction() as tx:
        if not tx.execute("DELETE FROM schedules WHERE name = ? RETURNING 1", (name,)):
            raise NotFound(f"no schedule named {name!r} (naosctl schedule list)")
        tx.audit("schedule.removed", detail={"schedule": name, "by": by})


def get(store: Store, name: str) -> dict[str, Any]:
    rows = store.query(f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (name,))
    if not rows:
        raise NotFound(f"no schedule named {name!r} (naosctl schedule list)")
    return _row(rows[0])


def list_all(store: Store) -> list[dict[str, Any]]:
    return [_row(r) for r in store.query(f"SELECT {_COLUMNS} FROM schedules ORDER BY name")]


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    (name, spec, next_due, last_slot, last_run, last_error, fired, skipped, in_flight,
     created, updated) = row
    return {"name": name, "spec": json.loads(spec), "next_due": next_due,
            "last_slot": last_slot, "last_run": last_run, "last_error": last_error,
            "fired": fired, "skipped": skipped, "in_flight": json.loads(in_flight),
            "created_at": created, "updated_at": updated}


def fired(tx: Tx, name: str, slot: float, next_due: float, *, run: str,
          in_flight: dict[str, Any] | None = None, detail: dict[str, Any]) -> None:
    """Record slot ``slot`` fired (``run``: what it started) and ``next_due``,
    in ``tx``; an agent firing is also kept ``in_flight`` until answered.
    NotFound if the schedule was removed meanwhile (the caller's run is not
    written either)."""
    rows = tx.execute("SELECT in_flight FROM schedules WHERE name = ?", (name,))
    if not rows:
        raise NotFound(f"schedule {name!r} was removed")
    flying = json.loads(str(rows[0][0])) + ([in_flight] if in_flight else [])
    tx.execute("UPDATE schedules SET last_slot = ?, next_due = ?, last_run = ?, "
               "last_error = '', fired = fired + 1, in_flight = ?, updated_at = ? "
               "WHERE name = ?", (slot, next_due, run, _dump(flying), _now(tx), name))
    tx.audit("schedule.fired", detail={"schedule": name, "run": run, **detail})


def failed(store: Store, name: str, slot: float, next_due: float, error: str,
           detail: dict[str, Any]) -> None:
    """Slot ``slot`` could not fire (its target is gone, ...): recorded, and
    the schedule moves on to ``next_due``."""
    with store.transaction() as tx:
        if tx.execute("UPDATE schedules SET last_slot = ?, next_due = ?, last_error = ?, "
                      "updated_at = ? WHERE name = ? RETURNING 1",
                      (slot, next_due, error, _now(tx), name)):
            tx.audit("schedule.failed", detail={"schedule": name, "error": error, **detail})


def skipped(store: Store, name: str, next_due: float, count: int,
            detail: dict[str, Any]) -> None:
    """Missed slots that will not fire: the schedule moves on to ``next_due``
    (the first slot that will)."""
    with store.transaction() as tx:
        if tx.execute("UPDATE schedules SET next_due = ?, skipped = skipped + ?, "
                      "updated_at = ? WHERE name = ? RETURNING 1",
                      (next_due, count, _now(tx), name)):
            tx.audit("schedule.skipped", detail={"schedule": name, **detail})


def answered(store: Store, name: str, key: str, error: str) -> None:
    """An agent firing answered (``error`` empty: it succeeded): no longer in flight."""
    with store.transaction() as tx:
        rows = tx.execute("SELECT in_flight FROM schedules WHERE name = ?", (name,))
        if not rows:
            return  # removed meanwhile: nothing to keep
        flying = [f for f in json.loads(str(rows[0][0])) if f.get("key") != key]
        tx.execute("UPDATE schedules SET in_flight = ?, last_error = ?, updated_at = ? "
                   "WHERE name = ?", (_dump(flying), error, _now(tx), name))
        tx.audit("schedule.answered", detail={"schedule": name, "key": key,
                                              "ok": not error, "error": error or None})


def _now(tx: Tx) -> str:
    """When ``tx`` writes (``updated_at``: for people reading the list)."""
    return format_ts(utcnow())
