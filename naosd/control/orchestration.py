"""Methods for durable sagas and workflows (see docs/protocol.md).

Definitions are edited as drafts (a saga is created empty, then given
steps); each change is validated by building the pure spec, so a bad
definition is refused when it is written, not when it runs.

Cancel, approve and reject are decisions: each is fed to the run's machine
with who made it (``p["by"]``: the peer's uid, see naosd/control/api.py),
which the record and the audit rows keep."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actors.domain import orch_defs as defs
from actors.domain import pool as pool_m
from actors.domain import saga as saga_m
from actors.domain import schedule as sched_m
from actors.domain import workflow as wf_m
from actors.domain.run_events import ON_TIMEOUT, Cancel, Decide
from naosd.control.agents import delete_agent
from naosd.control.params import Bool, Int, Spec, Str, parse_since
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import InvalidRequest
from naosd.orchestration.coordinators import MACHINES, run_view
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("orchestration")
method = METHODS.method

NAME = Str(max_len=64)
RUN = Str(max_len=64)
NUM = (int, float)
PICK = pool_m.PICK_STRATEGIES
STATUSES = {"saga": tuple(saga_m.RunStatus), "workflow": tuple(wf_m.RunStatus)}
NOTE = Str("", max_len=4096)


async def _db(d: Services, fn: Any) -> Any:
    result = await d.db.call(fn)
    await d.db.notify()
    return result


# -- sagas -------------------------------------------------------------------------


@method("saga.create", name=NAME, timeout=Spec(NUM, 3600.0), step_timeout=Spec(NUM, 60.0),
        recovery=Str("forward", choices=saga_m.RECOVERY_MODES),
        compensation_attempts=Int(3, lo=1, hi=100), compensation_delay=Spec(NUM, 1.0),
        compensate_in_doubt=Bool(True))
async def saga_create(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Define an empty saga; add its steps with saga.add_step."""
    draft = defs.saga_draft(p["name"], timeout=p["timeout"], step_timeout=p["step_timeout"],
                            recovery=p["recovery"],
                            compensation_attempts=p["compensation_attempts"],
                            compensation_delay=p["compensation_delay"],
                            compensate_in_doubt=p["compensate_in_doubt"])
    return await _db(d, lambda s: orch_store.create_def(s, "saga", p["name"], draft))


@method("saga.add_step", saga=NAME, step=NAME, agent=Str(None, max_len=64),
        compensate=Str(None, max_len=64), timeout=Spec(NUM, None),
        attempts=Int(1, lo=1, hi=100), retry_delay=Spec(NUM, 1.0), backoff=Spec(NUM, 2.0),
        max_delay=Spec(NUM, 30.0), non_retryable=Spec(list, None), approval=Bool(False),
        on_timeout=Str(None, choices=ON_TIMEOUT))
