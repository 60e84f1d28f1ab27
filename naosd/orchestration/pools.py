"""Agent pools on naosd's event loop: fan-out with merge, and queue mode.

The decisions are pure (``actors/domain/pool.py``: merge strategies, member
picking); this module is the shell.  A fan-out asks every member at once
through the Agents service (bounded by the pool's concurrency), feeds each
reply to ``pool.feed`` and cancels the members still running as soon as the
outcome is decided.  Queue mode keeps an in-memory queue per pool and a
dispatcher that hands each task to ``pool.pick``'s member; ``scale`` changes
the members while tasks run (new clones take work at once, removed ones
finish what they hold) and ``drain`` stops intake and waits for the queue.

Durability (``naosd/storage/pool_tasks.py``): a queue task is a row before
``pool.submit`` answers, "started" (member, attempt) is written before the
agent is asked and "finished" (output or error) after it answered; at start,
queued and in-doubt tasks are queued again and re-sent under the same
idempotency key (the task id).  A fan-out is an ``orch_runs`` row of kind
``pool``: one found unfinished at start ends ``failed`` with the reason (it is
not resumed: its caller is gone).

Why not a dispatcher actor: fan-out from an actor in the TCP base measured
~630 msgs/s to 4 workers, the asyncio side ~2,000 asks/s; see
docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any

from actors.domain import pool as pool_m
from naosd.errors import Conflict, InvalidRequest, NaosError, NotFound, RequestTimeout
from naosd.storage import definitions as defs_store
from naosd.storage import pool_tasks as pool_store
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.daemon import Daemon

THROUGHPUT_WINDOW_S = 60.0
TASKS_KEPT = 10_000  # finished queue tasks kept per pool in SQLite for pool.task
PRUNE_EVERY = 256  # finished tasks of a pool between two prunes
RUN_FINAL = ("completed", "partial", "failed")
CRASHED = "naosd stopped during the fan-out (members may have run it: key <run_id>:<member>)"


def clone_name(agent: str, i: int) -> str:
    return f"{agent}-c{i}"


def members_of(spec: dict[str, Any]) -> list[str]:
    if spec.get("agents"):
        return list(spec["agents"])
    return [clone_name(spec["agent"], i) for i in range(1, spec["size"] + 1)]


@dataclasses.dataclass
class Task:
    id: str
    input: Any
    member: str = ""
    status: str = "queued"  # queued, running, completed, failed, cancelled
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class LivePool:
    """Queue-mode state of one pool."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.members = members_of(spec)
        self.picks = pool_m.PickState()
        self.queue: collections.deque[Task] = collections.deque()
        self.running: dict[str, Task] = {}
        self.tasks: dict[str, Task] = {}  # not finished yet (the rest is in SQLite)
        self.finished_at: collections.deque[float] = collections.deque()
        self.completed = 0  # since this start (the counts in pool.status are SQLite's)
        self.failed = 0
        self.since_prune = 0
        self.accepting = True
        self.wake = asyncio.Event()
        self.dispatcher: asyncio.Task[None] | None = None
        self.calls: set[asyncio.Task[None]] = set()

    def throughput(self) -> float:
        now = time.monotonic()
        while self.finished_at and now - self.finished_at[0] > THROUGHPUT_WINDOW_S:
            self.finished_at.popleft()
        if len(self.finished_at) < 2:
            return 0.0
        span = max(now - self.finished_at[0], 1e-6)
        return round(len(self.finished_at) / span, 3)


