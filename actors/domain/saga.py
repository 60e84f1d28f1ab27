"""Temporal-style durable sagas as a pure state machine (stdlib + naosd.errors only).

The events, effects and retry policy are the run vocabulary every
orchestration machine shares (``actors/domain/run_events.py``); this module
adds the saga's specs, states, operator events and record format.

A coordinator keeps one :class:`SagaState`, feeds every report it gets to
:func:`handle` and performs the returned effects in order. Nothing here reads a
clock or does I/O: time is each event's ``now``; timers are ``ArmTimer``
effects that come back as ``TimerFired`` events (stale ones are ignored, since
a shell cannot cancel timers).

Durability: every ``Persist`` carries the full JSON-able record
(:func:`to_record`) as it must be on disk *before* the effects that follow it
are sent. A ``Persist("step_started")`` always precedes ``RunStep``, and
``Persist("step_succeeded")`` (with the output) precedes anything decided from
that output. :func:`from_record` rebuilds the state from any persisted record;
``Recover`` then resumes it: a step recorded as started but not finished is *in
doubt*, so with ``recovery="forward"`` it is sent again with the same
idempotency key and attempt, and with ``recovery="compensate"`` (or when the
run was already compensating) it is compensated as if it had completed. A
finished step is never run again.

Decisions:

- Steps run in order. A step that fails (error or timeout) is retried by its
  :class:`RetryPolicy`; a code in ``non_retryable`` fails it at once. Then the
  completed steps are compensated one at a time, in reverse completion order;
  steps without ``compensate_agent`` are skipped (audited).
- A failing compensation is retried by ``SagaSpec.compensation_retry``; once
  exhausted the step is ``undo_failed``, the remaining compensations still run,
  and the run ends ``compensation_failed`` (never ``compensated``), audited
  with ``severity: "alert"``.
- ``RetryCompensation`` retries the ``undo_failed`` steps (reverse order) with
  fresh attempts; ``Resolve`` records the operator's note and makes the run
  final; it stays ``compensation_failed``.
- The saga timeout fails the step in flight (later reports are stale) and
  compensates; once compensating, the saga timeout no longer applies.
- A step that timed out (its own timeout on any attempt, or the saga timeout
  while it was started) is *in doubt*: it may have taken effect.  When the run
  compensates, an in-doubt step that ended failed is compensated too, first
  (it was the last to run), unless ``SagaSpec.compensate_in_doubt`` is False.
  Its compensation gets ``in_doubt: true`` and ``step_key`` (the step's own
  idempotency key) so the agent can tell whether the step took effect and do
  nothing if it did not.  A step that timed out and then succeeded on a retry
  is an ordinary succeeded step.
- A report for a step that is not waiting for it (late, duplicate, after a
  timeout) is ignored with a ``saga.stale_report`` audit.
- A step of kind ``approval`` names no agent: the run waits
  (``awaiting_approval``, durable: a recovered run keeps waiting) for a
  person's :class:`Decide`.  Approved, the step succeeds with the decision
  (``{"approved", "by", "note", "at"}``) as its output and the run goes on;
  rejected, the step fails and the completed steps are compensated.  The
  wait is bounded by the step's own timeout only: the saga timeout stops
  while a run awaits approval (``paused_s``) and goes on from where it
  stopped.  When the step's timeout fires, ``on_timeout="reject"`` rejects
  it (``by: "timeout"``); ``"escalate"`` audits ``saga.approval_escalated``
  (``severity: "alert"``) and waits once more as long, then rejects.
- :class:`Cancel` (running, pending or awaiting approval): the step in
  flight is failed and treated as in doubt, as a timed-out one is, and the
  completed steps are compensated; the run ends ``cancelled`` (or
  ``compensation_failed`` when a compensation fails: an operator's retry
  then ends it ``cancelled``).  Cancelling a run that is compensating or
  final is a Conflict.

Audit types: ``saga.started``, ``saga.step_started``,
``saga.step_acknowledged``, ``saga.step_succeeded``, ``saga.step_failed``,
``saga.step_retrying``, ``saga.compensating``, ``saga.compensation_skipped``,
``saga.compensation_started``, ``saga.compensation_retrying``,
``saga.compensated_step``, ``saga.compensation_failed_step``,
``saga.completed``, ``saga.compensated``, ``saga.compensation_failed``,
``saga.timed_out``, ``saga.recovered``, ``saga.resolved``, ``saga.stale_report``,
``saga.approval_requested``, ``saga.approval_escalated``, ``saga.approval_timed_out``,
``saga.approved``, ``saga.rejected``, ``saga.cancel_requested``, ``saga.cancelled``.
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
    CompensationFailed,
    CompensationSucceeded,
    Decide,
    Machine,
    Persist,
    Recover,
    RetryPolicy,
    RunCompensation,
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
    "ArmTimer", "Audit", "Cancel", "CompensationFailed", "CompensationSucceeded", "Decide",
    "Persist", "Recover", "RetryPolicy", "RunCompensation", "RunStep", "Start", "StepFailed",
    "StepSucceeded", "StepTimedOut", "TimerFired",
]

RECORD_VERSION: Final = 1
RECOVERY_MODES: Final = ("forward", "compensate")
SAGA_TIMEOUT_CODE: Final = "saga_timeout"
DEFAULT_RETRY: Final = RetryPolicy()


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    AWAITING_APPROVAL = "awaiting_approval"  # a step of kind approval waits for a person
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    CANCELLED = "cancelled"  # cancelled by an operator, its completed steps compensated


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    STARTED = "started"  # RunStep persisted (maybe sent); no result yet: in doubt on Recover
    AWAITING = "awaiting_approval"  # an approval step waiting for a person's decision
    RETRY_WAIT = "retry_wait"  # failed, waiting for its retry timer
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # out of attempts (or non-retryable, or the saga timed out)
    UNDOING = "undoing"  # RunCompensation persisted (maybe sent); no result yet
    UNDO_WAIT = "undo_wait"  # compensation failed, waiting for its retry timer
    COMPENSATED = "compensated"
    UNDO_FAILED = "undo_failed"  # compensation out of attempts


class TimerKind(enum.StrEnum):
    STEP_TIMEOUT = "step_timeout"
    RETRY = "retry"
    UNDO_TIMEOUT = "undo_timeout"
    UNDO_RETRY = "undo_retry"
    SAGA_TIMEOUT = "saga_timeout"
    APPROVAL_TIMEOUT = APPROVAL_TIMEOUT


FINAL: Final = frozenset(
    {RunStatus.COMPLETED, RunStatus.COMPENSATED, RunStatus.COMPENSATION_FAILED,
     RunStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str
    agent: str
    compensate_agent: str | None = None
    timeout_s: float = 60.0  # an approval: how long it waits for a decision
    retry: RetryPolicy = DEFAULT_RETRY
    kind: str = "agent"  # or "approval": a person decides it (agent "")
    on_timeout: str = "reject"  # an approval nobody decided in time: reject or escalate

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRequest("step name must be a non-empty string")
        check_step_kind(self.name, self.kind, self.agent, self.on_timeout)
        if self.compensate_agent is not None and not isinstance(self.compensate_agent, str):
            raise InvalidRequest("compensate_agent must be a string or None")
        if self.kind == "approval" and self.compensate_agent:
            raise InvalidRequest(f"approval step {self.name!r} has nothing to compensate")
        check_seconds(self.timeout_s, f"step {self.name!r} timeout_s", zero_ok=False)

    def to_dict(self) -> dict[str, Any]:
        return plain(self) | {"retry": self.retry.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepSpec:
        return rebuild(cls, data, retry=RetryPolicy.from_dict)


@dataclass(frozen=True, slots=True)
class SagaSpec:
    """A saga as declared; ``steps`` run in order."""

    name: str
    steps: tuple[StepSpec, ...]
    timeout_s: float = 3600.0
    recovery: str = "forward"
    compensation_retry: RetryPolicy = DEFAULT_RETRY
    compensate_in_doubt: bool = True  # a failed step that timed out is compensated too

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise InvalidRequest("a saga needs at least one step")
        names = [s.name for s in self.steps if isinstance(s, StepSpec)]
        if len(names) != len(self.steps):
            raise InvalidRequest("saga steps must be StepSpec values")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"duplicate step names in saga {self.name!r}")
        check_seconds(self.timeout_s, "saga timeout_s", zero_ok=False)
        if self.recovery not in RECOVERY_MODES:
            raise InvalidRequest(f"recovery must be forward or compensate, got {self.recovery!r}")
        if not isinstance(self.compensate_in_doubt, bool):
            raise InvalidRequest(
                f"compensate_in_doubt must be true or false, got {self.compensate_in_doubt!r}"
            )

    def step(self, name: str) -> StepSpec:
        for spec in self.steps:
            if spec.name == name:
                return spec
        raise NotFound(f"saga {self.name!r} has no step {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return plain(self) | {
            "steps": [s.to_dict() for s in self.steps],
            "compensation_retry": self.compensation_retry.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SagaSpec:
        return rebuild(cls, data, steps=lambda steps: tuple(map(StepSpec.from_dict, steps)),
                       compensation_retry=RetryPolicy.from_dict)


@dataclass(frozen=True, slots=True)
class StepState:
    name: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0  # attempts of the step sent so far
    undo_attempt: int = 0  # attempts of its compensation sent so far
    output: Any = None
    error: str = ""
    due: float | None = None  # when its retry timer (step or compensation) is due
    finished_seq: int = 0  # completion order (1-based) among succeeded steps
    in_doubt: bool = False  # timed out after being sent: may have taken effect
    decision: dict[str, Any] | None = None  # an approval's: approved, by, note, at


@dataclass(frozen=True, slots=True)
class SagaState:
    run_id: str
    spec: SagaSpec
    input: Any = None
    status: RunStatus = RunStatus.PENDING
    steps: tuple[StepState, ...] = ()
    undo_queue: tuple[str, ...] = ()  # compensations still to run, head first
    started_at: float | None = None
    error: str = ""
    resolution: str = ""  # operator's Resolve note; set means final
    paused_s: float = 0.0  # time spent awaiting approvals: the saga timeout stops meanwhile
    paused_since: float | None = None  # when the current approval wait began
    saga_timer: int = 0  # the saga timeout's current timer (older ones are stale)
    cancelled_by: str = ""  # who cancelled the run (it ends cancelled once compensated)

    def step(self, name: str) -> StepState:
        for step in self.steps:
            if step.name == name:
                return step
        raise NotFound(f"saga {self.run_id!r} has no step {name!r}")


# -- events of sagas only ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepStarted:
    step: str
    now: float


@dataclass(frozen=True, slots=True)
class SagaTimedOut:
    now: float


@dataclass(frozen=True, slots=True)
class RetryCompensation:
    now: float


@dataclass(frozen=True, slots=True)
class Resolve:
    note: str
    now: float


Event: TypeAlias = (
    Start
    | StepStarted
    | StepSucceeded
    | StepFailed
    | StepTimedOut
    | CompensationSucceeded
    | CompensationFailed
    | TimerFired
    | SagaTimedOut
    | Recover
    | RetryCompensation
    | Resolve
    | Cancel
    | Decide
)
Effect: TypeAlias = RunStep | RunCompensation | ArmTimer | Persist | Audit


# -- public functions -----------------------------------------------------------------


def initial(run_id: str, spec: SagaSpec, saga_input: Any = None) -> SagaState:
    """A pending run of ``spec``; ``Start`` begins it."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRequest("run_id must be a non-empty string")
    steps = tuple(StepState(s.name) for s in spec.steps)
    return SagaState(run_id=run_id, spec=spec, input=saga_input, steps=steps)


