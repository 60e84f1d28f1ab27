"""naosd/orchestration/lanes.py on a real SQLite file: each run's transitions
committed in their order whatever order they arrive in, many runs' in one
transaction, a stale shell refused, a change that cannot be stored failing
alone; and the shared run vocabulary's small pieces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.domain import orch_tree as ot
from actors.domain.run_events import (
    Audit,
    CompensationFailed,
    CompensationSucceeded,
    Persist,
    RetryPolicy,
    RunCompensation,
    RunStep,
    StepFailed,
    StepSucceeded,
    reply_event,
)
from actors.orch_messages import RunChange
from actors.orchestration_run import change_of
from naosd.errors import Conflict, InvalidRequest
from naosd.orchestration.lanes import RunLanes, RunWriter, Watchers
from naosd.storage import runs as orch_store
from naosd.storage.db import AsyncStore

FINAL = frozenset({"done"})


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = await AsyncStore.open(tmp_path / "naos.db", checkpoint=tmp_path / "audit.head",
                                  synchronous="full", busy_timeout_ms=5000)
    try:
        yield store
    finally:
        await store.close()


def change(run_id: str, n: int, status: str = "running", **detail: object) -> orch_store.Change:
    record = {"run_id": run_id, "status": status, "n": n, "steps": []}
    return orch_store.Change(run_id, record, [("saga.step", {"run_id": run_id, "n": n,
                                                             **detail})])


async def insert(db: AsyncStore, *run_ids: str) -> None:
    for run_id in run_ids:
        await db.call(lambda s, r=run_id: orch_store.insert_run(
            s, "saga", "x", {"run_id": r, "status": "pending", "steps": []}))


async def test_transitions_arriving_out_of_order_are_committed_in_order(db: AsyncStore):
    await insert(db, "r1")
    watchers = Watchers()
    lanes = RunLanes(RunWriter(db), watchers)
    epoch = lanes.open("r1", FINAL)
    seen = watchers.watch("r1")
    writes = [lanes.commit("r1", epoch, n, change("r1", n)) for n in (3, 1, 4, 2)]
    await asyncio.gather(*writes)
    assert (await seen)["n"] == 1  # the first commit woke the watcher
    timeline = await db.call(lambda s: orch_store.timeline(s, "r1"))
    assert [t["detail"]["n"] for t in timeline] == [1, 2, 3, 4]
    assert (await db.call(lambda s: orch_store.get_run(s, "r1")))["record"]["n"] == 4
    await lanes.reached("r1", epoch, 4)  # at once
    with pytest.raises(Conflict, match="already written"):
        await lanes.commit("r1", epoch, 2, change("r1", 2))


async def test_a_stale_shell_is_refused_and_a_final_record_closes_the_lane(db: AsyncStore):
    await insert(db, "r1")
    lanes = RunLanes(RunWriter(db), Watchers())
    old = lanes.open("r1", FINAL)
    waiting = asyncio.ensure_future(lanes.commit("r1", old, 2, change("r1", 2)))
    await asyncio.sleep(0)
    new = lanes.open("r1", FINAL)  # a restarted shell loaded the run
    with pytest.raises(Conflict, match="newer shell"):
        await waiting
    with pytest.raises(Conflict, match="not the run's current shell"):
        await lanes.commit("r1", old, 1, change("r1", 1))
    await lanes.commit("r1", new, 1, change("r1", 1, status="done"))
    assert lanes.epoch("r1") is None  # final: closed
    await lanes.reached("r1", new, 5)  # nothing more will come: at once
    assert (await db.call(lambda s: orch_store.get_run(s, "r1")))["record"]["n"] == 1


async def test_many_runs_share_a_commit_and_a_bad_change_fails_alone(db: AsyncStore):
    runs = [f"r{i}" for i in range(40)]
    await insert(db, *runs)
    writer = RunWriter(db)
    lanes = RunLanes(writer, Watchers())
    epochs = {r: lanes.open(r, FINAL) for r in runs}
    bad = orch_store.Change("r7", {"run_id": "r7", "status": "running", "x": {1, 2}}, [])
    results = await asyncio.gather(
        *(lanes.commit(r, epochs[r], 1, bad if r == "r7" else change(r, 1)) for r in runs),
        return_exceptions=True)
    failed = {r for r, x in zip(runs, results, strict=True) if x is not None}
    assert failed == {"r7"} and isinstance(results[7], InvalidRequest)
    assert writer.commits < len(runs)  # grouped: fewer transactions than runs
    assert (await db.call(lambda s: orch_store.get_run(s, "r8")))["record"]["n"] == 1
    assert (await db.call(lambda s: orch_store.get_run(s, "r7")))["status"] == "pending"
    with pytest.raises(Conflict, match="transition 1 failed"):  # its shell must restart
        await lanes.commit("r7", epochs["r7"], 2, change("r7", 2))
    chain = await db.call(lambda s: s.verify_audit())
    assert chain.ok and chain.checked == 40 + 39  # run_created rows, then one per change


async def test_a_fallback_record_is_stored_when_the_record_cannot_be(db: AsyncStore):
    await insert(db, "p1")
    errors = await db.call(lambda s: orch_store.save_changes(s, [orch_store.Change(
        "p1", {"status": "done", "value": {1}}, [], {"status": "done", "reason": "slim"})]))
    assert errors == [None]
    assert (await db.call(lambda s: orch_store.get_run(s, "p1")))["record"] == {
        "status": "done", "reason": "slim"}


# -- the shared vocabulary -------------------------------------------------------------


STEP = RunStep("a", "agent", {}, "k", 1, 5.0)
UNDO = RunCompensation("a", "agent", {}, "k:undo", 1, 5.0)


@pytest.mark.parametrize(("effect", "kw", "event"), [
    pytest.param(STEP, {"ok": True, "output": 7}, StepSucceeded("a", 7, 1.0), id="ok"),
    pytest.param(STEP, {"ok": False, "error_code": "agent_crashed", "message": "m"},
                 StepFailed("a", "agent_crashed", "m", 1.0), id="crashed"),
    pytest.param(STEP, {"ok": True, "output": {"error": {"code": "declined", "message": "no"}}},
                 StepFailed("a", "declined", "no", 1.0), id="business-error"),
    pytest.param(STEP, {"ok": True, "output": {"error": {}}},
                 StepFailed("a", "step_error", "", 1.0), id="bare-error"),
    pytest.param(UNDO, {"ok": True, "output": None}, CompensationSucceeded("a", 1.0), id="undo"),
    pytest.param(UNDO, {"ok": False, "error_code": "timeout", "message": "late"},
                 CompensationFailed("a", "timeout", "late", 1.0), id="undo-failed"),
])
def test_an_agents_answer_becomes_the_machines_event(effect, kw, event) -> None:
    assert reply_event(effect, now=1.0, **kw) == event


def test_fixed_retries_are_the_one_retry_policy() -> None:
    policy = RetryPolicy.fixed(2, 5.0)
    assert (policy.attempts, policy.delay(1), policy.delay(9)) == (3, 5.0, 5.0)
    assert not policy.gives_up(2, "x") and policy.gives_up(3, "x")
    assert RetryPolicy.from_dict({"count": 2, "delay_s": 5.0}) == policy  # older records
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(InvalidRequest, match="retry count"):
        RetryPolicy.fixed(-1)
    with pytest.raises(InvalidRequest, match="delay_s"):
        RetryPolicy.fixed(1, float("inf"))


def test_one_transition_is_one_change() -> None:
    effects = [Persist("a", {"n": 1}), Audit("t.a", {}), STEP, Persist("b", {"n": 2}),
               Audit("t.b", {"x": 1})]
    assert change_of(effects) == RunChange({"n": 2}, (("t.a", {}), ("t.b", {"x": 1})))
    assert change_of([STEP]) is None


# -- the orchestration supervisor's decisions ------------------------------------------------


def test_a_crashed_child_is_restarted_until_it_crashes_too_often() -> None:
    child = ot.started(ot.Child("s-1", "saga"), 41)
    for i in range(ot.MAX_RESTARTS):
        child, decision = ot.exited(child, float(i), "process died")
        assert decision is ot.Decision.RESTART and child.state is ot.State.RESTARTING
        child = ot.started(child, 42 + i)
    assert ot.node(child) | {"pid": 0} == {"name": "s-1", "kind": "saga", "state": "running",
                                           "pid": 0, "restarts": ot.MAX_RESTARTS,
                                           "children": [], "last_error": "process died"}
    _, decision = ot.exited(child, 5.0, "boom")
    assert decision is ot.Decision.GIVE_UP
    spread = ot.started(ot.Child("s-2", "saga"), 1)
    for i in range(3 * ot.MAX_RESTARTS):  # crashes far apart never add up
        spread, decision = ot.exited(spread, i * ot.WINDOW_S, "x")
        assert decision is ot.Decision.RESTART


def test_a_finished_child_is_forgotten_not_restarted() -> None:
    child = ot.finishing(ot.started(ot.Child("w-1", "workflow"), 7))
    assert ot.started(child, 8).state is ot.State.FINISHING
    _, decision = ot.exited(child, 0.0, "exited")
    assert decision is ot.Decision.FORGET
