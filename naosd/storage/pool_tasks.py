"""SQL for durable pool queue tasks (part of the storage layer: it goes through
:class:`naosd.storage.store.Store` only).

A task's life is three writes: ``submitted`` (before ``pool.submit``
answers), ``running`` with its member and attempt (before the agent is asked)
and a final status with the output or the error (after it answered).  A task
found ``running`` at start is in doubt: it is re-queued and re-sent under the
same idempotency key (its task id).  Finished tasks are kept per pool up to
``keep`` (the oldest are pruned), so ``pool.task`` reads them after a restart.

Task rows carry no audit rows of their own: each agent call already writes
``agent.run`` with the task id as its idempotency key.
"""

from __future__ import annotations

import json
from typing import Any

from naosd.errors import Conflict, NotFound
from naosd.storage.store import Store

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINAL = ("completed", "failed", "cancelled")
_COLUMNS = "task_id, pool, status, member, attempt, input, output, error, submitted_at, " \
           "started_at, finished_at"


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _task(row: tuple[Any, ...]) -> dict[str, Any]:
    (task_id, pool, status, member, attempt, input_, output, error, submitted, started,
     finished) = row
    return {"task_id": task_id, "pool": pool, "status": status, "member": member,
            "attempt": attempt, "input": json.loads(input_),
            "output": None if output is None else json.loads(output), "error": error,
            "submitted_at": submitted, "started_at": started, "finished_at": finished}


def submit(store: Store, pool: str, task_id: str, task_input: Any) -> None:
    encoded = _dump(task_input)  # refuses what JSON cannot hold, before the write
    with store.transaction() as tx:
        tx.execute("INSERT INTO pool_tasks(task_id, pool, status, input, submitted_at) "
                   "VALUES (?, ?, 'queued', ?, ?)", (task_id, pool, encoded, store.now_iso()))


def start(store: Store, task_id: str, member: str) -> int:
    """Mark the task running on ``member``; return its attempt number, or 0
    if it is not queued or running any more (cancelled, finished: not to run)."""
    with store.transaction() as tx:
        rows = tx.execute("UPDATE pool_tasks SET status = 'running', member = ?, "
                          "attempt = attempt + 1, started_at = ? "
                          "WHERE task_id = ? AND status IN ('queued', 'running') "
                          "RETURNING attempt", (member, store.now_iso(), task_id))
    return int(rows[0][0]) if rows else 0


def cancel(store: Store, pool: str, task_id: str, why: str) -> None:
    """Cancel a task that is still queued (Conflict naming its status if not)."""
    with store.transaction() as tx:
        if not tx.execute("UPDATE pool_tasks SET status = 'cancelled', error = ?, "
                          "finished_at = ? WHERE pool = ? AND task_id = ? "
                          "AND status = 'queued' RETURNING 1",
                          (why, store.now_iso(), pool, task_id)):
            row = get(store, pool, task_id)
            on = f" on {row['member']!r}" if row["member"] else ""
            raise Conflict(f"task {task_id!r} is {row['status']}{on}: only a queued task "
                           "can be cancelled")


def finish(store: Store, task_id: str, status: str, output: Any, error: str) -> None:
    if status not in FINAL:
        raise ValueError(f"not a final task status: {status!r}")
    try:
        encoded = None if output is None else _dump(output)
    except (TypeError, ValueError) as exc:
        status, encoded, error = "failed", None, f"bad_output: {exc}"
    with store.transaction() as tx:
        tx.execute("UPDATE pool_tasks SET status = ?, output = ?, error = ?, finished_at = ? "
                   "WHERE task_id = ?", (status, encoded, error, store.now_iso(), task_id))


def get(store: Store, pool: str, task_id: str) -> dict[str, Any]:
    rows = store.query(f"SELECT {_COLUMNS} FROM pool_tasks WHERE pool = ? AND task_id = ?",
                       (pool, task_id))
    if not rows:
        raise NotFound(f"pool {pool!r} has no task {task_id!r}")
    return _task(rows[0])


def unfinished(store: Store, pool: str | None = None) -> list[dict[str, Any]]:
    """Every queued or in-doubt (running) task (of ``pool``), in submission order."""
    where = "status IN ('queued', 'running')"
    params: tuple[str, ...] = ()
    if pool is not None:
        where, params = where + " AND pool = ?", (pool,)
    rows = store.query(f"SELECT {_COLUMNS} FROM pool_tasks WHERE {where} ORDER BY seq", params)
    return [_task(r) for r in rows]


def counts(store: Store, pool: str) -> dict[str, int]:
    found = dict.fromkeys(STATUSES, 0)
    for status, n in store.query("SELECT status, COUNT(*) FROM pool_tasks WHERE pool = ? "
                                 "GROUP BY status", (pool,)):
        found[str(status)] = int(n)
    return found


def prune(store: Store, pool: str, keep: int) -> int:
    """Delete the oldest finished tasks of ``pool`` beyond the newest ``keep``."""
    marks = ", ".join("?" for _ in FINAL)
    with store.transaction() as tx:
        rows = tx.execute(f"SELECT seq FROM pool_tasks WHERE pool = ? AND status IN ({marks}) "
                          "ORDER BY seq DESC LIMIT 1 OFFSET ?", (pool, *FINAL, keep))
        if not rows:
            return 0
        tx.execute(f"DELETE FROM pool_tasks WHERE pool = ? AND status IN ({marks}) "
                   "AND seq <= ?", (pool, *FINAL, rows[0][0]))
        return int(tx.execute("SELECT changes()")[0][0])