def idempotency_key(run_id: str, step: str, undo: bool = False) -> str:
    return f"{run_id}:{step}:{'undo' if undo else 'do'}"


def handle(state: SagaState, event: Event) -> tuple[SagaState, list[Effect]]:
    """Apply ``event``: the new state and the effects to perform, in order.

    Raises:
        Conflict: an operator event (Start, RetryCompensation, Resolve, Cancel,
            Decide) does not fit the run's status; ``state`` is unchanged.
        NotFound: the event names a step the saga does not have.
        InvalidRequest: ``event`` is not a saga event, or a timer kind is unknown.
    """
    return dispatch(_HANDLERS, _Tx(state), event, "saga")


def to_record(state: SagaState) -> dict[str, Any]:
    """The JSON-able record of ``state`` (what ``Persist`` carries)."""
    return {"version": RECORD_VERSION} | plain(state) | {
        "spec": state.spec.to_dict(),
        "steps": [plain(s) for s in state.steps],
        "undo_queue": list(state.undo_queue),
    }


def from_record(record: dict[str, Any]) -> SagaState:
    """Rebuild the state a :func:`to_record` record describes (raises InvalidRequest)."""
    data = check_record(record, "saga", RECORD_VERSION)
    try:
        state = rebuild(SagaState, {k: v for k, v in data.items() if k != "version"},
                        spec=SagaSpec.from_dict, status=RunStatus,
                        steps=lambda steps: tuple(rebuild(StepState, s, status=StepStatus)
                                                  for s in steps),
                        undo_queue=tuple)
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt("saga", exc) from exc
    if [s.name for s in state.steps] != [s.name for s in state.spec.steps]:
        raise InvalidRequest("corrupt saga record: steps do not match the spec")
    return state


