"""Durable sequential workflows as a pure state machine (stdlib + naosd.errors only).

A workflow runs its steps in order; step N's output is step N+1's input (the
first step gets the workflow input). What happens when a step fails (an error
or a timeout) is its ``on_error`` (the step's own, else the workflow's):

- ``stop`` (default): the run ends ``failed`` at that step; ``Resume`` re-runs
  it (fresh attempts, a new idempotency key) and carries on from there.
- ``skip``: the step is marked ``skipped`` and the next step gets the last good
  output (the workflow input if no step succeeded yet).
- ``retry``: the step is tried ``retry.count`` more times, ``retry.delay_s``
  apart (the step's ``retry``, else the workflow's); then the run stops.

A non-zero ``retry.count`` also applies under ``stop`` and ``skip``: the step is
retried first and stopped on (or skipped) only once its tries are used up.

A step of kind ``approval`` names no agent: the run waits (``awaiting_approval``,
durable: a recovered run keeps waiting) for a person's :class:`Decide`, bounded by
the step's own timeout only.  Approved, the step succeeds and passes its input on
unchanged (the decision is kept in the step's ``decision``); rejected, the step
fails and the run stops (``failed``; ``Resume`` asks again), whatever the step's
``on_error``.  When the timeout fires, ``on_timeout="reject"`` rejects it (``by:
"timeout"``); ``"escalate"`` audits ``workflow.approval_escalated`` (``severity:
"alert"``) and waits once more as long, then rejects.

:class:`Cancel` (pending, running or awaiting approval) ends the run
``cancelled``: the step in flight is marked ``cancelled`` (one that was sent is in
doubt: it may have taken effect, and its late answer is only audited); nothing
runs after it.  Cancelling a final run is a Conflict.

A step's tries are a :class:`~actors.domain.run_events.RetryPolicy` (the
run vocabulary's, made by :func:`retries`: ``count`` more tries, ``delay_s``
apart).  The shell discipline is the saga's (see actors/domain/saga.py): each
``Persist`` carries the full JSON-able record that must be on disk before the
effects after it are sent; ``Recover`` after a restart re-sends the step
recorded as started (in doubt) with the same idempotency key and attempt,
re-arms a pending retry timer, and never re-runs a finished step. Reports for a
step that is not waiting for one are stale and only audited.

Audit types: ``workflow.started``, ``workflow.step_started``,
``workflow.step_succeeded``, ``workflow.step_retrying``,
``workflow.step_skipped``, ``workflow.step_failed``, ``workflow.completed``,
``workflow.failed``, ``workflow.resumed``, ``workflow.recovered``,
``workflow.stale_report``, ``workflow.approval_requested``,
``workflow.approval_escalated``, ``workflow.approval_timed_out``, ``workflow.approved``,
``workflow.rejected``, ``workflow.cancelled``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from actors.domain.run_events import (
    APPROVAL_TIMEOUT,
    TIMEOUT_CODE,
    ArmTimer,
    Audit,
    Cancel,
    Decide,
    Machine,
    Persist,
    Recover,
    RetryPolicy,
    RunStep,
    RunTx,
    Start,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    check_record,
    check_seconds,
    check_step_kind,
    check_who,
    corrupt,
    decision,
    dispatch,
    plain,
    rebuild,
    timer_kind,
)
from naosd.errors import Conflict, InvalidRequest, NotFound

__all__ = [  # the shared vocabulary, importable from here as before
    "ArmTimer", "Audit", "Cancel", "Decide", "Persist", "Recover", "RetryPolicy", "RunStep",
    "Start", "StepFailed", "StepSucceeded", "StepTimedOut", "TimerFired",
]

RECORD_VERSION: Final = 1
ON_ERROR: Final = ("stop", "skip", "retry")


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"  # a step of kind approval waits for a person
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    STARTED = "started"  # RunStep persisted (maybe sent): in doubt on Recover
    RETRY_WAIT = "retry_wait"
    AWAITING = "awaiting_approval"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"  # in flight when the run was cancelled


class TimerKind(enum.StrEnum):
    STEP_TIMEOUT = "step_timeout"
    RETRY = "retry"
    APPROVAL_TIMEOUT = APPROVAL_TIMEOUT


def retries(count: object = 0, delay_s: object = 0.0) -> RetryPolicy:
    """``count`` more tries after the first, ``delay_s`` apart."""
    return RetryPolicy.fixed(count, delay_s)


NO_RETRY: Final = retries()


@dataclass(frozen=True, slots=True)
class WfStepSpec:
    name: str
    agent: str
    timeout_s: float = 60.0  # an approval: how long it waits for a decision
    on_error: str | None = None  # None: the workflow's
    retry: RetryPolicy | None = None  # None: the workflow's
    kind: str = "agent"  # or "approval": a person decides it (agent "")
    on_timeout: str = "reject"  # an approval nobody decided in time: reject or escalate

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRequest("step name must be a non-empty string")
        check_step_kind(self.name, self.kind, self.agent, self.on_timeout)
        _check_on_error(self.on_error, allow_none=True)
        check_seconds(self.timeout_s, f"step {self.name!r} timeout_s", zero_ok=False)


def _check_on_error(value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in ON_ERROR:
        raise InvalidRequest(f"on_error must be one of stop, skip, retry; got {value!r}")


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    name: str
    steps: tuple[WfStepSpec, ...]
    on_error: str = "stop"
    retry: RetryPolicy = NO_RETRY

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps or not all(isinstance(s, WfStepSpec) for s in self.steps):
            raise InvalidRequest("a workflow needs one or more WfStepSpec steps")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"duplicate step names in workflow {self.name!r}")
        _check_on_error(self.on_error)

    def step(self, name: str) -> WfStepSpec:
        for spec in self.steps:
            if spec.name == name:
                return spec
        raise NotFound(f"workflow {self.name!r} has no step {name!r}")

    def policy(self, name: str) -> tuple[str, RetryPolicy]:
        """The effective ``(on_error, retry)`` of step ``name``."""
        spec = self.step(name)
        return spec.on_error or self.on_error, spec.retry or self.retry

    def to_dict(self) -> dict[str, Any]:
        steps = [plain(s) | {"retry": s.retry and s.retry.to_dict()} for s in self.steps]
        return plain(self) | {"retry": self.retry.to_dict(), "steps": steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowSpec:
        def step(s: dict[str, Any]) -> WfStepSpec:
            return rebuild(WfStepSpec, s, retry=lambda r: r and RetryPolicy.from_dict(r))

        return rebuild(cls, data, steps=lambda steps: tuple(map(step, steps)),
                       retry=RetryPolicy.from_dict)


@dataclass(frozen=True, slots=True)
class WfStepState:
    name: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0  # tries sent since the run (or the last Resume) reached this step
    output: Any = None
    error: str = ""
    due: float | None = None  # when its retry timer (or its approval's timeout) is due
    decision: dict[str, Any] | None = None  # an approval's: approved, by, note, at


@dataclass(frozen=True, slots=True)
class WorkflowState:
    run_id: str
    spec: WorkflowSpec
    input: Any = None
    status: RunStatus = RunStatus.PENDING
    steps: tuple[WfStepState, ...] = ()
    resumes: int = 0  # part of the idempotency key: a resumed step must really run again
    error: str = ""

    def step(self, name: str) -> WfStepState:
        for step in self.steps:
            if step.name == name:
                return step
        raise NotFound(f"workflow run {self.run_id!r} has no step {name!r}")

    def last_output(self) -> Any:
        """The output of the last step that succeeded, else the workflow input."""
        done = [s for s in self.steps if s.status is StepStatus.SUCCEEDED]
        return done[-1].output if done else self.input


# -- events of workflows only ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resume:
    now: float


Event: TypeAlias = (Start | StepSucceeded | StepFailed | StepTimedOut | TimerFired | Recover
                    | Resume | Cancel | Decide)
Effect: TypeAlias = RunStep | ArmTimer | Persist | Audit


# -- public functions -----------------------------------------------------------------


def initial(run_id: str, spec: WorkflowSpec, wf_input: Any = None) -> WorkflowState:
    """A pending run; ``Start`` begins it."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRequest("run_id must be a non-empty string")
    return WorkflowState(
        run_id, spec, wf_input, steps=tuple(WfStepState(s.name) for s in spec.steps)
    )


