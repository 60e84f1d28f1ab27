"""A pool's fan-out and its queue as pure machines (actors/domain/pool.py), in
the run vocabulary sagas and workflows share: members and tasks are asked
with RunStep, replies come back as StepSucceeded / StepFailed, timers as
TimerFired; the machine decides completed, partial or failed."""

from __future__ import annotations

from typing import Any

import pytest

from actors.domain import pool
from actors.domain.pool import (
    FAN_OUT_TIMEOUT,
    REDUCE_STEP,
    REDUCE_TIMEOUT,
    REQUEUE_TIMER,
    CancelQueued,
    Enqueued,
    FanOutSpec,
    FanOutState,
    QueuedTask,
    QueueState,
    Rescaled,
)
from actors.domain.run_events import (
    ArmTimer,
    Audit,
    Persist,
    RunStep,
    Start,
    StepFailed,
    StepSucceeded,
    TimerFired,
)
from naosd.errors import Conflict, InvalidRequest

MEMBERS = ("a", "b", "c")


def fan(merge: str = "all", limit: int = 3, reducer: str | None = None,
        members: tuple[str, ...] = MEMBERS) -> FanOutState:
    spec = FanOutSpec("p", merge, members, limit, 5.0, reducer)
    record = {"run_id": "p-1", "status": "running", "pool": "p", "merge": merge,
              "members": list(members), "input": {"q": 1}}
    return pool.fan_out("p-1", spec, record)


def step(state: FanOutState, event: Any) -> tuple[FanOutState, list[Any]]:
    return pool.handle_fan_out(state, event)


def asked(effects: list[Any]) -> list[str]:
    return [e.step for e in effects if isinstance(e, RunStep)]


def final(effects: list[Any]) -> dict[str, Any]:
    [persist] = [e for e in effects if isinstance(e, Persist)]
    return persist.record


def test_a_fan_out_asks_every_member_with_its_own_key_and_arms_its_timer() -> None:
    state, effects = step(fan(), Start(10.0))
    runs = [e for e in effects if isinstance(e, RunStep)]
    assert [(r.agent, r.idempotency_key, r.message) for r in runs] == [
        (m, f"p-1:{m}", {"q": 1}) for m in MEMBERS]
    assert ArmTimer(FAN_OUT_TIMEOUT, None, 0, 5.0) in effects
    assert state.status == "running" and not [e for e in effects if isinstance(e, Persist)]


def test_all_with_a_failure_is_partial_and_the_record_says_who() -> None:
    state, _ = step(fan(), Start(10.0))
    state, _ = step(state, StepSucceeded("a", 1, 10.1))
    state, _ = step(state, StepFailed("b", "agent_crashed", "boom", 10.2))
    state, effects = step(state, StepSucceeded("c", 3, 10.5))
    out = final(effects)
    assert (out["status"], out["value"], out["failed"]) == ("partial", [1, 3], ["b"])
    assert out["errors"] == {"b": "agent_crashed: boom"} and out["ms"] == 500.0
    assert out["input"] == {"q": 1} and out["members"] == list(MEMBERS)  # the record kept
    [audit] = [e for e in effects if isinstance(e, Audit)]
    assert audit.type == "pool.run" and audit.detail["status"] == "partial"
    assert pool.fan_out_final(state)


def test_first_decides_early_cancels_the_asked_and_never_sends_the_rest() -> None:
    state, effects = step(fan("first", limit=2), Start(0.0))
    assert asked(effects) == ["a", "b"]
    state, effects = step(state, StepSucceeded("b", "yes", 1.0))
    out = final(effects)
    assert (out["status"], out["value"]) == ("completed", "yes")
    assert (out["cancelled"], out["not_sent"]) == (["a"], ["c"])
    state, effects = step(state, StepSucceeded("a", "late", 2.0))  # a loser's late reply
    assert effects == [] and state.out is not None and state.out["value"] == "yes"


def test_a_slot_freed_by_a_reply_asks_the_next_member() -> None:
    state, _ = step(fan("all", limit=1), Start(0.0))
    state, effects = step(state, StepFailed("a", "x", "no", 1.0))
    assert asked(effects) == ["b"]


