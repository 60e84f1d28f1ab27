"""Sagas and workflows, naosd's side: starting runs, operators' commands,
waiting for outcomes, and what a run looks like to clients.

Each running saga or workflow has its own coordinator ACTOR
(``actors/orchestration.py``), which holds the pure machine
(``actors/domain/saga.py``, ``workflow.py``) and persists every transition
and asks every step's agent through naosd's port
(``naosd/orchestration/port_handlers.py``).  naosd writes a run's first
record, opens its lane (``lanes.py``: transitions committed in order) and
asks the orchestration supervisor to start its coordinator; recovery after
a restart is the supervisor's (it asks naosd which runs are unfinished once
the agents supervisor is up).  A wait returns when the run's final record
is committed.

The message a step's agent gets::

    {"run_id", "step", "attempt", "idempotency_key", "input",
     "outputs" (sagas: outputs so far), "output" (compensations: the step's),
     "in_doubt" and "step_key" (compensations of a step that timed out: the
     step's own key, to tell whether it took effect)}

``ctx.idempotency_key`` carries the same key.  A handler that raises fails
the step with the error's code; a reply ``{"error": {"code": C, "message":
M}}`` fails it with code C (a business error a saga's ``non_retryable`` can
name).

Operators' events (cancel, a person's approval or rejection) go to the run's
coordinator like any command and carry who sent them (``uid:1000``,
``dashboard``): the machine keeps that in the record and its audit rows.
A wait also ends when the run awaits approval: nothing happens until a
person decides.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actors.domain import saga as saga_m
from actors.domain import workflow as wf_m
from actors.domain.orch_defs import saga_spec, workflow_spec
from actors.domain.run_events import AWAITING_APPROVAL, Cancel, Decide, Machine, Recover
from actors.orch_messages import RunCommand, StartRun
from naosd import telemetry
from naosd.errors import (
    Conflict,
    InvalidRequest,
    NaosError,
    NotFound,
    RequestTimeout,
    Unavailable,
)
from naosd.orchestration.lanes import RunLanes, Watchers
from naosd.orchestration.tree import OrchTree, rid
from naosd.storage import definitions as defs_store
from naosd.storage import origin
from naosd.storage import runs as orch_store
from naosd.storage.audit import format_ts

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore
    from naosd.storage.store import Tx

MACHINES: dict[str, Machine] = {"saga": saga_m.MACHINE, "workflow": wf_m.MACHINE}
SPECS: dict[str, Callable[[dict[str, Any]], Any]] = {"saga": saga_spec,
                                                     "workflow": workflow_spec}
INITIAL: dict[str, Callable[[str, Any, Any], Any]] = {"saga": saga_m.initial,
                                                      "workflow": wf_m.initial}


class Runs:
    """The operations the API offers on saga and workflow runs."""

    def __init__(self, db: AsyncStore, tree: OrchTree, lanes: RunLanes,
                 watchers: Watchers, origins: dict[str, dict[str, str]] | None = None,
                 traces: dict[str, dict[str, str]] | None = None) -> None:
        self._db = db
        self._origins = {} if origins is None else origins
        self._traces = {} if traces is None else traces
        self._tree = tree
        self._lanes = lanes
        self._watchers = watchers

    async def start(self, kind: str, name: str, run_input: Any,
                    also: Callable[[Tx, str], None] | None = None) -> dict[str, Any]:
        """Write the run's first record, then have its coordinator started.
        ``also(tx, run_id)`` writes more in the record's transaction (a
        schedule's firing: both are on disk, or neither)."""
        machine = MACHINES[kind]
        spec = await self._db.call(lambda s: _runnable(s, kind, name))
        run_id = f"{kind[0]}-{uuid.uuid4().hex[:12]}"
        record = machine.to_record(INITIAL[kind](run_id, spec, run_input))
        try:
            await self._db.call(lambda s: orch_store.insert_run(s, kind, name, record, also))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{kind} input cannot be stored as JSON: {exc}") from None
        epoch = self._lanes.open(run_id, machine.final)
        who = origin.current()
        if who is not None:
            self._origins[run_id] = who
        if trace := telemetry.carrier():
            self._traces[run_id] = trace
        try:
            await self._tree.ask(StartRun(rid(), run_id, kind, record, epoch))
        except NaosError as exc:
            self._lanes.close(run_id, epoch)
            raise Unavailable(f"run {run_id} is recorded but its coordinator did not start "
                              f"({exc}); recovery starts it when the orchestration "
                              "supervisor restarts") from exc
        return {"run_id": run_id, kind: name, "status": record["status"]}

    async def command(self, run_id: str, event: Any, kind: str | None) -> dict[str, Any]:
        """Feed an operator's event to the run's coordinator (started for it
        if the run has none); answer once its transition is on disk.
        ``kind`` None: whichever the run is (a saga or a workflow)."""
        row = await self._db.call(lambda s: orch_store.get_run(s, run_id))
        kind = kind or row["kind"]
        if row["kind"] != kind or kind not in MACHINES:
            raise InvalidRequest(f"{run_id!r} is a {row['kind']} run, not a "
                                 f"{kind if kind in MACHINES else 'saga or workflow'} run")
        if isinstance(event, Cancel | Decide) and row["status"] in MACHINES[kind].final:
            _refuse(MACHINES[kind], row, event)  # no coordinator is started to say no
        done = await self._tree.ask(RunCommand(rid(), run_id, kind, event))
        if done["seq"]:
            await self._lanes.reached(run_id, done["epoch"], done["seq"])
        return await self.status(kind, run_id)

    async def resume(self, kind: str, run_id: str) -> dict[str, Any]:
        """Carry on a run with no live coordinator; re-run a failed workflow
        from its failed step."""
        view = await self.status(kind, run_id)
        if view["live"]:
            raise Conflict(f"run {run_id!r} is already being run")
        if kind == "workflow" and view["status"] == wf_m.RunStatus.FAILED.value:
            return await self.command(run_id, wf_m.Resume(time.time()), kind)
        if view["status"] in MACHINES[kind].final:
            raise Conflict(f"run {run_id!r} is {view['status']}: nothing to resume")
        return await self.command(run_id, Recover(time.time()), kind)

    async def wait(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        """The run once it is final or awaits approval, or RequestTimeout
        after ``timeout_s``; at once if no coordinator runs it."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            changed = self._watchers.watch(run_id)  # before reading: no change is missed
            try:
                row = await self._db.call(lambda s: orch_store.get_run(s, run_id))
                if row["kind"] not in MACHINES:
                    raise InvalidRequest(f"{run_id!r} is a {row['kind']} run")
                if row["status"] in MACHINES[row["kind"]].final | {AWAITING_APPROVAL}:
                    break
                if not self.live(run_id):
                    break
                left = deadline - asyncio.get_running_loop().time()
                try:
                    await asyncio.wait_for(asyncio.shield(changed), max(0.0, left))
                except TimeoutError:
                    raise RequestTimeout(
                        f"run {run_id} is still {row['status']} after {timeout_s:g}s; "
                        "see its status later") from None
            finally:
                self._watchers.forget(run_id, changed)
        view = run_view(row)
        view["live"] = self.live(run_id)
        return view

    async def status(self, kind: str, run_id: str) -> dict[str, Any]:
        view = await self.describe(run_id)
        if view["kind"] != kind:
            raise InvalidRequest(f"{run_id!r} is a {view['kind']} run, not a {kind} run")
        view["live"] = self.live(run_id)
        return view

    def live(self, run_id: str) -> bool:
        """A coordinator owns the run: started (or restarting after a crash)
        and not final yet.  Its lane is open exactly that long."""
        return self._lanes.epoch(run_id) is not None

    async def describe(self, run_id: str) -> dict[str, Any]:
        row = await self._db.call(lambda s: orch_store.get_run(s, run_id))
        return run_view(row)

    async def close(self) -> None:
        """Nothing to stop: coordinators are actors; runs stay as on disk."""


def _refuse(machine: Machine, row: dict[str, Any], event: Cancel | Decide) -> None:
    """The machine's own Conflict for ``event`` on the final run ``row``."""
    machine.handle(machine.from_record(row["record"]), event)
    raise Conflict(f"run {row['run_id']!r} is {row['status']}")  # pragma: no cover


def _runnable(store: Any, kind: str, name: str) -> Any:
    """The spec of definition ``name``; NotFound when a step names an agent
    that is not registered (one store call for all the checks)."""
    spec = SPECS[kind](orch_store.get_def(store, kind, name))
    for step in spec.steps:
        for agent in (step.agent, getattr(step, "compensate_agent", None)):
            if agent and defs_store.name_taken(store, agent) != "agent":
                raise NotFound(f"{kind} {spec.name!r} step {step.name!r}: "
                               f"no agent named {agent!r}")
    return spec


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    """A run for clients: status, error, each step's state and output, and
    (awaiting approval) which step waits, until when, escalated or not."""
    record = row["record"]
    specs = {s["name"]: s for s in (record.get("spec") or {}).get("steps", [])}
    steps = [{k: s.get(k) for k in ("name", "status", "attempt", "undo_attempt", "output",
                                    "error", "decision")}
             | {"kind": specs.get(s["name"], {}).get("kind", "agent")}
             for s in record["steps"]]
    return {"run_id": row["run_id"], "kind": row["kind"], "name": row["name"],
            "status": row["status"], "error": record.get("error", ""),
            "resolution": record.get("resolution", ""), "input": record.get("input"),
            "steps": steps, "awaiting": _awaiting(record, specs),
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def _awaiting(record: dict[str, Any], specs: dict[str, Any]) -> dict[str, Any] | None:
    if record.get("status") != AWAITING_APPROVAL:
        return None
    step = next((s for s in record["steps"] if s.get("status") == AWAITING_APPROVAL), None)
    if step is None:
        return None
    due = step.get("due")
    return {"step": step["name"], "escalated": step.get("attempt", 1) > 1,
            "on_timeout": specs.get(step["name"], {}).get("on_timeout", "reject"),
            "due": None if due is None else iso(due)}


def iso(epoch: float) -> str:
    """Seconds since the epoch in the UTC ISO-8601 form of the store's times."""
    return format_ts(datetime.fromtimestamp(epoch, UTC))