def idempotency_key(run_id: str, step: str, resumes: int = 0) -> str:
    suffix = f":r{resumes}" if resumes else ""
    return f"{run_id}:{step}:do{suffix}"


def handle(state: WorkflowState, event: Event) -> tuple[WorkflowState, list[Effect]]:
    """Apply ``event``: the new state and the effects to perform, in order.

    Raises:
        Conflict: Start, Resume, Cancel or Decide does not fit the run's status
            (``state`` unchanged).
        NotFound: the event names a step the workflow does not have.
        InvalidRequest: not a workflow event, or an unknown timer kind.
    """
    return dispatch(_HANDLERS, _Tx(state), event, "workflow")


def to_record(state: WorkflowState) -> dict[str, Any]:
    """The JSON-able record of ``state`` (what ``Persist`` carries)."""
    return {"version": RECORD_VERSION} | plain(state) | {
        "spec": state.spec.to_dict(),
        "steps": [plain(s) for s in state.steps],
    }


def from_record(record: dict[str, Any]) -> WorkflowState:
    """Rebuild the state a :func:`to_record` record describes (raises InvalidRequest)."""
    data = check_record(record, "workflow", RECORD_VERSION)
    try:
        state = rebuild(WorkflowState, {k: v for k, v in data.items() if k != "version"},
                        spec=WorkflowSpec.from_dict, status=RunStatus,
                        steps=lambda steps: tuple(rebuild(WfStepState, s, status=StepStatus)
                                                  for s in steps))
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt("workflow", exc) from exc
    if [s.name for s in state.steps] != [s.name for s in state.spec.steps]:
        raise InvalidRequest("corrupt workflow record: steps do not match the spec")
    return state


