"""Agent pools, naosd's side: definitions, submitting and cancelling queue
tasks, fan-outs, and the status a client sees.

Each pool in use has its own ACTOR (``actors/orchestration_pool.py``): it
holds the queue and the fan-outs as pure machines (``actors/domain/pool.py``)
and asks naosd, through the port, to run each task or member call.  naosd
keeps what is durable and what clients ask about:

- a queue task is a row before ``pool.submit`` answers; the pool's actor is
  then told (``Enqueue``).  naosd marks the row running before the agent is
  asked and stores the final status after it answered (:meth:`Pools.run_task`,
  the port's ``RunPoolTask``).  A failure of naosd's own never finishes a
  task: its row stays, the actor queues it again;
- a fan-out's record is written before the pool's actor is asked to run it;
  the actor's final record answers ``pool.run`` (a fan-out found unfinished
  when naosd starts ends ``failed``: its caller is gone);
- at start, once the agents supervisor is up, the orchestration supervisor
  asks which pools have queued or in-doubt tasks (:meth:`Pools.recover`) and
  starts their actors, which load those tasks and re-send the in-doubt ones
  under the same idempotency key (the task id).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from actors.domain.pool import RUN_FINAL, FanOutSpec, members_of
from actors.orch_messages import CancelTask, Enqueue, PoolChanged, RunPoolTask, StartFanOut
from naosd.errors import Conflict, InvalidRequest, NaosError, RequestTimeout
from naosd.orchestration.calls import StepCalls
from naosd.orchestration.lanes import RunLanes, Watchers
from naosd.orchestration.tree import OrchTree, rid
from naosd.storage import definitions as defs_store
from naosd.storage import pool_tasks as pool_store
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.orchestration.pools")
THROUGHPUT_WINDOW_S = 60.0
TASKS_KEPT = 10_000  # finished queue tasks kept per pool in SQLite for pool.task
PRUNE_EVERY = 256  # finished tasks of a pool between two prunes
FAN_OUT_SLACK_S = 10.0  # beyond the fan-out's own time (members, then reducer)
CRASHED = "naosd stopped during the fan-out (members may have run it: key <run_id>:<member>)"
OUT_KEYS = ("run_id", "pool", "status", "value", "merge", "failed", "cancelled", "not_sent",
            "errors", "reason", "replies", "ms")


@dataclasses.dataclass
class Book:
    """What naosd counts of one pool while it runs (SQLite has the rest)."""

    running: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> member
    finished_at: collections.deque[float] = dataclasses.field(
        default_factory=collections.deque)
    completed: int = 0  # since this start
    failed: int = 0
    since_prune: int = 0
    accepting: bool = True
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def busy(self) -> dict[str, int]:
        return dict(collections.Counter(self.running.values()))

    def throughput(self) -> float:
        now = time.monotonic()
        while self.finished_at and now - self.finished_at[0] > THROUGHPUT_WINDOW_S:
            self.finished_at.popleft()
        if len(self.finished_at) < 2:
            return 0.0
        span = max(now - self.finished_at[0], 1e-6)
        return round(len(self.finished_at) / span, 3)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Pools:
    def __init__(self, db: AsyncStore, tree: OrchTree, lanes: RunLanes, watchers: Watchers,
                 calls: StepCalls) -> None:
        self._db = db
        self._tree = tree
        self._lanes = lanes
        self._watchers = watchers  # runs (fan-outs) and tasks, by id
        self._calls = calls
        self._books: dict[str, Book] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # queue tasks being run
        self._outbox: dict[str, list[tuple[str, Any]]] = {}  # pool -> tasks to announce
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._runs_failed = 0  # fan-outs failed at start, for the next pool.recovered row
        # pools deleted since naosd started: their actor may still hold the old
        # queue settings, so a pool created again under the name tells it its own
        self._deleted: set[str] = set()

    def _book(self, name: str) -> Book:
        return self._books.setdefault(name, Book())

    async def _spec(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = await self._db.call(lambda s: orch_store.get_def(s, "pool", name))
        return spec

    # -- definitions -------------------------------------------------------------
    async def _check_agents(self, spec: dict[str, Any]) -> None:
        for agent in spec.get("agents") or [spec["agent"]]:
            await self._db.call(lambda s, a=agent: defs_store.get_agent(s, a))
        if spec.get("reducer"):
            await self._db.call(lambda s: defs_store.get_agent(s, spec["reducer"]))

    async def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        await self._check_agents(spec)
        if await self._db.call(lambda s: orch_store.def_exists(s, "pool", spec["name"])):
            raise Conflict(f"a pool named {spec['name']!r} already exists")
        if spec.get("agent"):
            await self._ensure_clones(spec)
        await self._db.call(lambda s: orch_store.create_def(s, "pool", spec["name"], spec))
        await self._db.notify()
        if spec["name"] in self._deleted:
            self._deleted.discard(spec["name"])
            await self._tree.ask_pool(spec["name"], PoolChanged(rid(), spec))
        return spec

    async def delete(self, name: str) -> dict[str, Any]:
        """Forget a pool's definition (its finished tasks and fan-outs stay,
        for history); refused while a task is queued or running, or a fan-out
        has not ended.  Returns the definition it had."""
        spec = await self._spec(name)

        def drop(store: Any) -> None:
            busy = pool_store.unfinished(store, name)
            if busy:
                raise Conflict(f"pool {name!r} has {len(busy)} queued or running task(s): "
                               f"naosctl pool drain {name} first")
            orch_store.delete_def(store, "pool", name, tuple(sorted(RUN_FINAL)))

        await self._db.call(drop)
        await self._db.notify()
        self._deleted.add(name)
        self._books.pop(name, None)
        return spec

    async def _ensure_clones(self, spec: dict[str, Any]) -> None:
        """Register clones 1..size of the pool's agent (on-demand agents)."""
        base = await self._db.call(lambda s: defs_store.get_agent(s, spec["agent"]))

        def make(store: Any) -> None:
            for name in members_of(spec):
                taken = defs_store.name_taken(store, name)
                if taken is None:
                    # a clone is charged and gated as the agent it clones
                    # (its trust registration, its budget), not a new identity
                    defs_store.create_agent(store, dataclasses.replace(
                        base, name=name, supervisor=None, desired="stopped",
                        execution={**base.execution, "acts_as": base.name}))
                    continue
                other = defs_store.get_agent(store, name) if taken == "agent" else None
                if other is None or (other.source_kind, other.source, other.config) != (
                        base.source_kind, base.source, base.config):
                    raise Conflict(f"cannot clone {spec['agent']!r} as {name!r}: that name "
                                   "is taken by something else")

        await self._db.call(make)

    async def scale(self, name: str, size: int) -> dict[str, Any]:
        spec = await self._spec(name)
        if not spec.get("agent"):
            raise InvalidRequest(f"pool {name!r} has a fixed member list; only a pool of "
                                 "clones (--agent A --size N) can be scaled")
        spec = {**spec, "size": size}
        await self._ensure_clones(spec)
        await self._db.call(lambda s: orch_store.update_def(s, "pool", name, spec, "scaled"))
        await self._db.notify()
        await self._tree.ask_pool(name, PoolChanged(rid(), spec))  # removed clones finish
        return await self.status(name)

    async def redefine(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Replace a pool's definition (members, merge, pick, concurrency,
        timeout): queued tasks go to the new members, running ones finish."""
        await self._spec(spec["name"])  # NotFound
        await self._check_agents(spec)
        if spec.get("agent"):
            await self._ensure_clones(spec)
        await self._db.call(lambda s: orch_store.update_def(s, "pool", spec["name"], spec,
                                                            "redefined"))
        await self._db.notify()
        await self._tree.ask_pool(spec["name"], PoolChanged(rid(), spec))
        return spec

    # -- fan-out -----------------------------------------------------------------
    async def run(self, name: str, task_input: Any, *, concurrency: int | None,
                  timeout_s: float | None) -> dict[str, Any]:
        spec = await self._spec(name)
        run_id = "p-" + uuid.uuid4().hex[:12]
        members = members_of(spec)
        wait_s = timeout_s or spec["timeout_s"]
        fan = FanOutSpec(name, spec["merge"], tuple(members),
                         concurrency or spec["concurrency"] or len(members), wait_s,
                         spec.get("reducer"))
        record = {"run_id": run_id, "status": "running", "pool": name, "merge": spec["merge"],
                  "members": members, "input": task_input}
        try:
            await self._db.call(lambda s: orch_store.insert_run(s, "pool", name, record))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"pool input cannot be stored as JSON: {exc}") from None
        epoch = self._lanes.open(run_id, frozenset(RUN_FINAL))
        changed = self._watchers.watch(run_id)  # before the actor can finish
        try:
            await self._tree.ask_pool(name, StartFanOut(rid(), run_id, epoch, record, fan))
            final = await self._outcome(run_id, changed, 2 * wait_s + FAN_OUT_SLACK_S)
        except BaseException as exc:  # never leave the record running while naosd runs
            self._watchers.forget(run_id, changed)
            self._lanes.close(run_id, epoch)
            why = f"fan-out aborted: {type(exc).__name__}: {exc}"
            audit = {"run_id": run_id, "pool": name, "status": "failed", "reason": why}
            with contextlib.suppress(Exception):
                await self._db.call(lambda s: orch_store.save_run(
                    s, run_id, {**record, "status": "failed", "reason": why},
                    [("pool.run_failed", audit)]))
            raise
        return {k: final.get(k) for k in OUT_KEYS}

    async def _outcome(self, run_id: str, changed: asyncio.Future[dict[str, Any]],
                       wait_s: float) -> dict[str, Any]:
        """The fan-out's final record, as its pool actor persisted it."""
        try:
            async with asyncio.timeout(wait_s):
                while (record := await changed).get("status") not in RUN_FINAL:
                    changed = self._watchers.watch(run_id)
        except TimeoutError:
            raise RequestTimeout(f"fan-out {run_id} had no outcome after {wait_s:g}s "
                                 "(its pool's actor stopped?)") from None
        return record

    async def run_status(self, run_id: str) -> dict[str, Any]:
        row = await self._db.call(lambda s: orch_store.get_run(s, run_id))
        if row["kind"] != "pool":
            raise InvalidRequest(f"{run_id!r} is a {row['kind']} run, not a pool run")
        return {**row["record"], "run_id": run_id, "created_at": row["created_at"],
                "updated_at": row["updated_at"]}

    # -- queue mode: the API -------------------------------------------------------
    async def submit(self, name: str, task_input: Any) -> dict[str, Any]:
        book = self._books.get(name)  # no book for a name nobody defined
        if book is not None and not book.accepting:
            raise Conflict(f"pool {name!r} is drained: it takes no new tasks")
        task_id = uuid.uuid4().hex[:12]

        def queue(store: Any) -> dict[str, Any]:  # one trip to the store thread
            orch_store.get_def(store, "pool", name)
            pool_store.submit(store, name, task_id, task_input)
            return pool_store.get(store, name, task_id)

        try:
            row = await self._db.call(queue)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"task input cannot be stored as JSON: {exc}") from None
        self._announce(name, task_id, task_input)
        return _view(row)

    def _announce(self, name: str, task_id: str, task_input: Any) -> None:
        """Tell the pool's actor, in submission order, without holding the
        submitter: one sender per pool, whatever queued meanwhile in one message."""
        self._outbox.setdefault(name, []).append((task_id, task_input))
        sender = self._senders.get(name)
        if sender is None or sender.done():
            self._senders[name] = asyncio.get_running_loop().create_task(self._send(name))

    async def _send(self, name: str) -> None:
        while batch := self._outbox.pop(name, None):
            try:
                await self._tree.ask_pool(name, Enqueue(rid(), tuple(batch)))
            except NaosError as exc:  # durable: the pool's actor loads them when it starts
                log.warning("pool %s: %d tasks queued, its actor not told: %s", name,
                            len(batch), exc)

    async def cancel(self, name: str, task_id: str) -> dict[str, Any]:
        """Cancel a queued task (one already sent to a member cannot be)."""
        row = await self._db.call(lambda s: pool_store.get(s, name, task_id))
        if row["status"] == "queued":
            with contextlib.suppress(Conflict):  # already sent: the row decides below
                await self._tree.ask_pool(name, CancelTask(rid(), task_id))
        await self._db.call(lambda s: pool_store.cancel(s, name, task_id,
                                                        "cancelled by request"))
        self._settled(name, task_id)
        await self._db.audit("pool.task_cancelled", pool=name, task_id=task_id)
        return _view(await self._db.call(lambda s: pool_store.get(s, name, task_id)))

    async def task(self, name: str, task_id: str, wait_s: float) -> dict[str, Any]:
        """A task's row, once it is final or after ``wait_s``."""
        await self._spec(name)
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            changed = self._watchers.watch(task_id)
            try:
                row = await self._db.call(lambda s: pool_store.get(s, name, task_id))
                left = deadline - asyncio.get_running_loop().time()
                if row["status"] in pool_store.FINAL or left <= 0:
                    return _view(row)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(changed), left)
            finally:
                self._watchers.forget(task_id, changed)

    async def drain(self, name: str, wait_s: float) -> dict[str, Any]:
        """Stop taking tasks; return once none is queued or running."""
        await self._spec(name)
        book = self._book(name)
        book.accepting = False
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            changed = book.changed
            counts = await self._db.call(lambda s: pool_store.counts(s, name))
            if not counts["queued"] and not counts["running"]:
                break
            try:
                left = max(0.0, deadline - asyncio.get_running_loop().time())
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                raise RequestTimeout(f"pool {name!r} still has {counts['queued']} queued and "
                                     f"{counts['running']} running tasks after {wait_s:g}s"
                                     ) from None
        await self._db.audit("pool.drained", pool=name, completed=book.completed,
                             failed=book.failed)
        return await self.status(name)

    async def status(self, name: str | None = None) -> Any:
        if name is None:
            specs = await self._db.call(lambda s: orch_store.list_defs(s, "pool"))
            return [await self.status(s["name"]) for s in specs]
        spec = await self._spec(name)
        book = self._book(name)
        busy = book.busy()
        counts = await self._db.call(lambda s: pool_store.counts(s, name))
        return {"name": name, "merge": spec["merge"], "pick": spec["pick"],
                "members": [{"name": m, "busy": busy.get(m, 0)} for m in members_of(spec)],
                # task counts from SQLite (finished ones within the retention)
                "tasks": {"queued": counts["queued"], "running": counts["running"],
                          "done": counts["completed"], "failed": counts["failed"],
                          "cancelled": counts["cancelled"]},
                "queued": counts["queued"], "running": counts["running"],
                "completed": counts["completed"], "failed": counts["failed"],
                "cancelled": counts["cancelled"],
                "accepting": book.accepting, "throughput_per_s": book.throughput()}

    # -- queue mode: what the pool actors ask (the port) ---------------------------
    async def run_task(self, req: RunPoolTask) -> None:
        """Run one task: running on disk, the agent, the final status on
        disk.  A task already being run (re-sent by a restarted pool actor)
        is not run twice: this waits for that run."""
        work = self._tasks.get(req.task_id)
        if work is None:
            work = asyncio.get_running_loop().create_task(self._run_task(req))
            self._tasks[req.task_id] = work
            work.add_done_callback(lambda t, k=req.task_id: self._task_gone(k, t))
        await asyncio.shield(work)

    def _task_gone(self, task_id: str, work: asyncio.Task[None]) -> None:
        if self._tasks.get(task_id) is work:
            del self._tasks[task_id]
        if not work.cancelled():
            work.exception()  # retrieved: the asker may be gone

    async def _run_task(self, req: RunPoolTask) -> None:
        book = self._book(req.pool)
        attempt = await self._db.call(lambda s: pool_store.start(s, req.task_id, req.member))
        if not attempt:  # cancelled (or finished) meanwhile: settled, never sent
            return
        book.running[req.task_id] = req.member
        try:
            result = await self._calls.run(req.member, req.input, key=req.task_id,
                                           wait_s=req.wait_s)
        finally:  # a failure of naosd's own leaves the row running (in doubt)
            book.running.pop(req.task_id, None)
        if result["ok"]:
            status, output, error = "completed", result["output"], ""
            book.completed += 1
        else:
            status, output, error = "failed", None, f"{result['code']}: {result['message']}"
            book.failed += 1
        await self._db.call(lambda s: pool_store.finish(s, req.task_id, status, output, error))
        book.finished_at.append(time.monotonic())
        book.since_prune += 1
        if book.since_prune >= PRUNE_EVERY:
            book.since_prune = 0
            await self._db.call(lambda s: pool_store.prune(s, req.pool, TASKS_KEPT))
        self._settled(req.pool, req.task_id)

    def _settled(self, pool: str, task_id: str) -> None:
        self._watchers.notify(task_id, {"task_id": task_id})
        self._book(pool).wake()

    async def load(self, pool: str) -> dict[str, Any]:
        """A starting pool actor: the pool's definition and its queued and
        in-doubt tasks, in submission order."""
        spec = await self._spec(pool)
        rows = await self._db.call(lambda s: pool_store.unfinished(s, pool))
        return {"spec": spec, "tasks": [[r["task_id"], r["input"]] for r in rows]}

    # -- start and recovery ---------------------------------------------------------
    async def prepare(self) -> None:
        """At daemon start: a fan-out found unfinished ends failed (its
        caller's connection is gone), before anything new can start."""
        rows = await self._db.call(lambda s: orch_store.unfinished_runs(s, "pool", RUN_FINAL))
        for row in rows:
            final = {**row["record"], "status": "failed", "reason": CRASHED}
            audit = {"run_id": row["run_id"], "pool": row["name"], "status": "failed",
                     "reason": CRASHED}
            await self._db.call(lambda s, r=row["run_id"], f=final, a=audit: orch_store.save_run(
                s, r, f, [("pool.run_failed", a)]))
        self._runs_failed = len(rows)

    async def recover(self) -> list[str]:
        """The pools whose actors must run: queued and in-doubt tasks.  Tasks
        of a pool that is no longer defined end failed.  Audited as one
        ``pool.recovered`` row."""
        rows = await self._db.call(pool_store.unfinished)
        pools: list[str] = []
        requeued = in_doubt = 0
        for row in rows:
            if row["pool"] not in pools:
                pool, task_id = str(row["pool"]), str(row["task_id"])
                if not await self._db.call(
                        functools.partial(orch_store.def_exists, kind="pool", name=pool)):
                    await self._db.call(functools.partial(
                        pool_store.finish, task_id=task_id, status="failed", output=None,
                        error="pool_gone: the pool is no longer defined"))
                    continue
                pools.append(row["pool"])
            requeued += 1
            in_doubt += int(row["status"] == "running")
        runs_failed, self._runs_failed = self._runs_failed, 0
        if runs_failed or rows:
            await self._db.audit("pool.recovered", runs_failed=runs_failed, tasks=requeued,
                                 in_doubt=in_doubt)
        return pools

    async def close(self) -> None:
        for work in [*self._tasks.values(), *self._senders.values()]:
            work.cancel()  # the rows stay running (in doubt) and are re-sent at the start
        await self._calls.aclose()


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("task_id", "member", "status", "attempt", "output", "error",
                                "submitted_at", "started_at", "finished_at")}