# -- the transaction all handlers work through ----------------------------------------


class _Tx(RunTx[SagaState]):
    __slots__ = ()

    def __init__(self, state: SagaState) -> None:
        super().__init__(state, "saga", to_record)

    def require(self, action: str, *allowed: RunStatus) -> None:
        if self.state.status not in allowed or self.state.resolution:
            where = "resolved" if self.state.resolution else self.state.status.value
            raise Conflict(f"saga run {self.state.run_id!r} is {where}: cannot {action}")

    def outputs(self) -> dict[str, Any]:
        done = sorted((s for s in self.state.steps if s.finished_seq), key=_seq)
        return {s.name: s.output for s in done}

    def next_seq(self) -> int:
        return 1 + max(s.finished_seq for s in self.state.steps)


def _seq(step: StepState) -> int:
    return step.finished_seq


# -- forward: running the steps -------------------------------------------------------


def _send_step(tx: _Tx, name: str, attempt: int) -> None:
    """Persist ``name`` as started (attempt ``attempt``), then send it with its timeout."""
    spec = tx.state.spec.step(name)
    key = idempotency_key(tx.state.run_id, name)
    message = tx.message(name, attempt, key, input=tx.state.input, outputs=tx.outputs())
    effect = RunStep(name, spec.agent, message, key, attempt, spec.timeout_s)
    tx.send(name, StepStatus.STARTED, attempt, effect, TimerKind.STEP_TIMEOUT, "step_started")


