"""Agent pools on naosd's event loop: fan-out with merge, and queue mode.

The decisions are pure (``actors/domain/pool.py``: merge strategies, member
picking); this module is the shell.  A fan-out asks every member at once
through the Agents service (bounded by the pool's concurrency), feeds each
reply to ``pool.feed`` and cancels the members still running as soon as the
outcome is decided.  Queue mode keeps an in-memory queue per pool and a
dispatcher that hands each task to ``pool.pick``'s member; ``scale`` changes
the members while tasks run (new clones take work at once, removed ones
finish what they hold) and ``drain`` stops intake and waits for the queue.

Why not a dispatcher actor: fan-out from an actor in the TCP base measured
~630 msgs/s to 4 workers, the asyncio side ~2,000 asks/s; see
docs/architecture.md.  Pools are not durable: a queued task is lost with the
daemon (its submitter gets an error), unlike saga and workflow runs.
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
from naosd import defs_store, orch_store
from naosd.errors import Conflict, InvalidRequest, NaosError, NotFound, RequestTimeout

if TYPE_CHECKING:
    from naosd.daemon import Daemon

THROUGHPUT_WINDOW_S = 60.0
TASKS_KEPT = 10_000  # finished queue tasks remembered for pool.task


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
    status: str = "queued"  # queued, running, completed, failed
    output: Any = None
    error: str = ""
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        return {"task_id": self.id, "member": self.member, "status": self.status,
                "output": self.output, "error": self.error}


class LivePool:
    """Queue-mode state of one pool."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.members = members_of(spec)
        self.picks = pool_m.PickState()
        self.queue: collections.deque[Task] = collections.deque()
        self.running: dict[str, Task] = {}
        self.tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self.finished_at: collections.deque[float] = collections.deque()
        self.completed = 0
        self.failed = 0
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
        members = self.live[name].members if name in self.live else members_of(spec)
        limit = concurrency or spec["concurrency"] or len(members)
        wait_s = timeout_s or spec["timeout_s"]
        strategy = "all" if spec["merge"] == "reducer" else spec["merge"]
        state = pool_m.start(strategy, members)
        gate = asyncio.Semaphore(limit)
        replies: asyncio.Queue[tuple[str, bool, Any]] = asyncio.Queue()
        started = time.monotonic()

        async def ask(member: str) -> None:
            async with gate:
                try:
                    reply = await self.d.agents.run(member, task_input, wait_s=wait_s, key="")
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
        status, value, reason = result.status.value, result.value, result.reason
        if timed_out:
            status = "failed" if not any(r.ok for r in state.results) else "partial"
            reason = reason or f"no reply within {wait_s:g}s from {', '.join(timed_out)}"
            if spec["merge"] in ("all", "reducer") and status == "partial":
                value = [r.value for r in state.results if r.ok]
        if spec["merge"] == "reducer" and status != "failed":
            value, status, reason = await self._reduce(spec, value, result.failed + timed_out,
                                                       status, wait_s)
        out = {"pool": name, "status": status, "value": value, "merge": spec["merge"],
               "failed": result.failed + timed_out, "errors": errors, "reason": reason,
               "replies": [{"member": r.member, "ok": r.ok, "value": r.value}
                           for r in state.results],
               "ms": round((time.monotonic() - started) * 1000, 3)}
        await self.d.db.audit("pool.run", pool=name, status=status, merge=spec["merge"],
                              failed=out["failed"], ms=out["ms"])
        return out

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
        live.queue.append(task)
        live.tasks[task.id] = task
        while len(live.tasks) > TASKS_KEPT:
            live.tasks.popitem(last=False)
        live.wake.set()
        return task.view()

    async def task(self, name: str, task_id: str, wait_s: float) -> dict[str, Any]:
        live = await self._live(name)
        task = live.tasks.get(task_id)
        if task is None:
            raise NotFound(f"pool {name!r} has no task {task_id!r}")
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task.done.wait(), wait_s)
        return task.view()

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
        try:
            reply = await self.d.agents.run(task.member, task.input,
                                            wait_s=live.spec["timeout_s"], key=task.id)
            task.output, task.status = reply["output"], "completed"
            live.completed += 1
        except NaosError as exc:
            task.error, task.status = f"{exc.code}: {exc}", "failed"
            live.failed += 1
        finally:
            del live.running[task.id]
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
        return {"name": name, "merge": spec["merge"], "pick": spec["pick"],
                "members": [{"name": m, "busy": busy.get(m, 0)} for m in members],
                "queued": len(live.queue) if live else 0,
                "running": len(live.running) if live else 0,
                "completed": live.completed if live else 0,
                "failed": live.failed if live else 0,
                "accepting": live.accepting if live else True,
                "throughput_per_s": live.throughput() if live else 0.0}

    async def close(self) -> None:
        for live in self.live.values():
            for task in [*live.calls, live.dispatcher]:
                if task is not None:
                    task.cancel()
            for task in [*live.queue, *live.running.values()]:
                task.status, task.error = "failed", "naosd stopped"
                task.done.set()
