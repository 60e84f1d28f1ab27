"""Run control in the pure machines (actors/domain/saga.py, workflow.py):
cancel, and steps of kind approval (a person's decision, its timeout, reject
or escalate, the saga timeout stopped meanwhile, recovery while waiting)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.domain import saga as sg
from actors.domain import workflow as wf
from actors.domain.run_events import (
    ArmTimer,
    Audit,
    Cancel,
    CompensationSucceeded,
    Decide,
    Persist,
    Recover,
    RunCompensation,
    RunStep,
    Start,
    StepSucceeded,
    TimerFired,
)
from naosd.errors import Conflict, InvalidRequest

WHO = "uid:1000"


def saga_spec(*, approval_at: int | None = 1, on_timeout: str = "reject",
              timeout_s: float = 3600.0, wait_s: float = 600.0) -> sg.SagaSpec:
    """a, (approve), b, c: each agent step undone by undo-<name>."""
    steps = [sg.StepSpec(n, f"agent-{n}", f"undo-{n}", 10.0) for n in "abc"]
    if approval_at is not None:
        steps.insert(approval_at, sg.StepSpec("approve", "", kind="approval",
                                              timeout_s=wait_s, on_timeout=on_timeout))
    return sg.SagaSpec("order", tuple(steps), timeout_s=timeout_s)


def feed(handle: Any, state: Any, *events: Any) -> tuple[Any, list[Any]]:
    effects: list[Any] = []
    for event in events:
        state, effects = handle(state, event)
    return state, effects


def audits(effects: list[Any]) -> list[Audit]:
    return [e for e in effects if isinstance(e, Audit)]


def types(effects: list[Any]) -> list[str]:
    return [a.type for a in audits(effects)]


def last_record(effects: list[Any]) -> dict[str, Any]:
    return [e for e in effects if isinstance(e, Persist)][-1].record


def awaiting_saga(**kw: Any) -> sg.SagaState:
    """A saga whose step a succeeded at t=1, now awaiting approval."""
    state, _ = feed(sg.handle, sg.initial("s-1", saga_spec(**kw), {"order": 1}), Start(0.0),
                    StepSucceeded("a", {"done": "a"}, 1.0))
    return state


# -- sagas: approvals ----------------------------------------------------------------------


def test_a_saga_waits_for_approval_durably_with_its_own_timer():
    state, effects = feed(sg.handle, sg.initial("s-1", saga_spec(), None), Start(0.0),
                          StepSucceeded("a", 1, 1.0))
    assert state.status is sg.RunStatus.AWAITING_APPROVAL
    assert state.step("approve").status is sg.StepStatus.AWAITING
    assert state.step("approve").due == 601.0 and state.paused_since == 1.0
    assert not [e for e in effects if isinstance(e, RunStep)]  # nobody is asked
    assert ArmTimer("approval_timeout", "approve", 1, 600.0) in effects
    assert last_record(effects)["status"] == "awaiting_approval"  # on disk before it waits
    (req,) = [a for a in audits(effects) if a.type == "saga.approval_requested"]
    assert req.detail == {"run_id": "s-1", "saga": "order", "step": "approve", "attempt": 1,
                          "timeout_s": 600.0, "on_timeout": "reject"}


def test_approve_records_who_and_goes_on():
    state, effects = feed(sg.handle, awaiting_saga(), Decide(True, WHO, "looks fine", 50.0))
    step = state.step("approve")
    assert step.status is sg.StepStatus.SUCCEEDED
    assert step.decision == step.output == {"approved": True, "by": WHO, "note": "looks fine",
                                            "at": 50.0}
    (approved,) = [a for a in audits(effects) if a.type == "saga.approved"]
    assert approved.detail["by"] == WHO and approved.detail["note"] == "looks fine"
    (sent,) = [e for e in effects if isinstance(e, RunStep)]
    assert sent.step == "b" and sent.message["outputs"]["approve"]["by"] == WHO
    assert state.status is sg.RunStatus.RUNNING and state.paused_s == 49.0


def test_reject_compensates_what_completed():
    state, effects = feed(sg.handle, awaiting_saga(), Decide(False, WHO, "too dear", 9.0))
    assert state.status is sg.RunStatus.COMPENSATING
    assert state.step("approve").status is sg.StepStatus.FAILED
    assert state.step("approve").error == f"rejected by {WHO}: too dear"
    (undo,) = [e for e in effects if isinstance(e, RunCompensation)]
    assert undo.step == "a"
    state, effects = feed(sg.handle, state, CompensationSucceeded("a", 10.0))
    assert state.status is sg.RunStatus.COMPENSATED
    assert f"step 'approve' rejected by {WHO}: too dear" == state.error
    assert "saga.rejected" in [a.type for a in audits(feed(
        sg.handle, awaiting_saga(), Decide(False, WHO, "", 9.0))[1])]


@pytest.mark.parametrize(("event", "message"), [
    (Decide(True, WHO, "", 5.0, step="b"), "awaits approval of step 'approve', not 'b'"),
    (Decide(True, "", "", 5.0), "must say who"),
])
def test_a_decision_for_another_step_or_from_nobody_is_refused(event, message):
    with pytest.raises((Conflict, InvalidRequest), match=message):
        sg.handle(awaiting_saga(), event)


def test_a_decision_when_nothing_awaits_is_a_conflict():
    running, _ = feed(sg.handle, sg.initial("s-1", saga_spec(), None), Start(0.0))
    with pytest.raises(Conflict, match="is running: no step awaits approval, nothing to "
                                       "approve"):
        sg.handle(running, Decide(True, WHO, "", 1.0))
    approved, _ = feed(sg.handle, awaiting_saga(), Decide(True, WHO, "", 2.0))
    with pytest.raises(Conflict, match="nothing to reject"):  # decided once only
        sg.handle(approved, Decide(False, WHO, "", 3.0))


def test_an_approval_nobody_decided_is_rejected_at_its_timeout():
    state = awaiting_saga()
    state, effects = feed(sg.handle, state, TimerFired("approval_timeout", "approve", 1, 601.0))
    assert state.status is sg.RunStatus.COMPENSATING
    assert state.step("approve").error == "rejected by timeout: no decision within 600s"
    assert types(effects)[:2] == ["saga.approval_timed_out", "saga.rejected"]


def test_escalate_alerts_waits_once_more_then_rejects():
    state = awaiting_saga(on_timeout="escalate")
    state, effects = feed(sg.handle, state, TimerFired("approval_timeout", "approve", 1, 601.0))
    assert state.status is sg.RunStatus.AWAITING_APPROVAL
    (esc,) = audits(effects)
    assert esc.type == "saga.approval_escalated" and esc.detail["severity"] == "alert"
    assert ArmTimer("approval_timeout", "approve", 2, 600.0) in effects
    assert state.step("approve").attempt == 2 and state.step("approve").due == 1201.0
    # the first wait's timer again (a duplicate) changes nothing
    same, effects = sg.handle(state, TimerFired("approval_timeout", "approve", 1, 700.0))
    assert same == state and effects == []
    # a person may still decide, or the second wait ends it
    decided, _ = sg.handle(state, Decide(True, WHO, "late but fine", 900.0))
    assert decided.step("approve").status is sg.StepStatus.SUCCEEDED
    state, _ = sg.handle(state, TimerFired("approval_timeout", "approve", 2, 1201.0))
    assert state.step("approve").error == "rejected by timeout: no decision within 1200s"


def test_the_saga_timeout_stops_while_a_person_decides():
    state = awaiting_saga(timeout_s=10.0)  # the approval came at t=1, 9 s of saga left
    same, effects = sg.handle(state, TimerFired("saga_timeout", None, 0, 10.0))
    assert same == state and effects == []  # waiting for a person: no saga timeout
    state, effects = sg.handle(state, Decide(True, WHO, "", 500.0))
    assert ArmTimer("saga_timeout", None, 1, 9.0) in effects  # what was left of it
    stale, effects = sg.handle(state, TimerFired("saga_timeout", None, 0, 501.0))
    assert stale == state and effects == []  # the timer armed before the wait
    state, effects = sg.handle(state, TimerFired("saga_timeout", None, 1, 509.0))
    assert state.status is sg.RunStatus.COMPENSATING and state.error == "saga timed out"


@pytest.mark.parametrize(("now", "left"), [(301.0, 300.0), (5000.0, 0.0)])
def test_a_recovered_run_keeps_waiting_for_what_is_left(now, left):
    record = sg.to_record(awaiting_saga())
    state, effects = sg.handle(sg.from_record(record), Recover(now))
    assert state.status is sg.RunStatus.AWAITING_APPROVAL
    assert ArmTimer("approval_timeout", "approve", 1, left) in effects
    assert not [e for e in effects if isinstance(e, RunStep | Persist)]
    assert types(effects) == ["saga.recovered"]


def test_a_run_that_recovers_after_an_approval_keeps_its_paused_time():
    state, _ = sg.handle(awaiting_saga(timeout_s=100.0), Decide(True, WHO, "", 61.0))
    state, effects = sg.handle(sg.from_record(sg.to_record(state)), Recover(70.0))
    # started at 0, 60 s waiting for the person: the saga timeout is due at 160
    assert ArmTimer("saga_timeout", None, 1, 90.0) in effects


def test_a_long_wait_is_armed_in_turns_of_a_day():
    """Thespian's wakeups end up as an epoll timeout, which Python refuses past
    ~24.8 days: a 30-day wait is armed a day at a time."""
    day = 86400.0
    state, effects = feed(sg.handle, sg.initial("s-1", saga_spec(wait_s=30 * day), None),
                          Start(0.0), StepSucceeded("a", 1, 1.0))
    assert ArmTimer("approval_timeout", "approve", 1, day) in effects
    same, effects = sg.handle(state, TimerFired("approval_timeout", "approve", 1, 1.0 + day))
    assert same.status is sg.RunStatus.AWAITING_APPROVAL
    assert effects == [ArmTimer("approval_timeout", "approve", 1, day)]  # nothing else
    _, effects = sg.handle(state, TimerFired("approval_timeout", "approve", 1,
                                             1.0 + 29.5 * day))
    assert effects == [ArmTimer("approval_timeout", "approve", 1, day / 2)]
    done, _ = sg.handle(state, TimerFired("approval_timeout", "approve", 1, 1.0 + 30 * day))
    assert done.status is sg.RunStatus.COMPENSATING
    _, effects = sg.handle(sg.from_record(sg.to_record(state)), Recover(2.0))
    assert ArmTimer("approval_timeout", "approve", 1, day) in effects
    wf_state = awaiting_wf()
    _, effects = wf.handle(wf_state, TimerFired("approval_timeout", "review", 1, 50.0))
    assert effects == [ArmTimer("approval_timeout", "review", 1, 51.0)]  # early: the rest


def test_an_approval_step_names_no_agent_and_no_compensation():
    with pytest.raises(InvalidRequest, match="it names no agent"):
        sg.StepSpec("ok", "agent-x", kind="approval")
    with pytest.raises(InvalidRequest, match="nothing to compensate"):
        sg.StepSpec("ok", "", "undo-x", kind="approval")
    with pytest.raises(InvalidRequest, match="kind must be agent or approval"):
        sg.StepSpec("ok", "a", kind="human")
    with pytest.raises(InvalidRequest, match="on_timeout must be reject or escalate"):
        sg.StepSpec("ok", "", kind="approval", on_timeout="ignore")


def test_records_of_before_run_control_still_load():
    record = sg.to_record(sg.initial("s-1", saga_spec(approval_at=None), None))
    for key in ("paused_s", "paused_since", "saga_timer", "cancelled_by"):
        del record[key]
    for step in record["spec"]["steps"]:
        del step["kind"], step["on_timeout"]
    for step in record["steps"]:
        del step["decision"]
    state = sg.from_record(record)
    assert state.saga_timer == 0 and state.spec.steps[0].kind == "agent"


# -- sagas: cancel -------------------------------------------------------------------------


def test_cancel_mid_saga_compensates_in_reverse_the_step_in_flight_first():
    spec = saga_spec(approval_at=None)
    state, _ = feed(sg.handle, sg.initial("s-1", spec, None), Start(0.0),
                    StepSucceeded("a", 1, 1.0))  # b is in flight
    state, effects = sg.handle(state, Cancel(WHO, 2.0))
    assert state.status is sg.RunStatus.COMPENSATING and state.cancelled_by == WHO
    assert state.step("b").status is sg.StepStatus.UNDOING and state.step("b").in_doubt
    (undo,) = [e for e in effects if isinstance(e, RunCompensation)]
    assert undo.step == "b" and undo.message["in_doubt"] is True  # first, in doubt
    (asked,) = [a for a in audits(effects) if a.type == "saga.cancel_requested"]
    assert asked.detail["by"] == WHO and asked.detail["in_doubt"] == ["b"]
    # b's late answer changes nothing
    late, effects = sg.handle(state, StepSucceeded("b", 2, 2.5))
    assert late == state and types(effects) == ["saga.stale_report"]
    state, _ = feed(sg.handle, state, CompensationSucceeded("b", 3.0))
    state, effects = sg.handle(state, CompensationSucceeded("a", 4.0))
    assert state.status is sg.RunStatus.CANCELLED
    (done,) = [a for a in audits(effects) if a.type == "saga.cancelled"]
    assert done.detail["by"] == WHO and done.detail["reason"] == f"cancelled by {WHO}"


def test_cancel_while_awaiting_approval_compensates():
    state, effects = sg.handle(awaiting_saga(), Cancel(WHO, 5.0))
    assert state.step("approve").status is sg.StepStatus.FAILED
    assert not state.step("approve").in_doubt
    assert [e.step for e in effects if isinstance(e, RunCompensation)] == ["a"]
    state, _ = sg.handle(state, CompensationSucceeded("a", 6.0))
    assert state.status is sg.RunStatus.CANCELLED
    stale, effects = sg.handle(state, TimerFired("approval_timeout", "approve", 1, 601.0))
    assert stale == state and effects == []


def test_cancel_of_a_pending_run_ends_it_at_once():
    state, effects = sg.handle(sg.initial("s-1", saga_spec(), None), Cancel(WHO, 0.0))
    assert state.status is sg.RunStatus.CANCELLED
    assert last_record(effects)["cancelled_by"] == WHO


def test_a_cancelled_saga_whose_compensation_failed_ends_cancelled_after_the_retry():
    spec = sg.SagaSpec("order", (sg.StepSpec("a", "agent-a", "undo-a", 10.0),
                                 sg.StepSpec("b", "agent-b", None, 10.0)),
                       compensation_retry=sg.RetryPolicy(attempts=1))
    state, _ = feed(sg.handle, sg.initial("s-1", spec, None), Start(0.0),
                    StepSucceeded("a", 1, 1.0), Cancel(WHO, 2.0))
    state, _ = sg.handle(state, sg.CompensationFailed("a", "boom", "no", 3.0))
    assert state.status is sg.RunStatus.COMPENSATION_FAILED
    state, _ = feed(sg.handle, state, sg.RetryCompensation(4.0),
                    CompensationSucceeded("a", 5.0))
    assert state.status is sg.RunStatus.CANCELLED


@pytest.mark.parametrize("status", ["compensating", "completed", "compensated", "cancelled"])
def test_cancel_of_a_run_that_is_ending_or_ended_is_a_conflict(status):
    state = sg.initial("s-1", saga_spec(), None)
    state = sg.SagaState(**{**{f: getattr(state, f) for f in state.__slots__},
                            "status": sg.RunStatus(status)})
    with pytest.raises(Conflict, match=f"is {status}: cannot cancel"):
        sg.handle(state, Cancel(WHO, 1.0))


# -- workflows ----------------------------------------------------------------------------


def wf_spec(on_timeout: str = "reject") -> wf.WorkflowSpec:
    return wf.WorkflowSpec("etl", (
        wf.WfStepSpec("fetch", "fetcher"),
        wf.WfStepSpec("review", "", kind="approval", timeout_s=100.0, on_timeout=on_timeout),
        wf.WfStepSpec("load", "loader")))


def awaiting_wf(on_timeout: str = "reject") -> wf.WorkflowState:
    state, _ = feed(wf.handle, wf.initial("w-1", wf_spec(on_timeout), {"n": 0}), Start(0.0),
                    StepSucceeded("fetch", {"rows": 3}, 1.0))
    return state


def test_an_approved_workflow_step_passes_its_input_on():
    state = awaiting_wf()
    assert state.status is wf.RunStatus.AWAITING_APPROVAL
    state, effects = wf.handle(state, Decide(True, WHO, "ok", 5.0, step="review"))
    (sent,) = [e for e in effects if isinstance(e, RunStep)]
    assert sent.step == "load" and sent.message["input"] == {"rows": 3}
    assert state.step("review").decision == {"approved": True, "by": WHO, "note": "ok",
                                             "at": 5.0}


def test_a_rejected_workflow_stops_and_resume_asks_again():
    state, effects = wf.handle(awaiting_wf(), Decide(False, WHO, "wrong rows", 5.0))
    assert state.status is wf.RunStatus.FAILED
    assert state.error == f"step 'review': rejected by {WHO}: wrong rows"
    assert types(effects) == ["workflow.rejected", "workflow.step_failed", "workflow.failed"]
    state, effects = wf.handle(state, wf.Resume(6.0))
    assert state.status is wf.RunStatus.AWAITING_APPROVAL
    assert state.step("review").decision is None and state.step("review").attempt == 1


def test_a_workflow_approval_escalates_then_is_rejected():
    state, effects = wf.handle(awaiting_wf("escalate"),
                               TimerFired("approval_timeout", "review", 1, 101.0))
    assert types(effects) == ["workflow.approval_escalated"]
    state, effects = wf.handle(state, TimerFired("approval_timeout", "review", 2, 201.0))
    assert state.status is wf.RunStatus.FAILED
    assert state.step("review").decision["by"] == "timeout"


def test_a_recovered_workflow_keeps_waiting():
    state = wf.from_record(wf.to_record(awaiting_wf()))
    state, effects = wf.handle(state, Recover(51.0))
    assert ArmTimer("approval_timeout", "review", 1, 50.0) in effects
    assert state.status is wf.RunStatus.AWAITING_APPROVAL


def test_cancel_stops_a_workflow_and_its_step_in_flight_is_in_doubt():
    state, _ = feed(wf.handle, wf.initial("w-1", wf_spec(), None), Start(0.0))
    state, effects = wf.handle(state, Cancel(WHO, 1.0))
    assert state.status is wf.RunStatus.CANCELLED and state.error == f"cancelled by {WHO}"
    assert state.step("fetch").status is wf.StepStatus.CANCELLED
    assert "in doubt" in state.step("fetch").error
    (done,) = audits(effects)
    assert done.type == "workflow.cancelled" and done.detail["in_doubt"] == ["fetch"]
    late, effects = wf.handle(state, StepSucceeded("fetch", 1, 2.0))
    assert late == state and types(effects) == ["workflow.stale_report"]
    with pytest.raises(Conflict, match="is cancelled: cannot cancel"):
        wf.handle(state, Cancel(WHO, 3.0))
    with pytest.raises(Conflict, match="is cancelled: cannot resume"):
        wf.handle(state, wf.Resume(3.0))


def test_cancel_while_a_workflow_awaits_approval():
    state, _ = wf.handle(awaiting_wf(), Cancel(WHO, 2.0))
    assert state.step("review").status is wf.StepStatus.CANCELLED
    assert state.step("review").error == "cancelled"
    stale, effects = wf.handle(state, TimerFired("approval_timeout", "review", 1, 101.0))
    assert stale == state and effects == []