def _advance(tx: _Tx, now: float) -> None:
    """RUNNING: start the next pending step (or ask for its approval), or
    complete the run."""
    nxt = tx.first(StepStatus.PENDING)
    if nxt is not None and tx.state.spec.step(nxt.name).kind == "approval":
        _ask_approval(tx, nxt.name, now)
    elif nxt is not None:
        _send_step(tx, nxt.name, 1)
    else:
        _complete(tx)


def _complete(tx: _Tx) -> None:
    tx.set(status=RunStatus.COMPLETED)  # RUNNING -> COMPLETED
    tx.persist("completed")
    tx.audit("completed")


def _on_start(tx: _Tx, ev: Start) -> None:
    tx.require("start", RunStatus.PENDING)
    tx.set(status=RunStatus.RUNNING, started_at=ev.now)  # PENDING -> RUNNING
    tx.persist("started")
    tx.effects.append(ArmTimer(TimerKind.SAGA_TIMEOUT, None, 0, tx.state.spec.timeout_s))
    tx.audit("started")
    _advance(tx, ev.now)


def _waiting(tx: _Tx, ev: Event, name: str, status: StepStatus) -> bool:
    """True if step ``name`` is waiting for this report; else audit it as stale."""
    step = tx.state.step(name)
    if step.status is status and tx.state.status in (RunStatus.RUNNING, RunStatus.COMPENSATING):
        return True
    tx.stale(ev, name, f"step is {step.status.value}, run is {tx.state.status.value}")
    return False


def _on_step_started(tx: _Tx, ev: StepStarted) -> None:
    if _waiting(tx, ev, ev.step, StepStatus.STARTED):
        tx.audit("step_acknowledged", ev.step, attempt=tx.state.step(ev.step).attempt)


def _on_step_succeeded(tx: _Tx, ev: StepSucceeded) -> None:
    if not _waiting(tx, ev, ev.step, StepStatus.STARTED):
        return
    tx.update(ev.step, status=StepStatus.SUCCEEDED, output=ev.output, error="",
              finished_seq=tx.next_seq(), in_doubt=False)
    tx.persist("step_succeeded")
    tx.audit("step_succeeded", ev.step, attempt=tx.state.step(ev.step).attempt)
    _advance(tx, ev.now)


def _on_step_failed(tx: _Tx, ev: StepFailed) -> None:
    if _waiting(tx, ev, ev.step, StepStatus.STARTED):
        _step_failure(tx, ev.step, ev.error_code, ev.message, ev.now)


def _on_step_timed_out(tx: _Tx, ev: StepTimedOut) -> None:
    if _waiting(tx, ev, ev.step, StepStatus.STARTED):
        _step_failure(tx, ev.step, TIMEOUT_CODE, "step timed out", ev.now)