# -- handlers -------------------------------------------------------------------------


class _Tx(RunTx[WorkflowState]):
    __slots__ = ()

    def __init__(self, state: WorkflowState) -> None:
        super().__init__(state, "workflow", to_record)

    def require(self, action: str, *allowed: RunStatus) -> None:
        if self.state.status not in allowed:
            raise Conflict(f"workflow run {self.state.run_id!r} is {self.state.status}: "
                           f"cannot {action}")


def _send(tx: _Tx, name: str, attempt: int) -> None:
    spec = tx.state.spec.step(name)
    key = idempotency_key(tx.state.run_id, name, tx.state.resumes)
    message = tx.message(name, attempt, key, input=tx.state.last_output())
    effect = RunStep(name, spec.agent, message, key, attempt, spec.timeout_s)
    tx.send(name, StepStatus.STARTED, attempt, effect, TimerKind.STEP_TIMEOUT, "step_started")


def _advance(tx: _Tx, now: float) -> None:
    nxt = tx.first(StepStatus.PENDING)
    if nxt is not None and tx.state.spec.step(nxt.name).kind == "approval":
        spec = tx.state.spec.step(nxt.name)  # RUNNING -> AWAITING_APPROVAL
        tx.set(status=RunStatus.AWAITING_APPROVAL)
        tx.ask_approval(nxt.name, StepStatus.AWAITING, 1, spec.timeout_s, now,
                        "approval_requested", on_timeout=spec.on_timeout)
        return
    if nxt is not None:
        _send(tx, nxt.name, 1)
        return
    tx.set(status=RunStatus.COMPLETED)  # RUNNING -> COMPLETED
    tx.persist("completed")
    tx.audit("completed")


def _on_start(tx: _Tx, ev: Start) -> None:
    tx.require("start", RunStatus.PENDING)
    tx.set(status=RunStatus.RUNNING)  # PENDING -> RUNNING
    tx.persist("started")
    tx.audit("started")
    _advance(tx, ev.now)