@pytest.mark.parametrize(("replies", "status", "value", "reason"), [
    pytest.param([("a", True, 1)], "partial", [1], "no reply within 5s from b, c",
                 id="some-answered"),
    pytest.param([("a", False, "e")], "failed", None, "no member succeeded",
                 id="none-succeeded"),
    pytest.param([], "failed", None, "no member succeeded", id="silence"),
])
def test_when_time_runs_out_the_machine_decides_partial_or_failed(
        replies: list[tuple[str, bool, Any]], status: str, value: Any, reason: str) -> None:
    state, _ = step(fan(), Start(0.0))
    for member, ok, reply in replies:
        event = StepSucceeded(member, reply, 1.0) if ok else StepFailed(member, "x", reply, 1.0)
        state, _ = step(state, event)
    state, effects = step(state, TimerFired(FAN_OUT_TIMEOUT, None, 0, 5.0))
    out = final(effects)
    silent = [m for m in MEMBERS if m not in {r[0] for r in replies}]
    assert (out["status"], out["value"], out["reason"]) == (status, value, reason)
    assert out["failed"][-len(silent):] == silent and out["cancelled"] == []
    assert step(state, TimerFired(FAN_OUT_TIMEOUT, None, 0, 6.0))[1] == []  # stale now


def test_a_reducer_gets_the_results_and_its_answer_is_the_value() -> None:
    state, _ = step(fan("reducer", reducer="r"), Start(0.0))
    state, _ = step(state, StepSucceeded("a", {"n": 1}, 0.1))
    state, _ = step(state, StepFailed("b", "x", "no", 0.2))
    state, effects = step(state, StepSucceeded("c", {"n": 2}, 0.3))
    [reduce] = [e for e in effects if isinstance(e, RunStep)]
    assert (reduce.step, reduce.agent) == (REDUCE_STEP, "r")
    assert reduce.message == {"results": [{"n": 1}, {"n": 2}], "failed": ["b"]}
    assert state.status == "reducing" and not [e for e in effects if isinstance(e, Persist)]
    state, effects = step(state, StepSucceeded(REDUCE_STEP, {"sum": 3}, 0.4))
    assert (final(effects)["status"], final(effects)["value"]) == ("partial", {"sum": 3})


def test_a_reducer_that_fails_or_is_silent_fails_the_run() -> None:
    state, _ = step(fan("reducer", reducer="r", members=("a",)), Start(0.0))
    reducing, _ = step(state, StepSucceeded("a", 1, 0.1))
    _, effects = step(reducing, StepFailed(REDUCE_STEP, "agent_crashed", "bad", 0.2))
    assert final(effects)["status"] == "failed" and "reducer 'r' failed: bad" in \
        final(effects)["reason"]
    _, effects = step(reducing, TimerFired(REDUCE_TIMEOUT, None, 0, 9.0))
    assert final(effects)["status"] == "failed"


def test_a_final_record_json_cannot_hold_falls_back_to_the_outcome() -> None:
    state, _ = step(fan(members=("a",)), Start(0.0))
    _, effects = step(state, StepSucceeded("a", {1, 2}, 0.1))
    [persist] = [e for e in effects if isinstance(e, Persist)]
    assert persist.record["value"] == [{1, 2}]
    assert persist.fallback is not None and "value" not in persist.fallback
    assert persist.fallback == {"run_id": "p-1", "status": "completed", "pool": "p",
                                "merge": "all", "members": ["a"], "input": {"q": 1},
                                "reason": "", "failed": []}


def test_fan_out_refuses_bad_specs_and_events() -> None:
    with pytest.raises(InvalidRequest, match="reducer agent"):
        FanOutSpec("p", "reducer", MEMBERS, 1, 1.0)
    with pytest.raises(InvalidRequest, match="limit"):
        FanOutSpec("p", "all", MEMBERS, 0, 1.0)
    state, _ = step(fan(), Start(0.0))
    with pytest.raises(Conflict, match="cannot start"):
        step(state, Start(1.0))
    with pytest.raises(InvalidRequest, match="timer kind"):
        step(state, TimerFired("nap", None, 0, 1.0))


# -- the queue ---------------------------------------------------------------------------


def queue(members: tuple[str, ...] = ("m1", "m2"), concurrency: int = 0) -> QueueState:
    return QueueState("p", members, "round-robin", concurrency, 30.0)