def _step_failure(tx: _Tx, name: str, code: str, message: str, now: float) -> None:
    if code == TIMEOUT_CODE:
        tx.update(name, in_doubt=True)
    step, policy = tx.state.step(name), tx.state.spec.step(name).retry
    error = f"{code}: {message}"
    if not policy.gives_up(step.attempt, code):
        delay = policy.delay(step.attempt)
        tx.update(name, status=StepStatus.RETRY_WAIT, error=error, due=now + delay)
        tx.persist("step_retry_wait")
        tx.effects.append(ArmTimer(TimerKind.RETRY, name, step.attempt + 1, delay))
        tx.audit("step_retrying", name, attempt=step.attempt, error=error, delay_s=delay)
        return
    tx.update(name, status=StepStatus.FAILED, error=error, due=None)
    doubt = _undo_in_doubt(tx, name)
    tx.audit("step_failed", name, attempt=step.attempt, error=error, in_doubt=step.in_doubt)
    _begin_compensation(tx, f"step {name!r} failed: {error}", extra=doubt)


def _undo_in_doubt(tx: _Tx, name: str) -> tuple[str, ...]:
    """The failed step ``name`` as an extra compensation if it is in doubt."""
    if tx.state.step(name).in_doubt and tx.state.spec.compensate_in_doubt:
        return (name,)
    return ()


# -- approvals --------------------------------------------------------------------------


def _ask_approval(tx: _Tx, name: str, now: float) -> None:
    """RUNNING -> AWAITING_APPROVAL: the saga timeout stops until the decision."""
    spec = tx.state.spec.step(name)
    tx.set(status=RunStatus.AWAITING_APPROVAL, paused_since=now)
    tx.ask_approval(name, StepStatus.AWAITING, 1, spec.timeout_s, now, "approval_requested",
                    on_timeout=spec.on_timeout)


def _unpause(tx: _Tx, now: float) -> None:
    """AWAITING_APPROVAL -> RUNNING: the wait no longer counts against the saga timeout."""
    since = tx.state.paused_since
    paused = tx.state.paused_s + (max(0.0, now - since) if since is not None else 0.0)
    tx.set(status=RunStatus.RUNNING, paused_s=paused, paused_since=None)


def _saga_timeout_left(state: SagaState, now: float) -> float:
    assert state.started_at is not None  # set by Start
    return state.started_at + state.spec.timeout_s + state.paused_s - now


def _on_decide(tx: _Tx, ev: Decide) -> None:
    step = tx.awaiting(ev)
    _unpause(tx, ev.now)
    if not ev.approve:
        _rejected(tx, step.name, ev)
        return
    kept = decision(ev)
    tx.update(step.name, status=StepStatus.SUCCEEDED, output=kept, decision=kept, due=None,
              finished_seq=tx.next_seq())
    tx.set(saga_timer=tx.state.saga_timer + 1)  # the saga timeout goes on from where it stopped
    tx.persist("approved")
    left = max(0.0, _saga_timeout_left(tx.state, ev.now))
    tx.effects.append(ArmTimer(TimerKind.SAGA_TIMEOUT, None, tx.state.saga_timer, left))
    tx.audit("approved", step.name, by=ev.by, note=ev.note)
    _advance(tx, ev.now)


def _rejected(tx: _Tx, name: str, ev: Decide) -> None:
    """The approval step fails: the completed steps are compensated."""
    error = f"rejected by {ev.by}" + (f": {ev.note}" if ev.note else "")
    tx.update(name, status=StepStatus.FAILED, error=error, due=None, decision=decision(ev))
    tx.audit("rejected", name, by=ev.by, note=ev.note)
    _begin_compensation(tx, f"step {name!r} {error}", extra=())


def _approval_timed_out(tx: _Tx, step: StepState, now: float) -> None:
    rejection = tx.approval_timed_out(step, StepStatus.AWAITING, now)
    if rejection is not None:  # else escalated: it waits once more
        _unpause(tx, now)
        _rejected(tx, step.name, rejection)


# -- backward: compensating -----------------------------------------------------------


def _begin_compensation(tx: _Tx, reason: str, extra: tuple[str, ...]) -> None:
    """RUNNING -> COMPENSATING: undo ``extra`` (failed in-doubt steps), then the
    completed steps, newest first.  Each of ``extra`` gets the next completion
    number, so an operator's retry-compensation orders it the same way."""
    for name in extra:
        tx.update(name, finished_seq=tx.next_seq())
    done = [s.name for s in sorted(tx.state.steps, key=_seq) if s.finished_seq]
    queue = tuple(reversed(done))
    tx.set(status=RunStatus.COMPENSATING, error=reason, undo_queue=queue)
    tx.persist("compensating")
    tx.audit("compensating", reason=reason, steps=list(queue))
    _next_undo(tx)