async def saga_add_step(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Append a step (agent, optional compensation agent, retry policy) to a saga,
    or an approval step (a person decides it: approve / reject)."""
    def change(store: Any) -> dict[str, Any]:
        draft = defs.saga_add_step(
            orch_store.get_def(store, "saga", p["saga"]), p["step"], p["agent"],
            compensate=p["compensate"], timeout=p["timeout"], attempts=p["attempts"],
            retry_delay=p["retry_delay"], backoff=p["backoff"], max_delay=p["max_delay"],
            non_retryable=p["non_retryable"], approval=p["approval"],
            on_timeout=p["on_timeout"])
        return orch_store.update_def(store, "saga", p["saga"], draft, "step_added")

    return await _db(d, change)


@method("saga.list", role=READ)
async def saga_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every saga definition."""
    return await d.db.call(lambda s: orch_store.list_defs(s, "saga"))


async def _runs(d: Services, kind: str, p: dict[str, Any]) -> list[dict[str, Any]]:
    since = parse_since(p["since"], datetime.now(UTC)) if p["since"] else None
    rows = await d.db.call(lambda s: orch_store.list_runs(
        s, kind, name=p["name"], status=p["status"], since=since, limit=p["limit"]))
    return [run_view(r) for r in rows]


async def _history(d: Services, kind: str, run_id: str) -> dict[str, Any]:
    view = await d.orch.status(kind, run_id)
    view["timeline"] = await d.db.call(lambda s: orch_store.timeline(s, run_id))
    return view


def _register_runs(kind: str) -> None:
    """The run methods sagas and workflows share: run, wait, runs, status,
    history, resume, cancel (``saga.run``, ``workflow.run``, ...)."""

    async def run(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await d.orch.start(kind, p["name"], p["input"])

    async def wait(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await d.orch.wait(p["run"], defs.seconds(p["timeout"], "timeout"))

    async def runs(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
        return await _runs(d, kind, p)

    async def status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await d.orch.status(kind, p["run"])

    async def history(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await _history(d, kind, p["run"])

    async def resume(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await d.orch.resume(kind, p["run"])

    async def cancel(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        return await d.orch.command(p["run"], Cancel(p["by"], time.time()), kind)

    run.__doc__ = f"Start a run of a {kind}; returns its run id at once (see {kind}.wait)."
    wait.__doc__ = ("Wait (at most timeout seconds) for a run to end or to await approval; "
                    "its state.")
    runs.__doc__ = "Runs (newest first) with their status, narrowed by name, status, since."
    status.__doc__ = "One run: status, error, each step's state and output."
    history.__doc__ = "A run's step timeline: starts, ends, retries, compensations, times."
    resume.__doc__ = ("Carry on an unfinished run with no live coordinator"
                      + (" or re-run a failed run from its failed step." if kind == "workflow"
                         else "."))
    method(f"{kind}.run", name=NAME, input=Spec(object, None))(run)
    method(f"{kind}.wait", role=READ, run=RUN, timeout=Spec(NUM, 30.0))(wait)
    cancel.__doc__ = ("Cancel a pending, running or awaiting run"
                      + (": its completed steps are compensated; it ends cancelled."
                         if kind == "saga" else "; it ends cancelled."))
    method(f"{kind}.runs", role=READ, name=Str(None, max_len=64),
           status=Str(None, choices=STATUSES[kind]), since=Str(None, max_len=64),
           limit=Int(100, lo=1, hi=10_000))(runs)
    method(f"{kind}.status", role=READ, run=RUN)(status)
    method(f"{kind}.history", role=READ, run=RUN)(history)
    method(f"{kind}.resume", run=RUN)(resume)
    method(f"{kind}.cancel", caller=True, run=RUN)(cancel)

    async def delete(d: Services, p: dict[str, Any]) -> dict[str, Any]:
        final = tuple(sorted(MACHINES[kind].final))
        await _db(d, lambda s: orch_store.delete_def(s, kind, p["name"], final))
        return {"deleted": p["name"], "kind": kind}

    delete.__doc__ = (f"Forget a {kind} definition (its finished runs stay); refused while "
                      "one of its runs has not ended.")
    method(f"{kind}.delete", name=NAME)(delete)


@method("saga.retry_compensation", run=RUN)
async def saga_retry_compensation(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Retry the failed compensations of a compensation_failed run."""
    return await d.orch.command(p["run"], saga_m.RetryCompensation(time.time()), "saga")


@method("saga.resolve", run=RUN, note=Str(max_len=4096))
async def saga_resolve(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Close a compensation_failed run by hand, with a note (stays compensation_failed)."""
    return await d.orch.command(p["run"], saga_m.Resolve(p["note"], time.time()), "saga")


@method("approve", caller=True, run=RUN, note=NOTE, step=Str(None, max_len=64))
async def approve(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Approve the step a saga or workflow run awaits (step: only if it is that one)."""
    return await _decide(d, p, True)


@method("reject", caller=True, run=RUN, note=NOTE, step=Str(None, max_len=64))
async def reject(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Reject the step a run awaits: a saga compensates, a workflow stops (failed)."""
    return await _decide(d, p, False)


async def _decide(d: Services, p: dict[str, Any], approved: bool) -> dict[str, Any]:
    event = Decide(approved, p["by"], p["note"], time.time(), p["step"])
    return await d.orch.command(p["run"], event, None)


# -- workflows -----------------------------------------------------------------------


@method("workflow.create", name=NAME, on_error=Str("stop", choices=wf_m.ON_ERROR),
        retries=Int(0, lo=0, hi=100), retry_delay=Spec(NUM, 0.0), step_timeout=Spec(NUM, 60.0))
async def workflow_create(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Define an empty workflow; add its steps with workflow.add_step."""
    draft = defs.workflow_draft(p["name"], on_error=p["on_error"], retries=p["retries"],
                                retry_delay=p["retry_delay"], step_timeout=p["step_timeout"])
    return await _db(d, lambda s: orch_store.create_def(s, "workflow", p["name"], draft))


@method("workflow.add_step", workflow=NAME, step=NAME, agent=Str(None, max_len=64),
        timeout=Spec(NUM, None), on_error=Str(None, choices=wf_m.ON_ERROR),
        retries=Int(None, lo=0, hi=100), retry_delay=Spec(NUM, None), approval=Bool(False),
        on_timeout=Str(None, choices=ON_TIMEOUT))
async def workflow_add_step(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Append a step (agent, optional own on_error and retry) to a workflow, or an
    approval step (a person decides it: approve / reject)."""
    def change(store: Any) -> dict[str, Any]:
        draft = defs.workflow_add_step(
            orch_store.get_def(store, "workflow", p["workflow"]), p["step"], p["agent"],
            timeout=p["timeout"], on_error=p["on_error"], retries=p["retries"],
            retry_delay=p["retry_delay"], approval=p["approval"], on_timeout=p["on_timeout"])
        return orch_store.update_def(store, "workflow", p["workflow"], draft, "step_added")

    return await _db(d, change)


@method("workflow.list", role=READ)
async def workflow_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every workflow definition."""
    return await d.db.call(lambda s: orch_store.list_defs(s, "workflow"))


_register_runs("saga")
_register_runs("workflow")


# -- pools ---------------------------------------------------------------------------


@method("pool.create", name=NAME, agents=Spec(list, None), agent=Str(None, max_len=64),
        size=Int(None, lo=1, hi=256), merge=Str("all", max_len=32),
        reducer=Str(None, max_len=64), pick=Str("round-robin", choices=PICK),
        concurrency=Int(0, lo=0, hi=1024), timeout=Spec(NUM, 30.0))
async def pool_create(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Define a pool of agents (a list, or N clones of one agent) and its merge."""
    return await d.pools.create(defs.pool_def(**p))


@method("pool.run", name=NAME, input=Spec(object, None), concurrency=Int(None, lo=1, hi=1024),
        timeout=Spec(NUM, None))
async def pool_run(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Fan one input out to every member and merge the replies."""
    timeout = None if p["timeout"] is None else defs.seconds(p["timeout"], "timeout")
    return await d.pools.run(p["name"], p["input"], concurrency=p["concurrency"],
                             timeout_s=timeout)


@method("pool.submit", name=NAME, input=Spec(object, None))
async def pool_submit(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Queue one task; a member is picked round-robin or least-busy."""
    return await d.pools.submit(p["name"], p["input"])


@method("pool.task", role=READ, name=NAME, task=Str(max_len=64), wait=Spec(NUM, 0.0))
async def pool_task(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """A queued task's state and output (waiting up to wait seconds for it)."""
    wait = defs.seconds(p["wait"], "wait", zero_ok=True)
    return await d.pools.task(p["name"], p["task"], wait)


@method("pool.cancel", name=NAME, task=Str(max_len=64))
async def pool_cancel(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Cancel a queued task: it is never sent and ends cancelled."""
    return await d.pools.cancel(p["name"], p["task"])


@method("pool.run_status", role=READ, run=Str(max_len=64))
async def pool_run_status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """A fan-out's record: status, value, failed and cancelled members, reason."""
    return await d.pools.run_status(p["run"])


@method("pool.status", role=READ, name=Str(None, max_len=64))
async def pool_status(d: Services, p: dict[str, Any]) -> Any:
    """Members with their load, queue depth, counts and throughput (one pool or all)."""
    return await d.pools.status(p["name"])


@method("pool.scale", name=NAME, size=Int(lo=1, hi=256))
async def pool_scale(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Change the number of clones while tasks run."""
    return await d.pools.scale(p["name"], p["size"])


@method("pool.delete", name=NAME, timeout=Spec(NUM, 30.0))
async def pool_delete(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Forget a pool (refused while it has queued or running tasks or a fan-out
    that has not ended); the clones it made of its agent go with it."""
    return await delete_pool(d, p["name"], wait_s=defs.seconds(p["timeout"], "timeout"))


async def delete_pool(d: Services, name: str, *, wait_s: float) -> dict[str, Any]:
    spec = await d.pools.delete(name)
    clones = pool_m.members_of(spec) if spec.get("agent") else []
    for clone in clones:
        await delete_agent(d, clone, wait_s=wait_s, force=True)
    return {"deleted": name, "kind": "pool", "clones_deleted": clones}


@method("pool.drain", name=NAME, timeout=Spec(NUM, 30.0))
async def pool_drain(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop taking tasks and wait until the queued and running ones are done."""
    return await d.pools.drain(p["name"], defs.seconds(p["timeout"], "timeout"))


# -- schedules -----------------------------------------------------------------------


@method("schedule.add", caller=True, name=NAME, cron=Str(None, max_len=256),
        every=Int(None, lo=1, hi=sched_m.EVERY_MAX_S), saga=Str(None, max_len=64),
        workflow=Str(None, max_len=64), agent=Str(None, max_len=64), input=Spec(object, None),
        missed=Str("skip", choices=sched_m.MISSED), timeout=Spec(NUM, 60.0))
async def schedule_add(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Run a saga, workflow or agent on a cron schedule (UTC); every: seconds, a testing aid."""
    targets = [(k, p[k]) for k in sched_m.TARGETS if p[k] is not None]
    if len(targets) != 1:
        raise InvalidRequest("schedule.add: give exactly one of saga, workflow, agent")
    (kind, target), = targets
    spec = sched_m.ScheduleSpec(p["name"], kind, target, p["input"], p["cron"], p["every"],
                                p["missed"], p["timeout"])
    return await d.schedules.add(spec, p["by"])


@method("schedule.list", role=READ)
async def schedule_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every schedule: its target, when, the next slot due, the last fired and its run."""
    return await d.schedules.list()


@method("schedule.remove", caller=True, name=NAME)
async def schedule_remove(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Remove a schedule (runs it started go on)."""
    return await d.schedules.remove(p["name"], p["by"])