def tasks(*ids: str) -> tuple[QueuedTask, ...]:
    return tuple(QueuedTask(i, {"task": i}) for i in ids)


def test_the_queue_sends_one_task_per_member_then_the_next_as_one_is_settled() -> None:
    state, effects = pool.handle_queue(queue(), Enqueued(tasks("t1", "t2", "t3")))
    assert [(e.step, e.agent, e.idempotency_key) for e in effects] == [
        ("t1", "m1", "t1"), ("t2", "m2", "t2")]
    assert pool.queue_view(state)["queued"] == ["t3"]
    state, effects = pool.handle_queue(state, StepSucceeded("t1", None, 1.0))
    assert [(e.step, e.agent) for e in effects] == [("t3", "m1")]
    assert pool.queue_view(state)["busy"] == {"m1": 1, "m2": 1}


def test_a_task_naosd_could_not_run_goes_back_after_a_backoff_never_failed() -> None:
    state, _ = pool.handle_queue(queue(members=("m1",)), Enqueued(tasks("t1", "t2")))
    for tries in range(1, 8):  # however often: a failure of naosd's own is not the task's
        state, effects = pool.handle_queue(state, StepFailed("t1", "unavailable", "x", 0.0))
        [timer] = [e for e in effects if isinstance(e, ArmTimer)]
        assert (timer.kind, timer.step, timer.attempt) == (REQUEUE_TIMER, "t1", tries)
        assert timer.delay_s == pool.REQUEUE.delay(tries) <= pool.REQUEUE.max_s
        assert [e.step for e in effects if isinstance(e, RunStep)] == ["t2"]  # others go on
        state, _ = pool.handle_queue(state, StepSucceeded("t2", None, 0.0))
        state, effects = pool.handle_queue(state, TimerFired(REQUEUE_TIMER, "t1", tries, 0.0))
        assert [(e.step, e.attempt) for e in effects] == [("t1", tries + 1)]
        state = pool.handle_queue(state, Enqueued(tasks("t2")))[0]  # next round's company


def test_loaded_tasks_are_not_queued_twice_by_a_late_announcement() -> None:
    state, _ = pool.handle_queue(queue(), Enqueued(tasks("t1"), settled=True))
    state, _ = pool.handle_queue(state, StepSucceeded("t1", None, 0.0))
    state, effects = pool.handle_queue(state, Enqueued(tasks("t1", "t9")))
    assert [e.step for e in effects] == ["t9"]


def test_cancel_takes_a_queued_task_out_and_refuses_a_sent_one() -> None:
    state, _ = pool.handle_queue(queue(members=("m1",)), Enqueued(tasks("t1", "t2")))
    with pytest.raises(Conflict, match="already sent"):
        pool.handle_queue(state, CancelQueued("t1"))
    state, _ = pool.handle_queue(state, CancelQueued("t2"))
    state, effects = pool.handle_queue(state, StepSucceeded("t1", None, 0.0))
    assert effects == [] and pool.queue_view(state)["queued"] == []
    state, effects = pool.handle_queue(state, CancelQueued("t3"))  # not here yet: remembered
    assert pool.handle_queue(state, Enqueued(tasks("t3")))[1] == []


def test_rescaling_sends_to_new_members_and_concurrency_bounds_the_room() -> None:
    state, effects = pool.handle_queue(queue(members=("m1",)), Enqueued(tasks("a", "b", "c")))
    assert len(effects) == 1
    state, effects = pool.handle_queue(state, Rescaled(("m1", "m2", "m3"), "least-busy", 0,
                                                       30.0))
    assert sorted(e.agent for e in effects) == ["m2", "m3"]
    state, effects = pool.handle_queue(queue(concurrency=3), Enqueued(tasks("a", "b", "c", "d")))
    assert len(effects) == 3


def test_the_queue_refuses_what_is_not_its_event() -> None:
    with pytest.raises(InvalidRequest, match="not a pool queue event"):
        pool.handle_queue(queue(), Start(0.0))  # type: ignore[arg-type]


def test_members_of_a_pool_definition() -> None:
    assert pool.members_of({"agents": ["x", "y"]}) == ["x", "y"]
    assert pool.members_of({"agents": None, "agent": "w", "size": 2}) == ["w-c1", "w-c2"]