def _next_undo(tx: _Tx) -> None:
    """Send the head of the undo queue (skipping steps without one), or finish."""
    while tx.state.undo_queue:
        name = tx.state.undo_queue[0]
        if tx.state.spec.step(name).compensate_agent is not None:
            _send_undo(tx, name, 1)
            return
        tx.set(undo_queue=tx.state.undo_queue[1:])
        tx.audit("compensation_skipped", name)
    failed = [s.name for s in tx.state.steps if s.status is StepStatus.UNDO_FAILED]
    status = RunStatus.COMPENSATION_FAILED if failed else (
        RunStatus.CANCELLED if tx.state.cancelled_by else RunStatus.COMPENSATED)
    tx.set(status=status)  # COMPENSATING -> COMPENSATED | CANCELLED | COMPENSATION_FAILED
    tx.persist(status.value)
    alert = {"severity": "alert"} if failed else {}  # needs an operator: retry or resolve
    by = {"by": tx.state.cancelled_by} if tx.state.cancelled_by else {}
    tx.audit(status.value, failed=failed, reason=tx.state.error, **alert, **by)


def _send_undo(tx: _Tx, name: str, attempt: int) -> None:
    spec, step = tx.state.spec.step(name), tx.state.step(name)
    assert spec.compensate_agent is not None  # _next_undo skips the others
    key = idempotency_key(tx.state.run_id, name, undo=True)
    doubt: dict[str, Any] = {}
    if step.in_doubt:  # the step may not have taken effect: its key tells the agent
        doubt = {"in_doubt": True, "step_key": idempotency_key(tx.state.run_id, name)}
    message = tx.message(name, attempt, key, input=tx.state.input, outputs=tx.outputs(),
                         output=step.output, **doubt)
    effect = RunCompensation(name, spec.compensate_agent, message, key, attempt, spec.timeout_s)
    tx.send(name, StepStatus.UNDOING, attempt, effect, TimerKind.UNDO_TIMEOUT,
            "compensation_started")


def _on_undo_succeeded(tx: _Tx, ev: CompensationSucceeded) -> None:
    if not _waiting(tx, ev, ev.step, StepStatus.UNDOING):
        return
    tx.update(ev.step, status=StepStatus.COMPENSATED)
    tx.set(undo_queue=tx.state.undo_queue[1:])
    tx.persist("compensation_succeeded")
    tx.audit("compensated_step", ev.step, attempt=tx.state.step(ev.step).undo_attempt)
    _next_undo(tx)


def _on_undo_failed(tx: _Tx, ev: CompensationFailed) -> None:
    if _waiting(tx, ev, ev.step, StepStatus.UNDOING):
        _undo_failure(tx, ev.step, ev.error_code, ev.message, ev.now)


def _undo_failure(tx: _Tx, name: str, code: str, message: str, now: float) -> None:
    step, policy = tx.state.step(name), tx.state.spec.compensation_retry
    error = f"{code}: {message}"
    if not policy.gives_up(step.undo_attempt, code):
        delay = policy.delay(step.undo_attempt)
        tx.update(name, status=StepStatus.UNDO_WAIT, error=error, due=now + delay)
        tx.persist("compensation_retry_wait")
        tx.effects.append(ArmTimer(TimerKind.UNDO_RETRY, name, step.undo_attempt + 1, delay))
        tx.audit("compensation_retrying", name, attempt=step.undo_attempt, error=error)
        return
    tx.update(name, status=StepStatus.UNDO_FAILED, error=error, due=None)
    tx.set(undo_queue=tx.state.undo_queue[1:])
    tx.persist("compensation_failed_step")
    tx.audit("compensation_failed_step", name, attempt=step.undo_attempt, error=error)
    _next_undo(tx)


# -- timers ---------------------------------------------------------------------------