class Pools:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.live: dict[str, LivePool] = {}

    async def _spec(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = await self.d.db.call(lambda s: orch_store.get_def(s, "pool", name))
        return spec

    # -- definitions -------------------------------------------------------------
    async def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        for agent in spec.get("agents") or [spec["agent"]]:
            await self.d.db.call(lambda s, a=agent: defs_store.get_agent(s, a))
        if spec.get("reducer"):
            await self.d.db.call(lambda s: defs_store.get_agent(s, spec["reducer"]))
        if await self.d.db.call(lambda s: orch_store.def_exists(s, "pool", spec["name"])):
            raise Conflict(f"a pool named {spec['name']!r} already exists")
        if spec.get("agent"):
            await self._ensure_clones(spec)
        await self.d.db.call(lambda s: orch_store.create_def(s, "pool", spec["name"], spec))
        await self.d.db.notify()
        return spec

    async def _ensure_clones(self, spec: dict[str, Any]) -> None:
        """Register clones 1..size of the pool's agent (on-demand agents)."""
        base = await self.d.db.call(lambda s: defs_store.get_agent(s, spec["agent"]))

        def make(store: Any) -> None:
            for name in members_of(spec):
                taken = defs_store.name_taken(store, name)
                if taken is None:
                    defs_store.create_agent(store, dataclasses.replace(
                        base, name=name, supervisor=None, desired="stopped"))
                    continue
                other = defs_store.get_agent(store, name) if taken == "agent" else None
                if other is None or (other.source_kind, other.source, other.config) != (
                        base.source_kind, base.source, base.config):
                    raise Conflict(f"cannot clone {spec['agent']!r} as {name!r}: that name "
                                   "is taken by something else")

        await self.d.db.call(make)

    # -- fan-out -----------------------------------------------------------------
    async def run(self, name: str, task_input: Any, *, concurrency: int | None,
                  timeout_s: float | None) -> dict[str, Any]:
        spec = await self._spec(name)
        run_id = "p-" + uuid.uuid4().hex[:12]
        members = self.live[name].members if name in self.live else members_of(spec)
        record = {"run_id": run_id, "status": "running", "pool": name, "merge": spec["merge"],
                  "members": members, "input": task_input}
        try:
            await self.d.db.call(lambda s: orch_store.insert_run(s, "pool", name, record))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"pool input cannot be stored as JSON: {exc}") from None
        try:
            return await self._fan_out(spec, record, concurrency, timeout_s)
        except BaseException as exc:  # never leave the record running while naosd runs
            why = f"fan-out aborted: {type(exc).__name__}: {exc}"
            final = {**record, "status": "failed", "reason": why}
            audit = {"run_id": run_id, "pool": name, "status": "failed", "reason": why}
            with contextlib.suppress(Exception):
                await self.d.db.call(lambda s: orch_store.save_run(
                    s, run_id, final, [("pool.run_failed", audit)]))
            raise

    async def _fan_out(self, spec: dict[str, Any], record: dict[str, Any],
                       concurrency: int | None, timeout_s: float | None) -> dict[str, Any]:
        name, run_id, task_input = spec["name"], record["run_id"], record["input"]
        members = record["members"]
        limit = concurrency or spec["concurrency"] or len(members)
        wait_s = timeout_s or spec["timeout_s"]
        strategy = "all" if spec["merge"] == "reducer" else spec["merge"]
        state = pool_m.start(strategy, members)
        gate = asyncio.Semaphore(limit)
        replies: asyncio.Queue[tuple[str, bool, Any]] = asyncio.Queue()
        started = time.monotonic()
        asked: set[str] = set()

        async def ask(member: str) -> None:
            async with gate:
                asked.add(member)
                try:
                    reply = await self.d.agents.run(member, task_input, wait_s=wait_s,
                                                    key=f"{run_id}:{member}")
                    replies.put_nowait((member, True, reply["output"]))
                except NaosError as exc:
                    replies.put_nowait((member, False, f"{exc.code}: {exc}"))

        calls = [asyncio.ensure_future(ask(m)) for m in members]
        errors: dict[str, str] = {}
        try:
            async with asyncio.timeout(wait_s):
                decided = False
                while not decided:
                    member, ok, value = await replies.get()
                    if not ok:
                        errors[member] = value
                    state, decided = pool_m.feed(state, member, ok, value)
        except TimeoutError:
            pass
        finally:
            for call in calls:
                call.cancel()
        result = pool_m.outcome(state)
        timed_out = list(pool_m.pending(state)) if not result.decided else []
        # decided early (first, quorum, majority): the members that had not
        # answered lost; those never asked (concurrency) were not sent anything
        losers = list(pool_m.pending(state)) if result.decided else []
        cancelled = [m for m in losers if m in asked]
        not_sent = [m for m in losers if m not in asked]
        status, value, reason = result.status.value, result.value, result.reason
        if timed_out:
            status = "failed" if not any(r.ok for r in state.results) else "partial"
            reason = reason or f"no reply within {wait_s:g}s from {', '.join(timed_out)}"
            if spec["merge"] in ("all", "reducer") and status == "partial":
                value = [r.value for r in state.results if r.ok]
        if spec["merge"] == "reducer" and status != "failed":
            value, status, reason = await self._reduce(spec, value, result.failed + timed_out,
                                                       status, wait_s)
        out = {"run_id": run_id, "pool": name, "status": status, "value": value,
               "merge": spec["merge"], "failed": result.failed + timed_out,
               "cancelled": cancelled, "not_sent": not_sent, "errors": errors,
               "reason": reason,
               "replies": [{"member": r.member, "ok": r.ok, "value": r.value}
                           for r in state.results],
               "ms": round((time.monotonic() - started) * 1000, 3)}
        final = {**record, **out, "status": status}
        audit = {"run_id": run_id, "pool": name, "status": status, "merge": spec["merge"],
                 "failed": out["failed"], "cancelled": cancelled, "ms": out["ms"]}
        try:
            await self.d.db.call(lambda s: orch_store.save_run(s, run_id, final,
                                                               [("pool.run", audit)]))
        except (TypeError, ValueError):  # a member's output JSON cannot hold: keep the outcome
            final = {**record, "status": status, "reason": reason, "failed": out["failed"]}
            await self.d.db.call(lambda s: orch_store.save_run(s, run_id, final,
                                                               [("pool.run", audit)]))
        return out

    async def recover(self) -> dict[str, int]:
        """After a restart: unfinished fan-outs end failed, queue tasks go on."""
        runs = await self.d.db.call(
            lambda s: orch_store.unfinished_runs(s, "pool", RUN_FINAL))
        for row in runs:
            final = {**row["record"], "status": "failed", "reason": CRASHED}
            audit = {"run_id": row["run_id"], "pool": row["name"], "status": "failed",
                     "reason": CRASHED}
            await self.d.db.call(lambda s, r=row["run_id"], f=final, a=audit: orch_store.save_run(
                s, r, f, [("pool.run_failed", a)]))
        tasks = await self.d.db.call(pool_store.unfinished)
        requeued = in_doubt = 0
        for row in tasks:
            try:
                live = await self._live(row["pool"])
            except NotFound:
                await self.d.db.call(lambda s, t=row["task_id"]: pool_store.finish(
                    s, t, "failed", None, "pool_gone: the pool is no longer defined"))
                continue
            if row["task_id"] in live.tasks:  # submitted since the start: already queued
                continue
            task = Task(row["task_id"], row["input"])
            in_doubt += int(row["status"] == "running")
            requeued += 1
            live.queue.append(task)
            live.tasks[task.id] = task
            live.wake.set()
        if runs or tasks:
            await self.d.db.audit("pool.recovered", runs_failed=len(runs), tasks=requeued,
                                  in_doubt=in_doubt)
        return {"runs_failed": len(runs), "tasks": requeued, "in_doubt": in_doubt}

    async def run_status(self, run_id: str) -> dict[str, Any]:
        row = await self.d.db.call(lambda s: orch_store.get_run(s, run_id))
        if row["kind"] != "pool":
            raise InvalidRequest(f"{run_id!r} is a {row['kind']} run, not a pool run")
        return {**row["record"], "run_id": run_id, "created_at": row["created_at"],
                "updated_at": row["updated_at"]}

    async def _reduce(self, spec: dict[str, Any], values: Any, failed: list[str],
                      status: str, wait_s: float) -> tuple[Any, str, str]:
        try:
            reply = await self.d.agents.run(spec["reducer"], {"results": values,
                                                              "failed": failed},
                                            wait_s=wait_s, key="")
        except NaosError as exc:
            return values, "failed", f"reducer {spec['reducer']!r} failed: {exc}"
        return reply["output"], status, ""

    # -- queue mode --------------------------------------------------------------
    async def _live(self, name: str) -> LivePool:
        live = self.live.get(name)
        if live is None:
            live = LivePool(await self._spec(name))
            if name in self.live:  # created meanwhile
                return self.live[name]
            self.live[name] = live
            live.dispatcher = asyncio.get_running_loop().create_task(self._dispatch(live))
        return live

    async def submit(self, name: str, task_input: Any) -> dict[str, Any]:
        live = await self._live(name)
        if not live.accepting:
            raise Conflict(f"pool {name!r} is drained: it takes no new tasks")
        task = Task(uuid.uuid4().hex[:12], task_input)
        try:
            await self.d.db.call(lambda s: pool_store.submit(s, name, task.id, task_input))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"task input cannot be stored as JSON: {exc}") from None
        live.queue.append(task)
        live.tasks[task.id] = task
        live.wake.set()
        return _view(await self.d.db.call(lambda s: pool_store.get(s, name, task.id)))

    async def cancel(self, name: str, task_id: str) -> dict[str, Any]:
        """Cancel a queued task (one already sent to a member cannot be)."""
        row = await self.d.db.call(lambda s: pool_store.get(s, name, task_id))
        live = self.live.get(name)
        task = live.tasks.get(task_id) if live else None
        if live is None or task is None or task.status != "queued":
            raise Conflict(f"task {task_id!r} is {row['status']}"
                           + (f" on {row['member']!r}" if row["member"] else "")
                           + ": only a queued task can be cancelled")
        live.queue.remove(task)
        await self.d.db.call(lambda s: pool_store.finish(s, task_id, "cancelled", None,
                                                         "cancelled by request"))
        task.status = "cancelled"
        del live.tasks[task_id]
        task.done.set()
        live.wake.set()
        await self.d.db.audit("pool.task_cancelled", pool=name, task_id=task_id)
        return _view(await self.d.db.call(lambda s: pool_store.get(s, name, task_id)))

    async def task(self, name: str, task_id: str, wait_s: float) -> dict[str, Any]:
        await self._spec(name)
        live = self.live.get(name)
        task = live.tasks.get(task_id) if live else None
        if task is not None and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task.done.wait(), wait_s)
        return _view(await self.d.db.call(lambda s: pool_store.get(s, name, task_id)))

    async def _dispatch(self, live: LivePool) -> None:
        limit = max(1, live.spec["concurrency"] or 0)
        while True:
            await live.wake.wait()
            live.wake.clear()
            while live.queue and len(live.running) < max(limit, len(live.members)):
                task = live.queue.popleft()
                member, live.picks = pool_m.pick(live.members, live.spec["pick"], live.picks)
                task.member, task.status = member, "running"
                live.running[task.id] = task
                call = asyncio.get_running_loop().create_task(self._work(live, task))
                live.calls.add(call)
                call.add_done_callback(live.calls.discard)

    async def _work(self, live: LivePool, task: Task) -> None:
        name = live.spec["name"]
        try:
            # "started" is on disk before the agent is asked
            await self.d.db.call(lambda s: pool_store.start(s, task.id, task.member))
            try:
                reply = await self.d.agents.run(task.member, task.input,
                                                wait_s=live.spec["timeout_s"], key=task.id)
                status, output, error = "completed", reply["output"], ""
            except NaosError as exc:
                status, output, error = "failed", None, f"{exc.code}: {exc}"
            await self.d.db.call(lambda s: pool_store.finish(s, task.id, status, output, error))
            task.status = status
            if status == "completed":
                live.completed += 1
            else:
                live.failed += 1
            live.since_prune += 1
            if live.since_prune >= PRUNE_EVERY:
                live.since_prune = 0
                await self.d.db.call(lambda s: pool_store.prune(s, name, TASKS_KEPT))
        finally:  # cancelled at shutdown: the row stays running (in doubt) and is re-sent
            del live.running[task.id]
            if task.status != "running":
                live.tasks.pop(task.id, None)
            with contextlib.suppress(NaosError):
                live.picks = pool_m.release(live.picks, task.member)
            live.finished_at.append(time.monotonic())
            task.done.set()
            live.wake.set()

    async def scale(self, name: str, size: int) -> dict[str, Any]:
        spec = await self._spec(name)
        if not spec.get("agent"):
            raise InvalidRequest(f"pool {name!r} has a fixed member list; only a pool of "
                                 "clones (--agent A --size N) can be scaled")
        spec = {**spec, "size": size}
        await self._ensure_clones(spec)
        await self.d.db.call(lambda s: orch_store.update_def(s, "pool", name, spec, "scaled"))
        await self.d.db.notify()
        live = await self._live(name)
        live.spec = spec
        live.members = members_of(spec)  # removed clones finish what they hold
        live.wake.set()
        return await self.status(name)

    async def drain(self, name: str, wait_s: float) -> dict[str, Any]:
        live = await self._live(name)
        live.accepting = False
        deadline = time.monotonic() + wait_s
        while live.queue or live.running:
            if time.monotonic() > deadline:
                raise RequestTimeout(f"pool {name!r} still has {len(live.queue)} queued and "
                                     f"{len(live.running)} running tasks after {wait_s:g}s")
            await asyncio.sleep(0.02)
        await self.d.db.audit("pool.drained", pool=name, completed=live.completed,
                              failed=live.failed)
        return await self.status(name)

    async def status(self, name: str | None = None) -> Any:
        if name is None:
            specs = await self.d.db.call(lambda s: orch_store.list_defs(s, "pool"))
            return [await self.status(s["name"]) for s in specs]
        spec = await self._spec(name)
        live = self.live.get(name)
        members = live.members if live else members_of(spec)
        busy = dict(live.picks.busy) if live else {}
        counts = await self.d.db.call(lambda s: pool_store.counts(s, name))
        return {"name": name, "merge": spec["merge"], "pick": spec["pick"],
                "members": [{"name": m, "busy": busy.get(m, 0)} for m in members],
                # task counts from SQLite (finished ones within the retention)
                "tasks": {"queued": counts["queued"], "running": counts["running"],
                          "done": counts["completed"], "failed": counts["failed"],
                          "cancelled": counts["cancelled"]},
                "queued": counts["queued"], "running": counts["running"],
                "completed": counts["completed"], "failed": counts["failed"],
                "cancelled": counts["cancelled"],
                "accepting": live.accepting if live else True,
                "throughput_per_s": live.throughput() if live else 0.0}

    async def close(self) -> None:
        for live in self.live.values():
            for task in [*live.calls, live.dispatcher]:
                if task is not None:
                    task.cancel()
            for task in [*live.queue, *live.running.values()]:
                task.done.set()  # waiters answer; the rows stay queued/running for recovery


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("task_id", "member", "status", "attempt", "output", "error",
                                "submitted_at", "started_at", "finished_at")}