def _waiting(tx: _Tx, ev: Event, name: str) -> bool:
    step = tx.state.step(name)
    if tx.state.status is RunStatus.RUNNING and step.status is StepStatus.STARTED:
        return True
    tx.stale(ev, name, f"step is {step.status.value}")
    return False


def _on_succeeded(tx: _Tx, ev: StepSucceeded) -> None:
    if not _waiting(tx, ev, ev.step):
        return
    tx.update(ev.step, status=StepStatus.SUCCEEDED, output=ev.output, error="")
    tx.persist("step_succeeded")
    tx.audit("step_succeeded", ev.step, attempt=tx.state.step(ev.step).attempt)
    _advance(tx, ev.now)


def _on_failed(tx: _Tx, ev: StepFailed) -> None:
    if _waiting(tx, ev, ev.step):
        _failure(tx, ev.step, ev.error_code, f"{ev.error_code}: {ev.message}", ev.now)


def _on_timed_out(tx: _Tx, ev: StepTimedOut) -> None:
    if _waiting(tx, ev, ev.step):
        _failure(tx, ev.step, TIMEOUT_CODE, f"{TIMEOUT_CODE}: step timed out", ev.now)


def _failure(tx: _Tx, name: str, code: str, error: str, now: float) -> None:
    on_error, retry = tx.state.spec.policy(name)
    attempt = tx.state.step(name).attempt
    if not retry.gives_up(attempt, code):
        delay = retry.delay(attempt)
        tx.update(name, status=StepStatus.RETRY_WAIT, error=error, due=now + delay)
        tx.persist("step_retry_wait")
        tx.effects.append(ArmTimer(TimerKind.RETRY, name, attempt + 1, delay))
        tx.audit("step_retrying", name, attempt=attempt, error=error, delay_s=delay)
    elif on_error == "skip":
        tx.update(name, status=StepStatus.SKIPPED, error=error)
        tx.persist("step_skipped")
        tx.audit("step_skipped", name, attempt=attempt, error=error)
        _advance(tx, now)
    else:  # stop, or retries exhausted: RUNNING -> FAILED
        _stop(tx, name, error, attempt=attempt)


def _stop(tx: _Tx, name: str, error: str, **detail: Any) -> None:
    """RUNNING | AWAITING_APPROVAL -> FAILED at step ``name``."""
    tx.update(name, status=StepStatus.FAILED, error=error, due=None)
    tx.set(status=RunStatus.FAILED, error=f"step {name!r}: {error}")
    tx.persist("failed")
    tx.audit("step_failed", name, error=error, **detail)
    tx.audit("failed", step=name, error=error)


def _on_decide(tx: _Tx, ev: Decide) -> None:
    """AWAITING_APPROVAL -> RUNNING (approved) or FAILED (rejected)."""
    step = tx.awaiting(ev)
    if not ev.approve:
        _rejected(tx, step.name, ev)
        return
    passed_on = tx.state.last_output()  # what the step got, the next one gets
    tx.update(step.name, status=StepStatus.SUCCEEDED, output=passed_on, error="", due=None,
              decision=decision(ev))
    tx.set(status=RunStatus.RUNNING)
    tx.persist("approved")
    tx.audit("approved", step.name, by=ev.by, note=ev.note)
    _advance(tx, ev.now)


def _rejected(tx: _Tx, name: str, ev: Decide) -> None:
    tx.update(name, decision=decision(ev))
    tx.audit("rejected", name, by=ev.by, note=ev.note)
    _stop(tx, name, f"rejected by {ev.by}" + (f": {ev.note}" if ev.note else ""),
          attempt=tx.state.step(name).attempt)


def _approval_timed_out(tx: _Tx, step: WfStepState, now: float) -> None:
    rejection = tx.approval_timed_out(step, StepStatus.AWAITING, now)
    if rejection is not None:  # else escalated: it waits once more
        _rejected(tx, step.name, rejection)