def _on_timer(tx: _Tx, ev: TimerFired) -> None:
    kind = timer_kind(TimerKind, ev.kind, "saga")
    if kind is TimerKind.SAGA_TIMEOUT:
        if ev.attempt == tx.state.saga_timer:  # else re-armed after an approval: stale
            _on_saga_timeout(tx, SagaTimedOut(ev.now))
        return
    if kind is TimerKind.APPROVAL_TIMEOUT:
        waiting = tx.approval_timer(ev)
        if waiting is not None:
            _approval_timed_out(tx, waiting, ev.now)
        return
    if ev.step is None:
        raise InvalidRequest(f"a {kind.value} timer needs a step")
    step = tx.state.step(ev.step)
    live = tx.state.status in (RunStatus.RUNNING, RunStatus.COMPENSATING)
    if kind is TimerKind.STEP_TIMEOUT and live and _is(step, StepStatus.STARTED, ev.attempt):
        _step_failure(tx, ev.step, TIMEOUT_CODE, "step timed out", ev.now)
    elif kind is TimerKind.RETRY and live and _is(step, StepStatus.RETRY_WAIT, ev.attempt - 1):
        _send_step(tx, ev.step, ev.attempt)
    elif kind is TimerKind.UNDO_TIMEOUT and _is(step, StepStatus.UNDOING, ev.attempt, True):
        _undo_failure(tx, ev.step, TIMEOUT_CODE, "compensation timed out", ev.now)
    elif kind is TimerKind.UNDO_RETRY and _is(step, StepStatus.UNDO_WAIT, ev.attempt - 1, True):
        _send_undo(tx, ev.step, ev.attempt)
    # anything else is a stale timer: the shell cannot cancel timers


def _is(step: StepState, status: StepStatus, attempt: int, undo: bool = False) -> bool:
    return step.status is status and (step.undo_attempt if undo else step.attempt) == attempt


def _on_saga_timeout(tx: _Tx, ev: SagaTimedOut) -> None:
    if tx.state.status is not RunStatus.RUNNING:
        return  # compensations are not cut short; approvals stop it; final runs stay final
    doubt = _stop_in_flight(tx, SAGA_TIMEOUT_CODE)
    tx.audit("timed_out", timeout_s=tx.state.spec.timeout_s)
    _begin_compensation(tx, "saga timed out", extra=doubt)


_IN_FLIGHT: Final = frozenset({StepStatus.STARTED, StepStatus.RETRY_WAIT, StepStatus.AWAITING})


def _stop_in_flight(tx: _Tx, error: str) -> tuple[str, ...]:
    """Fail the step in flight (started, waiting to retry, awaiting approval):
    one that was sent is in doubt, and comes back to be compensated first."""
    doubt: tuple[str, ...] = ()
    for step in tx.state.steps:
        if step.status in _IN_FLIGHT:
            in_doubt = step.in_doubt or step.status is StepStatus.STARTED
            tx.update(step.name, status=StepStatus.FAILED, error=error, due=None,
                      in_doubt=in_doubt)
            doubt += _undo_in_doubt(tx, step.name)
    return doubt


def _on_cancel(tx: _Tx, ev: Cancel) -> None:
    """PENDING | RUNNING | AWAITING_APPROVAL -> COMPENSATING (-> CANCELLED)."""
    check_who(ev)
    tx.require("cancel", RunStatus.PENDING, RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL)
    reason = f"cancelled by {ev.by}"
    tx.set(cancelled_by=ev.by)
    if tx.state.status is RunStatus.PENDING:  # never started: nothing to undo
        tx.set(status=RunStatus.CANCELLED, error=reason)
        tx.persist("cancelled")
        tx.audit("cancelled", failed=[], reason=reason, by=ev.by)
        return
    if tx.state.status is RunStatus.AWAITING_APPROVAL:
        _unpause(tx, ev.now)
    in_doubt = [s.name for s in tx.state.steps if s.status is StepStatus.STARTED]
    doubt = _stop_in_flight(tx, "cancelled")
    tx.audit("cancel_requested", by=ev.by, in_doubt=in_doubt)
    _begin_compensation(tx, reason, extra=doubt)


# -- recovery and operator commands ---------------------------------------------------


def _on_recover(tx: _Tx, ev: Recover) -> None:
    """Resume after a restart: re-arm what was armed, re-send what is in doubt."""
    status = tx.state.status
    if status in FINAL or status is RunStatus.PENDING:
        return  # nothing in flight
    doubt = [s.name for s in tx.state.steps if s.status is StepStatus.STARTED]
    tx.audit("recovered", status=status.value, in_doubt=doubt)
    if status is RunStatus.AWAITING_APPROVAL:  # keeps waiting, for what is left of it
        step = tx.first(StepStatus.AWAITING)
        tx.arm_approval(step.name, step.attempt, (step.due or ev.now) - ev.now)
        return
    if status is RunStatus.RUNNING:
        left = _saga_timeout_left(tx.state, ev.now)
        if left <= 0:
            _on_saga_timeout(tx, SagaTimedOut(ev.now))
            return
        if tx.state.spec.recovery == "compensate":
            _recover_compensating(tx, doubt)
            return
        tx.effects.append(ArmTimer(TimerKind.SAGA_TIMEOUT, None, tx.state.saga_timer, left))
    _resume(tx, ev.now)


