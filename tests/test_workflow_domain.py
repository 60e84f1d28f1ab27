"""The pure sequential workflow state machine (actors/domain/workflow.py).

``Shell`` answers each RunStep with the next scripted outcome for that step
(default: succeed with ``input + [step]``), fires retry timers at once and
keeps every Persist record for the recovery tests.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest

from actors.domain import workflow as wf
from actors.domain.run_events import RetryPolicy
from actors.domain.workflow import (
    ArmTimer,
    Audit,
    Effect,
    Event,
    Persist,
    Recover,
    Resume,
    RunStatus,
    RunStep,
    Start,
    StepFailed,
    StepStatus,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    TimerKind,
    WfStepSpec,
    WorkflowSpec,
    WorkflowState,
    retries,
)
from naosd.errors import Conflict, InvalidRequest, NotFound

NAMES = ("a", "b", "c")


def make_spec(on_error: str = "stop", retry: RetryPolicy | None = None,
              **per_step: Any) -> WorkflowSpec:
    steps = tuple(WfStepSpec(n, f"agent-{n}", 10.0, **per_step.get(n, {})) for n in NAMES)
    return WorkflowSpec("pipe", steps, on_error, retry or retries())


class Shell:
    def __init__(self, script: dict[str, list[str]] | None = None) -> None:
        self.script = {k: deque(v) for k, v in (script or {}).items()}
        self.trace: list[Effect] = []
        self.records: list[dict[str, Any]] = []
        self.now = 0.0

    def answer(self, effect: Effect) -> Event | None:
        match effect:
            case RunStep(step=step, message={"input": value}, attempt=attempt):
                queue = self.script.get(step)
                outcome = queue.popleft() if queue else "ok"
                if outcome == "ok":
                    return StepSucceeded(step, [*value, step], self.now)
                if outcome == "timeout":
                    return TimerFired("step_timeout", step, attempt, self.now + 10)
                return StepFailed(step, outcome, "no luck", self.now)
            case ArmTimer(kind=TimerKind.RETRY, step=step, attempt=attempt, delay_s=delay):
                self.now += delay
                return TimerFired("retry", step, attempt, self.now)
        return None

    def run(self, state: WorkflowState, event: Event) -> WorkflowState:
        queue: deque[Event] = deque([event])
        while queue:
            state, effects = wf.handle(state, queue.popleft())
            for effect in effects:
                if isinstance(effect, Persist):
                    self.records.append(effect.record)
                if isinstance(effect, Audit | Persist):
                    continue
                self.trace.append(effect)
                follow = self.answer(effect)
                if follow is not None:
                    queue.append(follow)
        return state


def run_wf(spec: WorkflowSpec | None = None, **script: list[str]) -> tuple[WorkflowState, Shell]:
    shell = Shell(script)
    return shell.run(wf.initial("w1", spec or make_spec(), []), Start(0.0)), shell


def runs(shell: Shell) -> list[tuple[str, Any, int]]:
    return [(e.step, e.message["input"], e.attempt) for e in shell.trace if isinstance(e, RunStep)]


# -- specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: retries(-1), "count", id="negative-count"),
        pytest.param(lambda: retries(1, float("inf")), "delay_s", id="inf-delay"),
        pytest.param(lambda: WfStepSpec("", "x"), "name", id="step-name"),
        pytest.param(lambda: WfStepSpec("a", "x", 0), "timeout_s", id="timeout"),
        pytest.param(lambda: WfStepSpec("a", "x", on_error="pray"), "on_error", id="step-on-error"),
        pytest.param(lambda: WorkflowSpec("w", ()), "one or more", id="no-steps"),
        pytest.param(
            lambda: WorkflowSpec("w", (WfStepSpec("a", "x"),) * 2), "duplicate", id="duplicate"
        ),
        pytest.param(
            lambda: WorkflowSpec("w", (WfStepSpec("a", "x"),), "explode"), "on_error", id="on-error"
        ),
        pytest.param(lambda: wf.initial("", make_spec()), "run_id", id="run-id"),
    ],
)
def test_spec_validation(build: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build()


def test_step_policy_overrides_the_workflow() -> None:
    spec = make_spec("skip", retries(1, 2.0), b={"on_error": "stop", "retry": retries(3, 0.5)})
    assert spec.policy("a") == ("skip", retries(1, 2.0))
    assert spec.policy("b") == ("stop", retries(3, 0.5))
    with pytest.raises(NotFound):
        spec.policy("zz")


# -- runs -----------------------------------------------------------------------------


def test_happy_path_chains_outputs() -> None:
    state, shell = run_wf()
    assert state.status is RunStatus.COMPLETED
    assert runs(shell) == [("a", [], 1), ("b", ["a"], 1), ("c", ["a", "b"], 1)]
    assert state.last_output() == ["a", "b", "c"]
    keys = [e.idempotency_key for e in shell.trace if isinstance(e, RunStep)]
    assert keys == ["w1:a:do", "w1:b:do", "w1:c:do"]


@pytest.mark.parametrize(
    ("fail_at", "ran"),
    [
        pytest.param("a", ["a"], id="first"),
        pytest.param("b", ["a", "b"], id="middle"),
        pytest.param("c", ["a", "b", "c"], id="last"),
    ],
)
def test_stop_on_error(fail_at: str, ran: list[str]) -> None:
    state, shell = run_wf(None, **{fail_at: ["boom"]})
    assert state.status is RunStatus.FAILED
    assert [r[0] for r in runs(shell)] == ran
    assert state.step(fail_at).status is StepStatus.FAILED
    assert state.error == f"step {fail_at!r}: boom: no luck"


@pytest.mark.parametrize(
    ("spec", "inputs"),
    [
        pytest.param(make_spec("skip"), [[], [], ["b"]], id="workflow-level"),
        pytest.param(make_spec(a={"on_error": "skip"}), [[], [], ["b"]], id="step-level"),
    ],
)
def test_skip_passes_the_last_good_output(spec: WorkflowSpec, inputs: list[Any]) -> None:
    state, shell = run_wf(spec, a=["boom"])
    assert state.status is RunStatus.COMPLETED
    assert [r[1] for r in runs(shell)] == inputs
    assert state.step("a").status is StepStatus.SKIPPED


def test_skip_in_the_middle_feeds_the_output_before_it() -> None:
    state, shell = run_wf(make_spec("skip"), b=["timeout"])
    assert [r[1] for r in runs(shell)] == [[], ["a"], ["a"]]
    assert state.step("b").error.startswith("timeout")


@pytest.mark.parametrize(
    ("spec", "script", "attempts", "status"),
    [
        pytest.param(
            make_spec("retry", retries(2, 5.0)), ["x", "x"], 3, RunStatus.COMPLETED, id="ok-on-last"
        ),
        pytest.param(
            make_spec("retry", retries(2, 5.0)), ["x"] * 3, 3, RunStatus.FAILED, id="exhausted"
        ),
        pytest.param(
            make_spec(b={"on_error": "retry", "retry": retries(1)}),
            ["x"],
            2,
            RunStatus.COMPLETED,
            id="step-level",
        ),
        pytest.param(make_spec("retry"), ["x"], 1, RunStatus.FAILED, id="zero-count"),
        pytest.param(
            make_spec("skip", retries(1)), ["x", "x"], 2, RunStatus.COMPLETED, id="retry-then-skip"
        ),
        pytest.param(
            make_spec("retry", retries(1)), ["timeout"], 2, RunStatus.COMPLETED,
            id="timeout-retried",
        ),
    ],
)
def test_retry(spec: WorkflowSpec, script: list[str], attempts: int, status: RunStatus) -> None:
    state, shell = run_wf(spec, b=script)
    assert state.status is status
    assert [r[2] for r in runs(shell) if r[0] == "b"] == list(range(1, attempts + 1))
    assert {r[1] == ["a"] for r in runs(shell) if r[0] == "b"} == {True}


def test_retry_delays_come_from_the_policy() -> None:
    _, shell = run_wf(make_spec("retry", retries(2, 5.0)), b=["x", "x"])
    timers = [e for e in shell.trace if isinstance(e, ArmTimer) and e.kind is TimerKind.RETRY]
    assert [(t.attempt, t.delay_s) for t in timers] == [(2, 5.0), (3, 5.0)]


def test_resume_reruns_the_failed_step_with_a_new_key() -> None:
    state, shell = run_wf(b=["boom"])
    assert state.status is RunStatus.FAILED
    shell.trace.clear()
    state = shell.run(state, Resume(50.0))
    assert state.status is RunStatus.COMPLETED
    assert runs(shell) == [("b", ["a"], 1), ("c", ["a", "b"], 1)]
    keys = [e.idempotency_key for e in shell.trace if isinstance(e, RunStep)]
    assert keys == ["w1:b:do:r1", "w1:c:do:r1"]
    with pytest.raises(Conflict, match="cannot resume"):
        wf.handle(state, Resume(60.0))


def test_step_timed_out_event() -> None:
    state, _ = wf.handle(wf.initial("w1", make_spec()), Start(0.0))
    state, _ = wf.handle(state, StepTimedOut("a", 10.0))
    assert state.status is RunStatus.FAILED and state.step("a").error.startswith("timeout")


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(StepSucceeded("b", 1, 1.0), id="pending-step"),
        pytest.param(StepFailed("c", "x", "y", 1.0), id="failure-of-pending"),
        pytest.param(StepTimedOut("b", 1.0), id="timeout-of-pending"),
    ],
)
def test_stale_reports_are_audited(event: Event) -> None:
    state, _ = wf.handle(wf.initial("w1", make_spec()), Start(0.0))
    after, effects = wf.handle(state, event)
    assert after == state and [e.type for e in effects if isinstance(e, Audit)] == [
        "workflow.stale_report"
    ]


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(TimerFired("step_timeout", "a", 2, 1.0), id="other-attempt"),
        pytest.param(TimerFired("retry", "a", 2, 1.0), id="not-waiting"),
    ],
)
def test_stale_timers_are_ignored(event: Event) -> None:
    state, _ = wf.handle(wf.initial("w1", make_spec()), Start(0.0))
    assert wf.handle(state, event) == (state, [])


def test_timers_after_the_end_are_ignored() -> None:
    state, _ = run_wf()
    assert wf.handle(state, TimerFired("step_timeout", "c", 1, 99.0)) == (state, [])


@pytest.mark.parametrize(
    ("event", "error"),
    [
        pytest.param(Start(1.0), Conflict, id="start-twice"),
        pytest.param(Resume(1.0), Conflict, id="resume-running"),
        pytest.param(StepSucceeded("zz", 1, 1.0), NotFound, id="unknown-step"),
        pytest.param(TimerFired("nap", "a", 1, 1.0), InvalidRequest, id="unknown-timer"),
        pytest.param(object(), InvalidRequest, id="not-an-event"),
    ],
)
def test_refused_events(event: Any, error: type[Exception]) -> None:
    state, _ = wf.handle(wf.initial("w1", make_spec()), Start(0.0))
    with pytest.raises(error):
        wf.handle(state, event)


# -- records and recovery -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "script"),
    [
        pytest.param(make_spec(), {}, id="happy"),
        pytest.param(make_spec("skip"), {"b": ["x"]}, id="skip"),
        pytest.param(make_spec("retry", retries(2, 3.0)), {"b": ["x", "timeout"]}, id="retry"),
        pytest.param(make_spec(), {"c": ["x"]}, id="stop"),
    ],
)
def test_recover_from_every_persisted_record(
    spec: WorkflowSpec, script: dict[str, list[str]]
) -> None:
    _, shell = run_wf(spec, **script)
    assert any(any(s["status"] == "started" for s in r["steps"]) for r in shell.records)
    for record in shell.records:
        state = wf.from_record(json.loads(json.dumps(record)))
        assert wf.to_record(state) == record
        finished = {
            s.name for s in state.steps if s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
        }
        doubt = [(s.name, s.attempt) for s in state.steps if s.status is StepStatus.STARTED]
        after, effects = wf.handle(state, Recover(20.0))
        sent = [e for e in effects if isinstance(e, RunStep)]
        assert not {e.step for e in sent} & finished, "a finished step ran again"
        if doubt:
            assert [(e.step, e.attempt, e.idempotency_key) for e in sent] == [
                (name, attempt, f"w1:{name}:do") for name, attempt in doubt
            ]
        for i, effect in enumerate(effects):
            if isinstance(effect, RunStep):
                assert isinstance(effects[i - 1], Persist)
        final = after
        rest = Shell(script)
        for effect in effects:
            follow = rest.answer(effect)
            if follow is not None:
                final = rest.run(final, follow)
        if state.status is not RunStatus.PENDING:
            assert final.status in (RunStatus.COMPLETED, RunStatus.FAILED)


def test_recover_rearms_the_retry_timer_with_the_time_left() -> None:
    state, _ = wf.handle(wf.initial("w1", make_spec("retry", retries(1, 4.0))), Start(0.0))
    state, _ = wf.handle(state, StepFailed("a", "x", "y", 1.0))
    _, effects = wf.handle(state, Recover(2.0))
    timers = [e for e in effects if isinstance(e, ArmTimer)]
    assert [(t.kind, t.attempt, t.delay_s) for t in timers] == [(TimerKind.RETRY, 2, 3.0)]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({}, id="empty"),
        pytest.param({"version": 1, "spec": {}}, id="missing-keys"),
    ],
)
def test_from_record_rejects_garbage(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        wf.from_record(record)


def test_from_record_rejects_steps_not_matching_the_spec() -> None:
    record = wf.to_record(wf.initial("w1", make_spec()))
    record["steps"].pop()
    with pytest.raises(InvalidRequest, match="do not match"):
        wf.from_record(record)
