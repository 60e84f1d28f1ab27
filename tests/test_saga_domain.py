"""The pure saga state machine (actors/domain/saga.py).

Most tests drive ``handle`` through a scripted shell (``Shell``): each RunStep /
RunCompensation is answered with the next outcome scripted for that step,
retry timers fire at once, and every Persist record is kept so the recovery
tests can rebuild the coordinator from each of them.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain import saga as sg
from actors.domain.saga import (
    ArmTimer,
    Audit,
    CompensationFailed,
    CompensationSucceeded,
    Effect,
    Event,
    Persist,
    Recover,
    Resolve,
    RetryCompensation,
    RetryPolicy,
    RunCompensation,
    RunStatus,
    RunStep,
    SagaSpec,
    SagaState,
    SagaTimedOut,
    Start,
    StepFailed,
    StepSpec,
    StepStarted,
    StepStatus,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    TimerKind,
)
from naosd.errors import Conflict, InvalidRequest, NotFound

NAMES = ("a", "b", "c", "d")


def make_spec(undo: tuple[bool, ...] = (True,) * 4, attempts: int = 3, **kw: Any) -> SagaSpec:
    retry = RetryPolicy(attempts=attempts, non_retryable=frozenset({"fatal"}))
    steps = tuple(
        StepSpec(n, f"agent-{n}", f"undo-{n}" if u else None, 10.0, retry)
        for n, u in zip(NAMES, undo, strict=True)
    )
    return SagaSpec("order", steps, **kw)


class Shell:
    """An obedient coordinator: scripted outcomes, instant retry timers."""

    def __init__(
        self, do: dict[str, list[str]] | None = None, undo: dict[str, list[str]] | None = None
    ):
        self.do = {k: deque(v) for k, v in (do or {}).items()}
        self.undo = {k: deque(v) for k, v in (undo or {}).items()}
        self.trace: list[Effect] = []
        self.records: list[dict[str, Any]] = []
        self.audits: list[Audit] = []
        self.now = 0.0

    def outcome(self, script: dict[str, deque[str]], step: str) -> str:
        queue = script.get(step)
        return queue.popleft() if queue else "ok"

    def answer(self, effect: Effect) -> Event | None:
        match effect:
            case RunStep(step=step, attempt=attempt):
                return self.do_event(self.outcome(self.do, step), step, attempt)
            case RunCompensation(step=step):
                if self.outcome(self.undo, step) == "ok":
                    return CompensationSucceeded(step, self.now)
                return CompensationFailed(step, "boom", "undo broke", self.now)
            case ArmTimer(kind=kind, step=step, attempt=attempt, delay_s=delay) if kind in (
                TimerKind.RETRY,
                TimerKind.UNDO_RETRY,
            ):
                self.now += delay
                return TimerFired(kind.value, step, attempt, self.now)
        return None

    def do_event(self, outcome: str, step: str, attempt: int) -> Event:
        match outcome:
            case "ok":
                return StepSucceeded(step, {"step": step, "attempt": attempt}, self.now)
            case "timeout":
                return TimerFired("step_timeout", step, attempt, self.now + 10)
            case code:
                return StepFailed(step, code, f"{step} said {code}", self.now)

    def run(self, state: SagaState, event: Event) -> SagaState:
        queue: deque[Event] = deque([event])
        while queue:
            state, effects = sg.handle(state, queue.popleft())
            for effect in effects:
                if isinstance(effect, Persist):
                    self.records.append(effect.record)
                if isinstance(effect, Audit):
                    self.audits.append(effect)
                if isinstance(effect, Audit | Persist):
                    continue
                self.trace.append(effect)
                follow = self.answer(effect)
                if follow is not None:
                    queue.append(follow)
        return state


def run_saga(spec: SagaSpec | None = None, **script: Any) -> tuple[SagaState, Shell]:
    shell = Shell(script.get("do"), script.get("undo"))
    state = sg.initial("r1", spec or make_spec(), {"order": 7})
    return shell.run(state, Start(0.0)), shell


def did(trace: list[Effect]) -> list[str]:
    return [e.step for e in trace if isinstance(e, RunStep)]


def undone(trace: list[Effect]) -> list[str]:
    return [e.step for e in trace if isinstance(e, RunCompensation)]


def statuses(state: SagaState) -> dict[str, str]:
    return {s.name: s.status.value for s in state.steps}


# -- specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: RetryPolicy(attempts=0), "attempts must be >= 1", id="attempts"),
        pytest.param(lambda: RetryPolicy(attempts=True), "must be an integer", id="bool-attempts"),
        pytest.param(lambda: RetryPolicy(initial_s=-1), "initial_s", id="initial"),
        pytest.param(lambda: RetryPolicy(backoff=0.5), "backoff must be", id="backoff"),
        pytest.param(lambda: RetryPolicy(max_s="9"), "max_s", id="str-max"),  # type: ignore[arg-type]
        pytest.param(lambda: make_spec().step("zz"), "no step 'zz'", id="unknown-step"),
        pytest.param(lambda: StepSpec("", "x"), "name must be", id="step-name"),
        pytest.param(lambda: StepSpec("a", "x", 3), "compensate_agent", id="undo-agent"),  # type: ignore[arg-type]
        pytest.param(lambda: StepSpec("a", "x", timeout_s=0), "timeout_s", id="step-timeout"),
        pytest.param(lambda: SagaSpec("s", ()), "at least one step", id="no-steps"),
        pytest.param(lambda: SagaSpec("s", ("a",)), "StepSpec values", id="not-spec"),  # type: ignore[arg-type]
        pytest.param(
            lambda: SagaSpec("s", (StepSpec("a", "x"), StepSpec("a", "y"))),
            "duplicate step",
            id="duplicate",
        ),
        pytest.param(
            lambda: SagaSpec("s", (StepSpec("a", "x"),), recovery="pray"), "recovery", id="recovery"
        ),
        pytest.param(lambda: sg.initial("", make_spec()), "run_id", id="run-id"),
    ],
)
def test_spec_validation(build: Any, message: str) -> None:
    with pytest.raises((InvalidRequest, NotFound), match=message):
        build()


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [
        pytest.param(1, 1.0, id="first"),
        pytest.param(3, 4.0, id="third"),
        pytest.param(99, 30.0, id="capped"),
    ],
)
def test_retry_delay(attempt: int, delay: float) -> None:
    assert RetryPolicy().delay(attempt) == delay


# -- forward --------------------------------------------------------------------------


def test_happy_path_runs_each_step_once_with_outputs_so_far() -> None:
    state, shell = run_saga()
    assert state.status is RunStatus.COMPLETED
    runs = [e for e in shell.trace if isinstance(e, RunStep)]
    assert [r.step for r in runs] == list(NAMES)
    assert runs[0].message == {"run_id": "r1", "step": "a", "attempt": 1,
                              "idempotency_key": "r1:a:do", "input": {"order": 7}, "outputs": {}}
    assert runs[2].message["outputs"] == {
        "a": {"step": "a", "attempt": 1},
        "b": {"step": "b", "attempt": 1},
    }
    assert [r.idempotency_key for r in runs] == [f"r1:{n}:do" for n in NAMES]
    assert undone(shell.trace) == []


def test_persist_precedes_run_step_and_records_the_start() -> None:
    state = sg.initial("r1", make_spec())
    state, effects = sg.handle(state, Start(5.0))
    kinds = [type(e).__name__ for e in effects if not isinstance(e, Audit)]
    assert kinds == ["Persist", "ArmTimer", "Persist", "RunStep", "ArmTimer"]
    persist = effects[[type(e) for e in effects].index(RunStep) - 1]
    assert isinstance(persist, Persist) and persist.what == "step_started"
    assert persist.record["steps"][0]["status"] == "started"
    state, effects = sg.handle(state, StepSucceeded("a", {"x": 1}, 6.0))
    assert isinstance(effects[0], Persist) and effects[0].what == "step_succeeded"
    assert effects[0].record["steps"][0]["output"] == {"x": 1}
    assert effects[0].record["steps"][1]["status"] == "pending"


@pytest.mark.parametrize(
    ("fail_at", "compensated"),
    [
        pytest.param("a", [], id="first"),
        pytest.param("b", ["a"], id="second"),
        pytest.param("c", ["b", "a"], id="third"),
        pytest.param("d", ["c", "b", "a"], id="last"),
    ],
)
def test_failure_at_each_position_compensates_in_reverse(
    fail_at: str, compensated: list[str]
) -> None:
    state, shell = run_saga(do={fail_at: ["fatal"]})
    assert state.status is RunStatus.COMPENSATED
    assert undone(shell.trace) == compensated
    assert did(shell.trace) == list(NAMES[: NAMES.index(fail_at) + 1])
    assert state.step(fail_at).status is StepStatus.FAILED
    keys = [e.idempotency_key for e in shell.trace if isinstance(e, RunCompensation)]
    assert keys == [f"r1:{n}:undo" for n in compensated]


def test_steps_without_compensation_are_skipped() -> None:
    state, shell = run_saga(make_spec(undo=(True, False, True, True)), do={"d": ["fatal"]})
    assert state.status is RunStatus.COMPENSATED
    assert undone(shell.trace) == ["c", "a"]
    assert statuses(state)["b"] == "succeeded"


@pytest.mark.parametrize(
    ("outcomes", "runs_of_b", "status"),
    [
        pytest.param(["boom", "boom"], 3, RunStatus.COMPLETED, id="retried-then-ok"),
        pytest.param(["boom"] * 3, 3, RunStatus.COMPENSATED, id="retries-exhausted"),
        pytest.param(["fatal"], 1, RunStatus.COMPENSATED, id="non-retryable"),
        pytest.param(["boom", "fatal"], 2, RunStatus.COMPENSATED, id="retryable-then-fatal"),
        pytest.param(["timeout", "timeout"], 3, RunStatus.COMPLETED, id="timeouts-then-ok"),
        pytest.param(["timeout"] * 3, 3, RunStatus.COMPENSATED, id="timeouts-exhausted"),
    ],
)
def test_step_retries(outcomes: list[str], runs_of_b: int, status: RunStatus) -> None:
    state, shell = run_saga(do={"b": outcomes})
    assert state.status is status
    b_runs = [e for e in shell.trace if isinstance(e, RunStep) and e.step == "b"]
    assert [r.attempt for r in b_runs] == list(range(1, runs_of_b + 1))
    assert {r.idempotency_key for r in b_runs} == {"r1:b:do"}
    delays = [
        e.delay_s for e in shell.trace if isinstance(e, ArmTimer) and e.kind is TimerKind.RETRY
    ]
    assert delays == [1.0, 2.0][: len(delays)]


def test_step_timed_out_event_counts_as_a_failure() -> None:
    state = sg.initial("r1", make_spec(attempts=1, compensate_in_doubt=False))
    state, _ = sg.handle(state, Start(0.0))
    state, _ = sg.handle(state, StepTimedOut("a", 10.0))
    assert state.status is RunStatus.COMPENSATED
    assert state.step("a").error.startswith("timeout") and state.step("a").in_doubt


# -- in-doubt steps: timed out, maybe applied -----------------------------------------


@pytest.mark.parametrize(
    ("do", "in_doubt_on", "expect_undone", "expect_doubt"),
    [
        pytest.param({"b": ["timeout"] * 3}, True, ["b", "a"], {"b"}, id="timeout-undone-first"),
        pytest.param({"b": ["timeout"] * 3}, False, ["a"], set(), id="timeout-policy-off"),
        pytest.param({"b": ["timeout", "fatal"]}, True, ["b", "a"], {"b"}, id="timeout-then-error"),
        pytest.param({"b": ["fatal"]}, True, ["a"], set(), id="business-error-not-in-doubt"),
        pytest.param({"b": ["boom"] * 3}, True, ["a"], set(), id="errors-only-not-in-doubt"),
        pytest.param(
            {"b": ["timeout", "ok"], "c": ["fatal"]}, True, ["b", "a"], set(), id="retry-succeeded"
        ),
        pytest.param({"a": ["timeout"] * 3}, True, ["a"], {"a"}, id="first-step"),
        pytest.param(
            {"d": ["timeout"] * 3}, True, ["d", "c", "b", "a"], {"d"}, id="last-step"
        ),
    ],
)
def test_in_doubt_steps_are_compensated_by_policy(
    do: dict[str, list[str]], in_doubt_on: bool, expect_undone: list[str], expect_doubt: set[str]
) -> None:
    state, shell = run_saga(make_spec(compensate_in_doubt=in_doubt_on), do=do)
    assert state.status is RunStatus.COMPENSATED
    assert undone(shell.trace) == expect_undone
    undos = [e for e in shell.trace if isinstance(e, RunCompensation)]
    flagged = {e.step for e in undos if e.message.get("in_doubt")}
    assert flagged == expect_doubt
    for e in undos:
        assert e.idempotency_key == f"r1:{e.step}:undo"
        if e.step in expect_doubt:  # the step's own key: the agent can tell if it ran
            assert e.message["step_key"] == f"r1:{e.step}:do" and e.message["output"] is None
        else:
            assert "step_key" not in e.message
    failed = [a.detail for a in shell.audits if a.type == "saga.step_failed"]
    assert [f["in_doubt"] for f in failed] == ["timeout" in do[f["step"]] for f in failed]
    assert len(failed) == 1


def test_saga_timeout_compensates_the_step_in_flight_first() -> None:
    state = sg.initial("r1", make_spec())
    for event in (Start(0.0), StepSucceeded("a", 1, 1.0)):
        state, _ = sg.handle(state, event)
    state, effects = sg.handle(state, TimerFired("saga_timeout", None, 0, 3600.0))
    assert state.step("b").in_doubt and undone(effects) == ["b"]
    undo_b = next(e for e in effects if isinstance(e, RunCompensation))
    assert undo_b.message["in_doubt"] and undo_b.message["step_key"] == "r1:b:do"
    state, effects = sg.handle(state, CompensationSucceeded("b", 3601.0))
    assert undone(effects) == ["a"]
    state, _ = sg.handle(state, CompensationSucceeded("a", 3602.0))
    assert state.status is RunStatus.COMPENSATED


def test_a_retry_waiting_step_is_in_doubt_at_the_saga_timeout_only_if_it_timed_out() -> None:
    for first, doubt in (("timeout", True), ("error", False)):
        state = sg.initial("r1", make_spec())
        state, _ = sg.handle(state, Start(0.0))
        if first == "timeout":
            state, _ = sg.handle(state, TimerFired("step_timeout", "a", 1, 10.0))
        else:
            state, _ = sg.handle(state, StepFailed("a", "boom", "x", 1.0))
        assert state.step("a").status is StepStatus.RETRY_WAIT
        state, effects = sg.handle(state, SagaTimedOut(3600.0))
        assert state.step("a").in_doubt is doubt
        assert undone(effects) == (["a"] if doubt else [])


def test_an_in_doubt_compensation_keeps_its_place_on_operator_retry() -> None:
    spec = make_spec(attempts=1)
    state, shell = run_saga(spec, do={"c": ["timeout"]}, undo={"c": ["x"] * 3, "a": ["x"] * 3})
    assert state.status is RunStatus.COMPENSATION_FAILED
    assert undone(shell.trace) == ["c"] * 3 + ["b"] + ["a"] * 3
    state = shell.run(state, RetryCompensation(100.0))
    assert undone(shell.trace)[7:] == ["c", "a"]  # newest first, as in the first pass
    assert state.status is RunStatus.COMPENSATED


def test_in_doubt_survives_the_record_and_old_records_still_load() -> None:
    state = sg.initial("r1", make_spec(attempts=1))
    state, _ = sg.handle(state, Start(0.0))
    state, _ = sg.handle(state, StepTimedOut("a", 10.0))
    record = json.loads(json.dumps(sg.to_record(state)))
    again = sg.from_record(record)
    assert again == state and again.step("a").in_doubt
    # a crash while undoing it: the resent compensation is still marked in doubt
    _, effects = sg.handle(again, Recover(11.0))
    resent = [e for e in effects if isinstance(e, RunCompensation)]
    assert [(e.step, e.message.get("in_doubt")) for e in resent] == [("a", True)]
    for step in record["steps"]:
        del step["in_doubt"]
    del record["spec"]["compensate_in_doubt"]
    old = sg.from_record(record)  # written before in-doubt compensation existed
    assert old.spec.compensate_in_doubt and not old.step("a").in_doubt


def test_compensate_in_doubt_must_be_a_bool() -> None:
    with pytest.raises(InvalidRequest, match="compensate_in_doubt"):
        make_spec(compensate_in_doubt="yes")


# -- compensation failures ------------------------------------------------------------


def test_compensation_failure_keeps_going_then_operator_retry() -> None:
    state, shell = run_saga(do={"d": ["fatal"]}, undo={"b": ["x", "x", "x"]})
    assert state.status is RunStatus.COMPENSATION_FAILED
    assert undone(shell.trace) == ["c", "b", "b", "b", "a"]
    assert statuses(state) == {
        "a": "compensated",
        "b": "undo_failed",
        "c": "compensated",
        "d": "failed",
    }
    shell.trace.clear()
    state = shell.run(state, RetryCompensation(100.0))
    assert state.status is RunStatus.COMPENSATED
    assert undone(shell.trace) == ["b"]
    assert [e.attempt for e in shell.trace if isinstance(e, RunCompensation)] == [1]


def test_compensation_failure_is_audited_as_an_alert() -> None:
    state, shell = run_saga(do={"d": ["fatal"]}, undo={"b": ["x", "x", "x"]})
    assert state.status is RunStatus.COMPENSATION_FAILED
    final = shell.audits[-1]
    assert final.type == "saga.compensation_failed"
    assert final.detail["severity"] == "alert" and final.detail["failed"] == ["b"]
    state, shell = run_saga(do={"d": ["fatal"]})
    assert state.status is RunStatus.COMPENSATED
    assert shell.audits[-1].type == "saga.compensated"
    assert "severity" not in shell.audits[-1].detail


def test_compensation_retry_fails_again_then_resolve() -> None:
    state, shell = run_saga(do={"c": ["fatal"]}, undo={"a": ["x"] * 6})
    state = shell.run(state, RetryCompensation(100.0))
    assert state.status is RunStatus.COMPENSATION_FAILED
    state, effects = sg.handle(state, Resolve("refunded by hand", 200.0))
    assert state.status is RunStatus.COMPENSATION_FAILED and state.resolution
    assert any(isinstance(e, Persist) and e.record["resolution"] for e in effects)
    with pytest.raises(Conflict, match="resolved"):
        sg.handle(state, RetryCompensation(300.0))
    with pytest.raises(Conflict, match="resolved"):
        sg.handle(state, Resolve("again", 300.0))


def test_compensation_timeout_is_a_failed_compensation() -> None:
    state = sg.initial("r1", make_spec(attempts=1))
    state, _ = sg.handle(state, Start(0.0))
    state, _ = sg.handle(state, StepSucceeded("a", 1, 1.0))
    state, effects = sg.handle(state, StepFailed("b", "fatal", "no", 2.0))
    assert undone(effects) == ["a"]
    state, _ = sg.handle(state, TimerFired("undo_timeout", "a", 1, 12.0))
    assert state.step("a").status is StepStatus.UNDO_WAIT
    state, effects = sg.handle(state, TimerFired("undo_retry", "a", 2, 13.0))
    assert [e.attempt for e in effects if isinstance(e, RunCompensation)] == [2]


# -- timers, stale reports, operator errors -------------------------------------------


def test_saga_timeout_fails_the_step_in_flight_and_compensates() -> None:
    state = sg.initial("r1", make_spec())
    for event in (
        Start(0.0),
        StepSucceeded("a", 1, 1.0),
        TimerFired("saga_timeout", None, 0, 3600.0),
    ):
        state, effects = sg.handle(state, event)
    assert state.status is RunStatus.COMPENSATING
    assert state.step("b").error == "saga_timeout"
    assert undone(effects) == ["b"]  # in doubt: undone first, then "a"
    state, effects = sg.handle(state, StepSucceeded("b", 2, 3601.0))  # too late
    assert [e.type for e in effects if isinstance(e, Audit)] == ["saga.stale_report"]
    state, effects = sg.handle(state, SagaTimedOut(3602.0))
    assert effects == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(TimerFired("step_timeout", "a", 2, 9.0), id="old-attempt-timeout"),
        pytest.param(TimerFired("retry", "a", 2, 9.0), id="retry-not-waiting"),
        pytest.param(TimerFired("undo_retry", "a", 2, 9.0), id="undo-retry-not-waiting"),
        pytest.param(TimerFired("undo_timeout", "a", 1, 9.0), id="undo-timeout-not-undoing"),
    ],
)
def test_stale_timers_are_ignored(event: Event) -> None:
    state, _ = sg.handle(sg.initial("r1", make_spec()), Start(0.0))
    after, effects = sg.handle(state, event)
    assert after == state and effects == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(StepSucceeded("b", 1, 1.0), id="success-of-pending"),
        pytest.param(StepFailed("c", "x", "y", 1.0), id="failure-of-pending"),
        pytest.param(CompensationSucceeded("a", 1.0), id="undo-not-asked"),
        pytest.param(CompensationFailed("a", "x", "y", 1.0), id="undo-failure-not-asked"),
        pytest.param(StepTimedOut("b", 1.0), id="timeout-of-pending"),
        pytest.param(StepStarted("b", 1.0), id="ack-of-pending"),
    ],
)
def test_stale_reports_are_audited_not_applied(event: Event) -> None:
    state, _ = sg.handle(sg.initial("r1", make_spec()), Start(0.0))
    after, effects = sg.handle(state, event)
    assert after == state
    assert [e.type for e in effects if isinstance(e, Audit)] == ["saga.stale_report"]


def test_step_started_is_only_acknowledged() -> None:
    state, _ = sg.handle(sg.initial("r1", make_spec()), Start(0.0))
    after, effects = sg.handle(state, StepStarted("a", 0.5))
    assert after == state and [type(e) for e in effects] == [Audit]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        pytest.param(Start(1.0), Conflict, id="start-twice"),
        pytest.param(RetryCompensation(1.0), Conflict, id="retry-while-running"),
        pytest.param(Resolve("x", 1.0), Conflict, id="resolve-while-running"),
        pytest.param(StepSucceeded("zz", 1, 1.0), NotFound, id="unknown-step"),
        pytest.param(TimerFired("nap", "a", 1, 1.0), InvalidRequest, id="unknown-timer"),
        pytest.param(TimerFired("retry", None, 1, 1.0), InvalidRequest, id="timer-without-step"),
        pytest.param("Start", InvalidRequest, id="not-an-event"),
    ],
)
def test_refused_events(event: Any, error: type[Exception]) -> None:
    state, _ = sg.handle(sg.initial("r1", make_spec()), Start(0.0))
    with pytest.raises(error):
        sg.handle(state, event)


def test_resolve_needs_a_note() -> None:
    state, _ = run_saga(do={"b": ["fatal"]}, undo={"a": ["x"] * 3})
    with pytest.raises(InvalidRequest, match="note"):
        sg.handle(state, Resolve("  ", 1.0))


# -- records and recovery -------------------------------------------------------------


SCENARIOS = [
    pytest.param({}, "forward", id="happy"),
    pytest.param({"do": {"b": ["boom", "ok"]}}, "forward", id="retry"),
    pytest.param({"do": {"c": ["fatal"]}}, "forward", id="compensate"),
    pytest.param(
        {"do": {"d": ["fatal"]}, "undo": {"b": ["x", "x", "x"]}}, "forward", id="undo-fails"
    ),
    pytest.param({"do": {"c": ["timeout", "boom"]}}, "compensate", id="recover-compensate"),
]


@pytest.mark.parametrize(("script", "recovery"), SCENARIOS)
def test_recover_from_every_persisted_record(script: dict[str, Any], recovery: str) -> None:
    spec = make_spec(recovery=recovery)
    _, shell = run_saga(spec, **script)
    assert len(shell.records) > 4
    in_doubt = [r for r in shell.records if any(s["status"] == "started" for s in r["steps"])]
    assert in_doubt, "no record with a step in doubt"
    for record in shell.records:
        json.dumps(record)  # JSON-able
        state = sg.from_record(json.loads(json.dumps(record)))
        assert sg.to_record(state) == record
        _check_recovery(state, spec)


def _check_recovery(state: SagaState, spec: SagaSpec) -> None:
    done = {s.name for s in state.steps if s.status is StepStatus.SUCCEEDED}
    doubt = {s.name: s.attempt for s in state.steps if s.status is StepStatus.STARTED}
    undoing = {s.name: s.undo_attempt for s in state.steps if s.status is StepStatus.UNDOING}
    after, effects = sg.handle(state, Recover(50.0))
    runs = [e for e in effects if isinstance(e, RunStep)]
    assert not {r.step for r in runs} & done, "a finished step ran again"
    undos = {e.step: e for e in effects if isinstance(e, RunCompensation)}
    for name, attempt in undoing.items():
        assert (undos[name].idempotency_key, undos[name].attempt) == (f"r1:{name}:undo", attempt)
    if state.status is RunStatus.RUNNING and spec.recovery == "forward":
        for name, attempt in doubt.items():
            assert [(r.step, r.idempotency_key, r.attempt) for r in runs] == [
                (name, f"r1:{name}:do", attempt)
            ]
    if state.status is RunStatus.RUNNING and spec.recovery == "compensate":
        assert runs == [] and after.status is not RunStatus.RUNNING
        for name in doubt:
            assert list(undos)[:1] == [name]
    for i, effect in enumerate(effects):  # a Persist precedes every outgoing command
        if isinstance(effect, RunStep | RunCompensation):
            assert isinstance(effects[i - 1], Persist)
    # the rebuilt coordinator finishes like a live one
    shell = Shell()
    final = after
    for effect in effects:
        follow = shell.answer(effect)
        if follow is not None:
            final = shell.run(final, follow)
    if not after.resolution and state.status is not RunStatus.PENDING:
        assert final.status in sg.FINAL


def test_recover_after_the_saga_deadline_compensates() -> None:
    state = sg.initial("r1", make_spec())
    state, _ = sg.handle(state, Start(0.0))
    state, _ = sg.handle(state, StepSucceeded("a", 1, 1.0))
    state, effects = sg.handle(sg.from_record(sg.to_record(state)), Recover(4000.0))
    assert state.status is RunStatus.COMPENSATING and undone(effects) == ["b"]  # in doubt
    state, effects = sg.handle(state, CompensationSucceeded("b", 4001.0))
    assert undone(effects) == ["a"]


def test_recover_rearms_retry_timers_with_the_time_left() -> None:
    state = sg.initial("r1", make_spec())
    state, _ = sg.handle(state, Start(0.0))
    state, _ = sg.handle(state, StepFailed("a", "boom", "x", 1.0))  # retry due at 2.0
    _, effects = sg.handle(state, Recover(1.5))
    timers = [e for e in effects if isinstance(e, ArmTimer)]
    assert [(t.kind, t.attempt, t.delay_s) for t in timers] == [
        (TimerKind.SAGA_TIMEOUT, 0, 3598.5),
        (TimerKind.RETRY, 2, 0.5),
    ]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({}, id="empty"),
        pytest.param({"version": 99}, id="version"),
        pytest.param({"version": 1, "spec": {}}, id="missing-keys"),
    ],
)
def test_from_record_rejects_garbage(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        sg.from_record(record)


def test_from_record_rejects_steps_not_matching_the_spec() -> None:
    record = sg.to_record(sg.initial("r1", make_spec()))
    record["steps"] = record["steps"][:2]
    with pytest.raises(InvalidRequest, match="do not match"):
        sg.from_record(record)


# -- property: any outcomes end final, compensations only undo completed steps --------


OUTCOME = st.sampled_from(["ok", "ok", "boom", "fatal", "timeout"])


@settings(max_examples=200, deadline=None)
@given(
    do=st.fixed_dictionaries({n: st.lists(OUTCOME, max_size=4) for n in NAMES}),
    undo=st.fixed_dictionaries(
        {n: st.lists(st.sampled_from(["ok", "x"]), max_size=4) for n in NAMES}
    ),
    has_undo=st.tuples(*(st.booleans() for _ in NAMES)),
)
def test_any_outcomes_end_final_and_undo_only_completed_steps_in_reverse(
    do: dict[str, list[str]], undo: dict[str, list[str]], has_undo: tuple[bool, ...]
) -> None:
    state, shell = run_saga(make_spec(undo=has_undo), do=do, undo=undo)
    assert state.status in sg.FINAL
    succeeded: list[str] = []
    for effect in shell.trace:
        if isinstance(effect, RunStep) and effect.step in succeeded:
            pytest.fail(f"step {effect.step} ran after it succeeded")
    completed = [
        s.name for s in sorted(state.steps, key=lambda s: s.finished_seq) if s.finished_seq
    ]
    targets = list(dict.fromkeys(undone(shell.trace)))
    assert set(targets) <= set(completed)
    expected = [n for n in reversed(completed) if state.spec.step(n).compensate_agent]
    if state.status is RunStatus.COMPLETED:
        assert targets == [] and completed == list(NAMES)
    else:
        assert targets == expected
    if state.status is RunStatus.COMPENSATED:
        assert all(state.step(n).status is StepStatus.COMPENSATED for n in expected)
    if state.status is RunStatus.COMPENSATION_FAILED:
        assert any(s.status is StepStatus.UNDO_FAILED for s in state.steps)
