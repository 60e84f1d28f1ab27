"""Durable saga and workflow coordinators on naosd's event loop.

The decisions are the pure state machines' (``actors/domain/saga.py`` and
``workflow.py``); a :class:`Coordinator` is their shell: it feeds each event
to ``handle`` and performs the effects.  Per batch of effects it first writes
ONE SQLite transaction (the last ``Persist`` record, the run's timeline rows
and the audit rows), and only then sends the step messages and arms the
timers, so "step started" is on disk before the step's message leaves and
"step finished" (with its output) before anything decided from it.

One coordinator per run id lives in :attr:`Orchestrator.live` (the event
loop is single-threaded, so check-and-insert is atomic).  On daemon start
:meth:`Orchestrator.recover` rebuilds every unfinished run from its record
and feeds it ``Recover``.

Why here and not as Thespian actors: an actor fanning out to agents in the
TCP base runs at ~630 msgs/s and each actor hop adds ~0.5 ms, while this
side asks agents through private endpoints at ~2,000 asks/s; a coordinator
does no CPU work of its own, it waits on SQLite and on agents, so an asyncio
task per run is the cheapest shell (see docs/architecture.md).

The message a step's agent gets::

    {"run_id", "step", "attempt", "idempotency_key", "input",
     "outputs" (sagas: outputs so far), "output" (compensations: the step's),
     "in_doubt" and "step_key" (compensations of a step that timed out: the
     step's own key, to tell whether it took effect)}

``ctx.idempotency_key`` carries the same key.  A handler that raises fails
the step with the error's code; a reply ``{"error": {"code": C, "message":
M}}`` fails it with code C (a business error a saga's ``non_retryable`` can
name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from actors.domain import saga as saga_m
from actors.domain import workflow as wf_m
from actors.domain.orch_defs import saga_spec, workflow_spec
from actors.domain.run_events import (
    Audit,
    Persist,
    Recover,
    Start,
    StepFailed,
    StepSucceeded,
)
from naosd.errors import Conflict, InvalidRequest, NaosError, NotFound, RequestTimeout
from naosd.storage import definitions as defs_store
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.daemon import Daemon

log = logging.getLogger("naosd.orchestration.coordinators")
SLACK_S = 1.0  # the agent call outlives the step timer: the timer decides


@dataclass(frozen=True)
class Kind:
    name: str
    module: ModuleType
    final: tuple[str, ...]

    def spec(self, draft: dict[str, Any]) -> Any:
        if self.module is saga_m:
            return saga_spec(draft)
        return workflow_spec(draft)


SAGA = Kind("saga", saga_m, tuple(s.value for s in saga_m.FINAL))
WORKFLOW = Kind("workflow", wf_m, (wf_m.RunStatus.COMPLETED.value, wf_m.RunStatus.FAILED.value))
KINDS = {"saga": SAGA, "workflow": WORKFLOW}


class Coordinator:
    """The one live shell of one run."""

    def __init__(self, orch: Orchestrator, kind: Kind, state: Any) -> None:
        self.orch = orch
        self.kind = kind
        self.state = state
        self.run_id: str = state.run_id
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any] | None]] = asyncio.Queue()
        self.finished = asyncio.Event()
        self.calls: set[asyncio.Task[None]] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.task: asyncio.Task[None] | None = None

    @property
    def status(self) -> str:
        return str(self.state.status.value)

    def is_final(self) -> bool:
        if self.kind is SAGA:
            return self.state.status in saga_m.FINAL
        return self.status in self.kind.final

    def post(self, event: Any) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((event, done))
        return done

    def _report(self, event: Any) -> None:
        self.queue.put_nowait((event, None))

    async def loop(self) -> None:
        try:
            while True:
                event, done = await self.queue.get()
                try:
                    new, effects = self.kind.module.handle(self.state, event)
                except NaosError as exc:  # an operator event that does not fit
                    if done is not None and not done.done():
                        done.set_exception(exc)
                else:
                    self.state = new
                    await self._perform(effects)
                    if done is not None and not done.done():
                        done.set_result(self.status)
                if self.is_final() and self.queue.empty():
                    break
        except Exception:  # storage failure: the run stays as last persisted (saga resume)
            log.exception("coordinator of run %s stopped; its last persisted state stands",
                          self.run_id)
        finally:
            self._stop()
            while not self.queue.empty():  # operator events nobody will handle now
                _, left = self.queue.get_nowait()
                if left is not None and not left.done():
                    left.set_exception(Conflict(f"run {self.run_id}: its coordinator "
                                                "stopped; try again"))
            self.finished.set()
            if self.orch.live.get(self.run_id) is self:
                del self.orch.live[self.run_id]

    def _stop(self) -> None:
        for handle in self.timers:
            handle.cancel()
        for task in self.calls:
            task.cancel()

    async def _perform(self, effects: list[Any]) -> None:
        record = None
        audits: orch_store.Audits = []
        for effect in effects:
            if isinstance(effect, Persist):
                record = effect.record
            elif isinstance(effect, Audit):
                audits.append((effect.type, effect.detail))
        if record is not None or audits:
            await self.orch.d.db.call(
                lambda s: orch_store.save_run(s, self.run_id, record, audits))
            await self.orch.d.db.notify()
        for effect in effects:
            name = type(effect).__name__
            if name in ("RunStep", "RunCompensation"):
                task = asyncio.get_running_loop().create_task(self._call(effect))
                self.calls.add(task)
                task.add_done_callback(self.calls.discard)
            elif name == "ArmTimer":
                self._arm(effect)

    def _arm(self, effect: Any) -> None:
        event = self.kind.module.TimerFired(effect.kind.value, effect.step, effect.attempt, 0.0)

        def fire() -> None:
            self.timers.discard(handle)
            self._report(type(event)(event.kind, event.step, event.attempt, time.time()))

        handle = asyncio.get_running_loop().call_later(max(0.0, effect.delay_s), fire)
        self.timers.add(handle)

    async def _call(self, effect: Any) -> None:
        undo = type(effect).__name__ == "RunCompensation"
        message = effect.message  # the machine writes the whole message
        timeout = self.state.spec.step(effect.step).timeout_s
        code, text, output = "", "", None
        try:
            reply = await self.orch.d.agents.run(effect.agent, message,
                                                 wait_s=timeout + SLACK_S,
                                                 key=effect.idempotency_key)
            output = reply["output"]
            err = output.get("error") if isinstance(output, dict) else None
            if isinstance(err, dict):
                code = str(err.get("code") or "step_error")
                text = str(err.get("message") or "")
        except NaosError as exc:
            code, text = exc.code, str(exc)
        now = time.time()
        if undo:
            self._report(saga_m.CompensationFailed(effect.step, code, text, now) if code
                         else saga_m.CompensationSucceeded(effect.step, now))
        else:
            self._report(StepFailed(effect.step, code, text, now) if code
                         else StepSucceeded(effect.step, output, now))


class Orchestrator:
    """Every live coordinator, and the operations the API offers on runs."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.live: dict[str, Coordinator] = {}
        self.closing = False

    def _spawn(self, kind: Kind, state: Any) -> Coordinator:
        if state.run_id in self.live:
            raise Conflict(f"run {state.run_id!r} already has a live coordinator")
        if self.closing:
            raise Conflict("naosd is stopping")
        coord = Coordinator(self, kind, state)
        self.live[state.run_id] = coord
        coord.task = asyncio.get_running_loop().create_task(coord.loop())
        return coord

    async def start(self, kind_name: str, name: str, run_input: Any) -> dict[str, Any]:
        kind = KINDS[kind_name]
        draft = await self.d.db.call(lambda s: orch_store.get_def(s, kind_name, name))
        spec = kind.spec(draft)
        await self._check_agents(kind_name, spec)
        run_id = f"{kind_name[0]}-{uuid.uuid4().hex[:12]}"
        state = kind.module.initial(run_id, spec, run_input)
        record = kind.module.to_record(state)
        await self.d.db.call(lambda s: orch_store.insert_run(s, kind_name, name, record))
        coord = self._spawn(kind, state)
        coord.post(Start(time.time()))
        return {"run_id": run_id, kind_name: name, "status": record["status"]}

    async def _check_agents(self, kind_name: str, spec: Any) -> None:
        """Refuse a run whose steps name agents that are not registered."""
        for step in spec.steps:
            for agent in (step.agent, getattr(step, "compensate_agent", None)):
                if agent is not None and not await self.d.db.call(
                        lambda s, a=agent: defs_store.name_taken(s, a) == "agent"):
                    raise NotFound(f"{kind_name} {spec.name!r} step {step.name!r}: "
                                   f"no agent named {agent!r}")

    async def _coordinator(self, run_id: str) -> Coordinator:
        """The live coordinator of ``run_id``, or a new one from its record."""
        coord = self.live.get(run_id)
        if coord is not None:
            return coord
        row = await self.d.db.call(lambda s: orch_store.get_run(s, run_id))
        if row["kind"] not in KINDS:
            raise InvalidRequest(f"{run_id!r} is a {row['kind']} run")
        coord = self.live.get(run_id)  # another call may have spawned it meanwhile
        if coord is not None:
            return coord
        kind = KINDS[row["kind"]]
        return self._spawn(kind, kind.module.from_record(row["record"]))

    async def command(self, run_id: str, event: Any, kind_name: str) -> dict[str, Any]:
        """Feed an operator event (resume, retry-compensation, resolve)."""
        row = await self.d.db.call(lambda s: orch_store.get_run(s, run_id))
        if row["kind"] != kind_name:
            raise InvalidRequest(f"{run_id!r} is a {row['kind']} run, not a {kind_name} run")
        coord = await self._coordinator(run_id)
        await coord.post(event)
        return await self.describe(run_id)

    async def wait(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        coord = self.live.get(run_id)
        if coord is not None:
            try:
                await asyncio.wait_for(asyncio.shield(coord.finished.wait()), timeout_s)
            except TimeoutError:
                raise RequestTimeout(
                    f"run {run_id} is still {coord.status} after {timeout_s:g}s; "
                    f"see its status later") from None
        view = await self.describe(run_id)
        view["live"] = run_id in self.live
        return view

    async def describe(self, run_id: str) -> dict[str, Any]:
        row = await self.d.db.call(lambda s: orch_store.get_run(s, run_id))
        return run_view(row)

    async def recover(self) -> list[str]:
        """Carry on every unfinished run (after a restart)."""
        recovered = []
        for kind in KINDS.values():
            rows = await self.d.db.call(
                lambda s, k=kind: orch_store.unfinished_runs(s, k.name, k.final))
            for row in rows:
                if row["run_id"] in self.live:
                    continue
                try:
                    state = kind.module.from_record(row["record"])
                except NaosError as exc:
                    log.error("run %s cannot be recovered: %s", row["run_id"], exc)
                    continue
                coord = self._spawn(kind, state)
                pending = state.status.value == "pending"
                coord.post(Start(time.time()) if pending else Recover(time.time()))
                recovered.append(row["run_id"])
        if recovered:
            log.info("recovered %d unfinished runs", len(recovered))
        return recovered

    async def close(self) -> None:
        self.closing = True
        for coord in list(self.live.values()):
            if coord.task is not None:
                coord.task.cancel()
        for coord in list(self.live.values()):
            if coord.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await coord.task


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    """A run for clients: status, error and each step's state and output."""
    record = row["record"]
    steps = [{k: s.get(k) for k in ("name", "status", "attempt", "undo_attempt", "output",
                                    "error")} for s in record["steps"]]
    return {"run_id": row["run_id"], "kind": row["kind"], "name": row["name"],
            "status": row["status"], "error": record.get("error", ""),
            "resolution": record.get("resolution", ""), "input": record.get("input"),
            "steps": steps, "created_at": row["created_at"], "updated_at": row["updated_at"]}


async def apply_definitions(d: Daemon, sections: dict[str, list[dict[str, Any]]]
                            ) -> dict[str, list[str]]:
    """Create the sagas, workflows and pools of a project file; names that
    exist are left as they are and reported (like agents)."""
    created, kept = [], []
    for section, kind in (("sagas", "saga"), ("workflows", "workflow"), ("pools", "pool")):
        for spec in sections.get(section, []):
            label = f"{kind} {spec['name']}"
            if await d.db.call(lambda s, k=kind, n=spec["name"]: orch_store.def_exists(s, k, n)):
                kept.append(label)
            elif kind == "pool":
                await d.pools.create(spec)
                created.append(label)
            else:
                await d.db.call(lambda s, k=kind, sp=spec: orch_store.create_def(
                    s, k, sp["name"], sp))
                created.append(label)
    await d.db.notify()
    return {"created": created, "existing": kept}
