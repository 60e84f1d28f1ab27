"""What naosd serves the orchestration actors on its port, and how the
orchestration parts are built (from narrow dependencies: the store, the
Agents service, the bridge, the port).

Every request runs as its own task on naosd's loop.  A run's transitions
are put back in their order by the run's lane (``lanes.py``) and committed
by one group-commit writer; a step's agent is asked only after its
transition is on disk (durability: "step started" before the step's message
leaves)."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from actors.orch_messages import (
    CoordinatorGaveUp,
    LoadPool,
    LoadRun,
    RecoverRuns,
    RunAgentStep,
    RunChange,
    RunPoolTask,
    SaveRun,
)
from naosd import telemetry
from naosd.errors import InvalidRequest
from naosd.orchestration.calls import AgentCalls, StepCalls
from naosd.orchestration.coordinators import MACHINES, Runs
from naosd.orchestration.lanes import RunLanes, RunWriter, Watchers
from naosd.orchestration.pools import Pools
from naosd.orchestration.scheduler import Scheduler
from naosd.orchestration.tree import Asks, OrchTree
from naosd.storage import origin
from naosd.storage import runs as orch_store

RUN_KINDS = {"s": "saga", "w": "workflow"}  # a run id's first letter (Runs.start)

if TYPE_CHECKING:
    from naosd.runtime.port import ActorPort
    from naosd.storage.db import AsyncStore


class OrchestrationPort:
    """The handlers, one per request type of ``actors/orch_messages.py``."""

    def __init__(self, db: AsyncStore, lanes: RunLanes, calls: StepCalls, pools: Pools,
                 origins: dict[str, dict[str, str]],
                 traces: dict[str, dict[str, str]] | None = None) -> None:
        self._origins = origins  # run id -> who started it (an MCP identity), in memory
        self._traces = {} if traces is None else traces  # run id -> its start's trace context
        self._db = db
        self._lanes = lanes
        self._calls = calls
        self._pools = pools

    def register(self, port: ActorPort) -> None:
        port.register(LoadRun, self.load_run)
        port.register(SaveRun, self.save_run)
        port.register(RunAgentStep, self.run_step)
        port.register(RecoverRuns, self.recover)
        port.register(LoadPool, self.load_pool)
        port.register(RunPoolTask, self.run_pool_task)
        port.register(CoordinatorGaveUp, self.gave_up)

    async def load_run(self, req: LoadRun) -> dict[str, Any]:
        row = await self._db.call(lambda s: orch_store.get_run(s, req.run_id))
        machine = MACHINES.get(row["kind"])
        if machine is None:
            raise InvalidRequest(f"{req.run_id!r} is a {row['kind']} run: no coordinator runs it")
        epoch = self._lanes.open(req.run_id, machine.final)
        return {"kind": row["kind"], "record": row["record"], "epoch": epoch}

    async def save_run(self, req: SaveRun) -> None:
        await self._commit(req.run_id, req.epoch, req.seq, req.change)

    async def run_step(self, req: RunAgentStep) -> dict[str, Any]:
        if req.change is not None:
            await self._commit(req.run_id, req.epoch, req.seq, req.change)
        elif req.seq:
            await self._lanes.reached(req.run_id, req.epoch, req.seq)
        who = self._origins.get(req.run_id)
        with origin.acting_for(who["via"], who["as"]) if who else contextlib.nullcontext(), \
                telemetry.attached(self._traces.get(req.run_id, {})), \
                telemetry.span(f"{RUN_KINDS.get(req.run_id[:1], 'run')}.step {req.agent}") as span:
            if span.recording:
                span.update({"naos.run_id": req.run_id, "naos.step.agent": req.agent,
                             "naos.step.seq": req.seq, "naos.idempotency_key": req.key})
            result = await self._calls.run(req.agent, req.message, key=req.key,
                                           wait_s=req.wait_s)
            span.set("error.type", None if result.get("ok") else str(result.get("code")))
            return result

    async def _commit(self, run_id: str, epoch: int, seq: int, change: RunChange) -> None:
        """The run's rows carry who started it (rows of a run resumed after a
        restart do not: the origin is kept in memory)."""
        who = self._origins.get(run_id)
        audits = [(t, {**d, **who} if who else d) for t, d in change.audits]
        await self._lanes.commit(run_id, epoch, seq, orch_store.Change(
            run_id, change.record, audits, change.fallback))
        record = change.record
        if record is not None and any(record.get("status") in m.final for m in MACHINES.values()):
            self._origins.pop(run_id, None)
            self._traces.pop(run_id, None)

    async def recover(self, req: RecoverRuns) -> dict[str, Any]:
        """Once the agents supervisor is up: the unfinished runs, and the
        pools with queued or in-doubt tasks."""
        await self._calls.tree_ready()
        runs = []
        for kind, machine in MACHINES.items():
            rows = await self._db.call(functools.partial(
                orch_store.unfinished_runs, kind=kind, final=tuple(machine.final)))
            runs += [[r["run_id"], kind] for r in rows]
        return {"runs": runs, "pools": await self._pools.recover()}

    async def load_pool(self, req: LoadPool) -> dict[str, Any]:
        return await self._pools.load(req.pool)

    async def run_pool_task(self, req: RunPoolTask) -> None:
        await self._pools.run_task(req)

    async def gave_up(self, req: CoordinatorGaveUp) -> None:
        self._lanes.close(req.run_id)
        await self._db.audit("orchestration.gave_up", run_id=req.run_id, kind=req.kind,
                             reason=req.reason)


async def build_orchestration(db: AsyncStore, agents: AgentCalls, bridge: Asks,
                              port: ActorPort) -> tuple[Runs, Pools, Scheduler]:
    """The orchestration parts, their port handlers registered; fan-outs a
    crash cut short are recorded failed before anything new can start.  The
    scheduler fires nothing until it is started."""
    watchers = Watchers()
    lanes = RunLanes(RunWriter(db), watchers)
    calls = StepCalls(agents)
    tree = OrchTree(bridge)
    origins: dict[str, dict[str, str]] = {}
    traces: dict[str, dict[str, str]] = {}  # a run's steps continue the trace that started it
    runs = Runs(db, tree, lanes, watchers, origins, traces)
    pools = Pools(db, tree, lanes, watchers, calls)
    await pools.prepare()
    OrchestrationPort(db, lanes, calls, pools, origins, traces).register(port)
    return runs, pools, Scheduler(db, runs, calls)
