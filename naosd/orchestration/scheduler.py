"""Schedules, naosd's side: adding, listing and removing them, and the task
that fires the due ones (what is due is ``actors/domain/schedule.py``'s
pure :func:`~actors.domain.schedule.plan`, fed this clock's time).

A firing of a saga or workflow is written in ONE transaction with the run's
first record (``Runs.start`` with ``also``): after a crash either the run
exists and the slot is recorded fired (recovery carries the run on), or
neither, and the slot is still due.  An agent firing is recorded first, as
in flight, then the agent is asked through the Agents service (the path of
``agent.run``) under the idempotency key ``schedule:NAME:SLOT``; if naosd
stops before the answer, the next start sends it again under the same key,
so an agent that applies its effect once per key does it once.

Missed slots (naosd was down) are the spec's ``missed`` policy's: ``skip``
fires once for the newest, ``catch-up`` fires each (at most
``CATCH_UP_MAX``); the rest are recorded skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actors.domain import schedule as sched_m
from naosd.errors import NaosError
from naosd.storage import schedules as store_m
from naosd.storage.audit import format_ts

if TYPE_CHECKING:
    from naosd.orchestration.calls import StepCalls
    from naosd.orchestration.coordinators import Runs
    from naosd.storage.db import AsyncStore
    from naosd.storage.store import Tx

log = logging.getLogger("naosd.scheduler")
IDLE_S = 60.0  # the longest the task sleeps: a clock that jumped is noticed within this
AGAIN_S = 5.0  # an agent firing naosd could not send (its own failure) is tried again
COUNT_MAX = 1000  # skipped slots counted one by one at most (the audit says "at least")


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_ts(datetime.fromtimestamp(epoch, UTC))


class Scheduler:
    def __init__(self, db: AsyncStore, runs: Runs, calls: StepCalls,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._runs = runs
        self._calls = calls
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._agent_calls: set[asyncio.Task[None]] = set()

    # -- the API -------------------------------------------------------------------
    async def add(self, spec: sched_m.ScheduleSpec, by: str) -> dict[str, Any]:
        due = sched_m.first_due(spec, self._clock())
        row = await self._db.call(lambda s: store_m.add(s, spec.to_dict(), due, by))
        await self._db.notify()
        self._wake.set()
        return view(row)

    async def remove(self, name: str, by: str) -> dict[str, Any]:
        await self._db.call(lambda s: store_m.remove(s, name, by))
        await self._db.notify()
        self._wake.set()
        return {"removed": name}

    async def list(self) -> list[dict[str, Any]]:
        return [view(r) for r in await self._db.call(store_m.list_all)]

    # -- the task --------------------------------------------------------------------
    def start(self) -> None:
        """Fire due schedules from now on (agent firings left in flight first)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._agent_calls) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _run(self) -> None:
        for row in await self._db.call(store_m.list_all):
            for flight in row["in_flight"]:  # naosd stopped before the agent answered
                self._ask_agent(row, flight, again=True)
        while True:
            try:
                wait = await self.tick()
            except NaosError as exc:  # the store failed: try again later, do not stop
                log.warning("scheduler: %s", exc.message)
                wait = IDLE_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def tick(self) -> float:
        """Fire what is due now; seconds until the next slot (at most IDLE_S)."""
        now = self._clock()
        soonest = now + IDLE_S
        for row in await self._db.call(store_m.list_all):
            try:
                spec = sched_m.ScheduleSpec.from_dict(row["spec"])
                firing = sched_m.plan(spec, row["next_due"], now)
                if firing.slots:
                    await self._fire(spec, firing)
            except NaosError as exc:  # one schedule's trouble is not the others'
                log.warning("schedule %s: %s", row["name"], exc.message)
                continue
            soonest = min(soonest, firing.next_due)
        return max(0.0, soonest - self._clock())

    async def _fire(self, spec: sched_m.ScheduleSpec, firing: sched_m.Firing) -> None:
        if firing.skipped is not None:
            first, last = firing.skipped
            count = _count(spec, first, last)
            await self._db.call(lambda s: store_m.skipped(
                s, spec.name, firing.slots[0], count,
                {"from": iso(first), "to": iso(last), "count": count,
                 "at_least": count >= COUNT_MAX, "missed": spec.missed}))
        for i, slot in enumerate(firing.slots):
            after = firing.slots[i + 1] if i + 1 < len(firing.slots) else firing.next_due
            await self._fire_slot(spec, slot, after)
        await self._db.notify()

    async def _fire_slot(self, spec: sched_m.ScheduleSpec, slot: float, after: float) -> None:
        detail = {"slot": iso(slot), "target": f"{spec.target_kind}:{spec.target}"}
        try:
            if spec.target_kind == "agent":
                await self._fire_agent(spec, slot, after, detail)
            else:
                def also(tx: Tx, run_id: str) -> None:
                    store_m.fired(tx, spec.name, slot, after, run=run_id, detail=detail)

                await self._runs.start(spec.target_kind, spec.target, spec.input, also)
        except NaosError as exc:  # NotFound from get: removed meanwhile (tick logs it)
            row = await self._db.call(lambda s: store_m.get(s, spec.name))
            if row["last_slot"] == slot:  # recorded: its coordinator starts by recovery
                log.warning("schedule %s fired, but: %s", spec.name, exc.message)
                return
            error = exc.message
            await self._db.call(lambda s: store_m.failed(s, spec.name, slot, after, error,
                                                         detail))

    async def _fire_agent(self, spec: sched_m.ScheduleSpec, slot: float, after: float,
                          detail: dict[str, Any]) -> None:
        key = f"schedule:{spec.name}:{iso(slot)}"
        flight: dict[str, Any] = {"key": key, "slot": slot}

        def record(store: Any) -> dict[str, Any]:
            with store.transaction() as tx:
                store_m.fired(tx, spec.name, slot, after, run=key, in_flight=flight,
                              detail=detail)
            return store_m.get(store, spec.name)

        self._ask_agent(await self._db.call(record), flight)

    def _ask_agent(self, row: dict[str, Any], flight: dict[str, Any], again: bool = False
                   ) -> None:
        spec = sched_m.ScheduleSpec.from_dict(row["spec"])
        task = asyncio.get_running_loop().create_task(self._agent_call(spec, flight, again))
        self._agent_calls.add(task)
        task.add_done_callback(self._agent_calls.discard)

    async def _agent_call(self, spec: sched_m.ScheduleSpec, flight: dict[str, Any],
                          again: bool) -> None:
        key = flight["key"]
        if again:
            await self._db.audit("schedule.resent", schedule=spec.name, key=key)
        while True:  # until answered, or naosd stops (then it is sent at the next start)
            try:
                await self._calls.tree_ready()
                answer = await self._calls.run(spec.target, spec.input, key=key,
                                               wait_s=spec.timeout_s)
                break
            except NaosError as exc:  # naosd's own failure, never the agent's
                log.warning("schedule %s: agent %s not asked (%s); again in %gs", spec.name,
                            spec.target, exc.message, AGAIN_S)
                await asyncio.sleep(AGAIN_S)
        error = "" if answer["ok"] else f"{answer['code']}: {answer['message']}"
        await self._db.call(lambda s: store_m.answered(s, spec.name, key, error))
        await self._db.notify()


def _count(spec: sched_m.ScheduleSpec, first: float, last: float) -> int:
    """How many slots from ``first`` to ``last`` (a cron's: at most COUNT_MAX)."""
    if spec.every_s is not None:
        return round((last - first) / spec.every_s) + 1
    count, slot, timing = 1, first, spec.timing
    while slot < last and count < COUNT_MAX:
        slot, count = timing.next_after(slot), count + 1
    return count


def view(row: dict[str, Any]) -> dict[str, Any]:
    """A schedule for clients: its spec, the next slot due and the last fired."""
    spec = row["spec"]
    return {"name": row["name"], "cron": spec["cron"], "every_s": spec["every_s"],
            "target_kind": spec["target_kind"], "target": spec["target"],
            "input": spec["input"], "missed": spec["missed"], "timeout_s": spec["timeout_s"],
            "next_due": iso(row["next_due"]), "last_slot": iso(row["last_slot"]),
            "last_run": row["last_run"], "last_error": row["last_error"],
            "fired": row["fired"], "skipped": row["skipped"],
            "in_flight": len(row["in_flight"]), "created_at": row["created_at"]}