def _recover_compensating(tx: _Tx, doubt: list[str]) -> None:
    """recovery="compensate": the in-doubt step may have run, so it is undone first."""
    for name in doubt:
        tx.update(name, status=StepStatus.SUCCEEDED, error="in doubt", finished_seq=tx.next_seq())
    for step in tx.state.steps:
        if step.status is StepStatus.RETRY_WAIT:
            tx.update(step.name, status=StepStatus.FAILED, due=None)
    _begin_compensation(tx, "recovered with recovery=compensate", extra=())


def _resume(tx: _Tx, now: float) -> None:
    """Re-send in-doubt work with the same key and attempt; re-arm retry timers."""
    for step in tx.state.steps:
        left = max(0.0, (step.due or now) - now)
        match step.status:
            case StepStatus.STARTED:
                _send_step(tx, step.name, step.attempt)
            case StepStatus.RETRY_WAIT:
                tx.effects.append(ArmTimer(TimerKind.RETRY, step.name, step.attempt + 1, left))
            case StepStatus.UNDOING:
                _send_undo(tx, step.name, step.undo_attempt)
            case StepStatus.UNDO_WAIT:
                nxt = step.undo_attempt + 1
                tx.effects.append(ArmTimer(TimerKind.UNDO_RETRY, step.name, nxt, left))
            case _:
                pass
    if tx.state.status is RunStatus.COMPENSATING and not _in_flight(tx.state, _UNDO_BUSY):
        _next_undo(tx)  # crashed between two compensations
    elif tx.state.status is RunStatus.RUNNING and not _in_flight(tx.state, _DO_BUSY):
        _advance(tx, now)  # crashed between a step's success and the next step's start


_DO_BUSY: Final = frozenset({StepStatus.STARTED, StepStatus.RETRY_WAIT})
_UNDO_BUSY: Final = frozenset({StepStatus.UNDOING, StepStatus.UNDO_WAIT})


def _in_flight(state: SagaState, busy: frozenset[StepStatus]) -> bool:
    return any(s.status in busy for s in state.steps)


def _on_retry_compensation(tx: _Tx, ev: RetryCompensation) -> None:
    tx.require("retry compensation", RunStatus.COMPENSATION_FAILED)
    failed = [s for s in tx.state.steps if s.status is StepStatus.UNDO_FAILED]
    for step in failed:
        tx.update(step.name, status=StepStatus.SUCCEEDED, undo_attempt=0)
    queue = tuple(s.name for s in sorted(failed, key=_seq, reverse=True))
    tx.set(status=RunStatus.COMPENSATING, undo_queue=queue)  # -> COMPENSATING
    tx.persist("compensation_retried")
    tx.audit("compensating", reason="operator retry", steps=list(queue))
    _next_undo(tx)


def _on_resolve(tx: _Tx, ev: Resolve) -> None:
    tx.require("resolve", RunStatus.COMPENSATION_FAILED)
    if not isinstance(ev.note, str) or not ev.note.strip():
        raise InvalidRequest("a resolution needs a note")
    tx.set(resolution=ev.note)
    tx.persist("resolved")
    tx.audit("resolved", note=ev.note)


_HANDLERS: Final[dict[type[Any], Callable[[_Tx, Any], None]]] = {
    Start: _on_start,
    StepStarted: _on_step_started,
    StepSucceeded: _on_step_succeeded,
    StepFailed: _on_step_failed,
    StepTimedOut: _on_step_timed_out,
    CompensationSucceeded: _on_undo_succeeded,
    CompensationFailed: _on_undo_failed,
    TimerFired: _on_timer,
    SagaTimedOut: _on_saga_timeout,
    Recover: _on_recover,
    RetryCompensation: _on_retry_compensation,
    Resolve: _on_resolve,
    Cancel: _on_cancel,
    Decide: _on_decide,
}

MACHINE: Final = Machine("saga", handle, from_record, to_record,
                         frozenset(s.value for s in FINAL))