def _on_cancel(tx: _Tx, ev: Cancel) -> None:
    """PENDING | RUNNING | AWAITING_APPROVAL -> CANCELLED."""
    check_who(ev)
    tx.require("cancel", RunStatus.PENDING, RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL)
    in_doubt = []
    for step in tx.state.steps:
        if step.status is StepStatus.STARTED:  # sent: it may take effect all the same
            in_doubt.append(step.name)
            tx.update(step.name, status=StepStatus.CANCELLED, due=None,
                      error="cancelled while running: in doubt, it may have taken effect")
        elif step.status in (StepStatus.RETRY_WAIT, StepStatus.AWAITING):
            tx.update(step.name, status=StepStatus.CANCELLED, due=None, error="cancelled")
    tx.set(status=RunStatus.CANCELLED, error=f"cancelled by {ev.by}")
    tx.persist("cancelled")
    tx.audit("cancelled", by=ev.by, in_doubt=in_doubt)


def _on_timer(tx: _Tx, ev: TimerFired) -> None:
    kind = timer_kind(TimerKind, ev.kind, "workflow")
    if ev.step is None:
        raise InvalidRequest(f"a {kind.value} timer needs a step")
    if kind is TimerKind.APPROVAL_TIMEOUT:
        waiting = tx.approval_timer(ev)
        if waiting is not None:
            _approval_timed_out(tx, waiting, ev.now)
        return
    step = tx.state.step(ev.step)
    if tx.state.status is not RunStatus.RUNNING:
        return  # stale: the shell cannot cancel timers
    if kind is TimerKind.STEP_TIMEOUT and (step.status, step.attempt) == (
            StepStatus.STARTED, ev.attempt):
        _failure(tx, ev.step, TIMEOUT_CODE, f"{TIMEOUT_CODE}: step timed out", ev.now)
    elif kind is TimerKind.RETRY and (step.status, step.attempt + 1) == (
            StepStatus.RETRY_WAIT, ev.attempt):
        _send(tx, ev.step, ev.attempt)


def _on_recover(tx: _Tx, ev: Recover) -> None:
    if tx.state.status is RunStatus.AWAITING_APPROVAL:  # keeps waiting, for what is left
        step = tx.first(StepStatus.AWAITING)
        tx.audit("recovered", in_doubt=[])
        tx.arm_approval(step.name, step.attempt, (step.due or ev.now) - ev.now)
        return
    if tx.state.status is not RunStatus.RUNNING:
        return  # pending, completed, failed or cancelled: nothing in flight
    busy = [s for s in tx.state.steps if s.status in (StepStatus.STARTED, StepStatus.RETRY_WAIT)]
    tx.audit("recovered", in_doubt=[s.name for s in busy if s.status is StepStatus.STARTED])
    for step in busy:
        if step.status is StepStatus.STARTED:  # in doubt: same key, same attempt
            _send(tx, step.name, step.attempt)
        else:
            left = max(0.0, (step.due or ev.now) - ev.now)
            tx.effects.append(ArmTimer(TimerKind.RETRY, step.name, step.attempt + 1, left))
    if not busy:
        _advance(tx, ev.now)  # crashed between a step's end and the next step's start


def _on_resume(tx: _Tx, ev: Resume) -> None:
    tx.require("resume", RunStatus.FAILED)
    failed = tx.first(StepStatus.FAILED)
    tx.update(failed.name, status=StepStatus.PENDING, attempt=0, error="", decision=None)
    tx.set(status=RunStatus.RUNNING, resumes=tx.state.resumes + 1, error="")  # FAILED -> RUNNING
    tx.persist("resumed")
    tx.audit("resumed", step=failed.name, resumes=tx.state.resumes)
    _advance(tx, ev.now)


_HANDLERS: Final[dict[type[Any], Callable[[_Tx, Any], None]]] = {
    Start: _on_start,
    StepSucceeded: _on_succeeded,
    StepFailed: _on_failed,
    StepTimedOut: _on_timed_out,
    TimerFired: _on_timer,
    Recover: _on_recover,
    Resume: _on_resume,
    Cancel: _on_cancel,
    Decide: _on_decide,
}

MACHINE: Final = Machine("workflow", handle, from_record, to_record,
                         frozenset({RunStatus.COMPLETED.value, RunStatus.FAILED.value,
                                    RunStatus.CANCELLED.value}))
