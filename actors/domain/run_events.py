"""The run vocabulary sagas, workflows and pools share (pure, picklable).

Every orchestration machine is ``handle(state, event) -> (state, effects)``
over the same words, so one shell (``actors/orchestration.py``) runs them all
and dispatches on types with ``match``:

- events: :class:`Start`, :class:`StepSucceeded`, :class:`StepFailed`,
  :class:`StepTimedOut`, :class:`CompensationSucceeded`,
  :class:`CompensationFailed`, :class:`TimerFired`, :class:`Recover`
  and the operator's :class:`Cancel` and :class:`Decide` (a human's
  approval or rejection of a step of kind ``approval``); machines add their
  own operator events: a saga's ``RetryCompensation``, a workflow's
  ``Resume``;
- effects: :class:`Persist` (the run's whole record, on disk before the
  effects after it leave), :class:`Audit`, :class:`RunStep` and
  :class:`RunCompensation` (ask an agent), :class:`ArmTimer` (comes back as
  ``TimerFired``; stale ones are ignored by the machines, a shell cannot
  cancel timers);
- :class:`RetryPolicy`: how often a step (a compensation, a pool task) is
  tried and the backoff in between;
- :func:`reply_event`: the event an agent's answer to a RunStep or a
  RunCompensation becomes (the shell never decides what an answer means);
- :class:`RunTx`: one transition as the handlers build it;
- :class:`Machine`: what a shell needs to know about a kind of run.

Nothing here reads a clock or does I/O: time is each event's ``now``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Final, Generic, TypeVar

from naosd.errors import Conflict, InvalidRequest

S = TypeVar("S")
T = TypeVar("T")
TIMEOUT_CODE: Final = "timeout"
STEP_KINDS: Final = ("agent", "approval")
ON_TIMEOUT: Final = ("reject", "escalate")
AWAITING_APPROVAL: Final = "awaiting_approval"  # a run's (and its step's) status meanwhile
APPROVAL_TIMEOUT: Final = "approval_timeout"  # the timer kind of an approval's wait
TIMED_OUT_BY: Final = "timeout"  # who rejects an approval nobody decided in time
# The longest timer armed at once: an actor's wakeupAfter ends up as the timeout of an
# epoll wait, which Python refuses past ~24.8 days (INT_MAX ms).  A longer wait (an
# approval may wait up to a year) is armed in turns: an early timer re-arms the rest.
TIMER_MAX_S: Final = 86400.0


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    now: float


@dataclass(frozen=True, slots=True)
class StepSucceeded:
    step: str
    output: Any
    now: float


@dataclass(frozen=True, slots=True)
class StepFailed:
    step: str
    error_code: str
    message: str
    now: float


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    step: str
    now: float


@dataclass(frozen=True, slots=True)
class CompensationSucceeded:
    step: str
    now: float


@dataclass(frozen=True, slots=True)
class CompensationFailed:
    step: str
    error_code: str
    message: str
    now: float


@dataclass(frozen=True, slots=True)
class TimerFired:
    """An :class:`ArmTimer` that came due (``kind``, ``step`` and ``attempt`` as armed)."""

    kind: str
    step: str | None
    attempt: int
    now: float


@dataclass(frozen=True, slots=True)
class Recover:
    """After a restart (of naosd or of the run's shell): carry on from the
    persisted record."""

    now: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """An operator cancels the run; ``by`` says who (``uid:1000``,
    ``dashboard``): it goes into the record and the audit rows."""

    by: str
    now: float


@dataclass(frozen=True, slots=True)
class Decide:
    """A human's decision on the step awaiting approval: approved or
    rejected, by whom, with a note.  ``step`` (optional) names the step the
    decision is meant for: a run that awaits another one refuses it."""

    approve: bool
    by: str
    note: str
    now: float
    step: str | None = None


# -- effects ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``record`` (a full ``to_record``) before sending the effects after
    it.  ``fallback`` is what to store instead if ``record`` cannot be stored
    (a pool's member output JSON cannot hold); None: nothing else will do."""

    what: str
    record: dict[str, Any] = field(hash=False)
    fallback: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class Audit:
    type: str
    detail: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class AgentCall:
    """Ask ``agent``: ``message`` is exactly what the agent gets,
    ``idempotency_key`` its ``ctx.idempotency_key``, ``timeout_s`` how long
    the call may take.  Shells dispatch on the two kinds below."""

    step: str
    agent: str
    message: Any = field(hash=False)
    idempotency_key: str
    attempt: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class RunStep(AgentCall):
    """Ask ``agent`` to run ``step``."""


@dataclass(frozen=True, slots=True)
class RunCompensation(AgentCall):
    """Ask ``agent`` to undo ``step``."""


@dataclass(frozen=True, slots=True)
class ArmTimer:
    kind: str
    step: str | None
    attempt: int
    delay_s: float


def reply_event(effect: RunStep | RunCompensation, *, ok: bool, output: Any = None,
                error_code: str = "", message: str = "", now: float
                ) -> StepSucceeded | StepFailed | CompensationSucceeded | CompensationFailed:
    """The event an agent's answer to ``effect`` is.  An answer shaped
    ``{"error": {"code": C, "message": M}}`` is a failure with code C (a
    business error a ``non_retryable`` can name)."""
    if ok and isinstance(output, dict) and isinstance(output.get("error"), dict):
        error = output["error"]
        ok, error_code = False, str(error.get("code") or "step_error")
        message = str(error.get("message") or "")
    match effect:
        case RunStep(step=step):
            if ok:
                return StepSucceeded(step, output, now)
            return StepFailed(step, error_code, message, now)
        case RunCompensation(step=step):
            if ok:
                return CompensationSucceeded(step, now)
            return CompensationFailed(step, error_code, message, now)


# -- retry policy -------------------------------------------------------------------------


def check_seconds(value: object, what: str, *, zero_ok: bool = True) -> None:
    """``value`` must be a finite number of seconds (> 0, or >= 0 with ``zero_ok``)."""
    ok = False
    if isinstance(value, int | float) and not isinstance(value, bool):
        ok = math.isfinite(value) and (value > 0 or (zero_ok and value == 0))
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidRequest(f"{what} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often something is tried, and the backoff in between."""

    attempts: int = 3
    initial_s: float = 1.0
    backoff: float = 2.0
    max_s: float = 30.0
    non_retryable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise InvalidRequest(f"attempts must be an integer, got {self.attempts!r}")
        if self.attempts < 1:
            raise InvalidRequest(f"attempts must be >= 1, got {self.attempts}")
        check_seconds(self.initial_s, "initial_s")
        check_seconds(self.max_s, "max_s")
        if not isinstance(self.backoff, int | float) or not 1.0 <= self.backoff < math.inf:
            raise InvalidRequest(f"backoff must be a finite factor >= 1, got {self.backoff!r}")
        object.__setattr__(self, "non_retryable", frozenset(self.non_retryable))

    @classmethod
    def fixed(cls, retries: object, delay_s: object = 0.0) -> RetryPolicy:
        """``retries`` more tries after the first, ``delay_s`` apart."""
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise InvalidRequest(f"retry count must be an integer >= 0, got {retries!r}")
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or not (
                0 <= delay_s < math.inf):
            raise InvalidRequest(f"retry delay_s must be a finite number >= 0, got {delay_s!r}")
        return cls(retries + 1, float(delay_s), 1.0, float(delay_s))

    def delay(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
        exponent = min(max(attempt - 1, 0), 64)  # 2.0 ** 1024 overflows; max_s caps first
        return float(min(self.initial_s * self.backoff**exponent, self.max_s))

    def gives_up(self, attempt: int, error_code: str) -> bool:
        return attempt >= self.attempts or error_code in self.non_retryable

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "initial_s": self.initial_s,
            "backoff": self.backoff,
            "max_s": self.max_s,
            "non_retryable": sorted(self.non_retryable),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """Read :meth:`to_dict`; also the ``{"count", "delay_s"}`` form older
        workflow records hold."""
        if "count" in data:
            return cls.fixed(data["count"], data.get("delay_s", 0.0))
        return cls(**(data | {"non_retryable": frozenset(data.get("non_retryable", ()))}))


# -- approval steps and operators' events ----------------------------------------------


def check_step_kind(name: str, kind: object, agent: object, on_timeout: object) -> None:
    """A step is run by an agent or decided by a person (``approval``,
    which names no agent); ``on_timeout`` is what an undecided approval
    does when its timeout fires: ``reject`` or ``escalate``."""
    if kind not in STEP_KINDS:
        raise InvalidRequest(f"step {name!r}: kind must be agent or approval, got {kind!r}")
    if on_timeout not in ON_TIMEOUT:
        raise InvalidRequest(
            f"step {name!r}: on_timeout must be reject or escalate, got {on_timeout!r}")
    if kind == "approval" and agent:
        raise InvalidRequest(f"step {name!r} is an approval (a person decides it): "
                             "it names no agent")
    if kind == "agent" and (not isinstance(agent, str) or not agent):
        raise InvalidRequest("step agent must be a non-empty string")


def check_who(event: Cancel | Decide) -> None:
    """An operator's event says who sent it (and a decision's note is text)."""
    if not isinstance(event.by, str) or not event.by.strip():
        raise InvalidRequest("an operator's decision must say who made it")
    if isinstance(event, Decide) and not isinstance(event.note, str):
        raise InvalidRequest("a decision's note must be text")


def decision(event: Decide) -> dict[str, Any]:
    """What a decided approval keeps: who, when, the note."""
    return {"approved": event.approve, "by": event.by, "note": event.note, "at": event.now}


# -- records ------------------------------------------------------------------------------


def plain(item: Any) -> dict[str, Any]:
    """A dataclass's fields as a JSON-able dict (enums by value)."""
    out = {}
    for f in fields(item):
        value = getattr(item, f.name)
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out


def rebuild(cls: Callable[..., T], data: Mapping[str, Any], **converters: Callable[[Any], Any]
            ) -> T:
    """``cls(**data)`` with ``converters`` applied to the fields they name."""
    return cls(**{k: converters[k](v) if k in converters else v for k, v in data.items()})


def check_record(record: object, kind: str, version: int) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("version") != version:
        raise InvalidRequest(f"not a {kind} record of version {version}")
    return record


def corrupt(kind: str, exc: Exception) -> InvalidRequest:
    return InvalidRequest(f"corrupt {kind} record: {exc}")


# -- one transition -----------------------------------------------------------------------


class RunTx(Generic[S]):
    """One transition of a run: the state as it changes and the effects to
    carry out, in order.  ``kind`` ("saga", "workflow") prefixes the audit
    types and names the definition in each audit detail; ``to_record``
    makes the record a Persist carries.  The state needs ``run_id``,
    ``spec.name``, ``steps`` (dataclasses with ``name`` and ``status``) and
    ``step(name)``."""

    __slots__ = ("_kind", "_to_record", "effects", "state")

    def __init__(self, state: S, kind: str, to_record: Callable[[S], dict[str, Any]]) -> None:
        self.state = state
        self.effects: list[Any] = []
        self._kind = kind
        self._to_record = to_record

    def set(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[type-var]

    def update(self, name: str, **changes: Any) -> None:
        """Change step ``name`` (NotFound if the run has no such step)."""
        st: Any = self.state
        st.step(name)
        steps = tuple(replace(s, **changes) if s.name == name else s for s in st.steps)
        self.state = replace(st, steps=steps)

    def persist(self, what: str) -> None:
        self.effects.append(Persist(what, self._to_record(self.state)))

    def audit(self, kind: str, step: str | None = None, **detail: Any) -> None:
        st: Any = self.state
        info: dict[str, Any] = {"run_id": st.run_id, self._kind: st.spec.name}
        if step is not None:
            info["step"] = step
        self.effects.append(Audit(f"{self._kind}.{kind}", info | detail))

    def stale(self, event: Any, step: str | None, why: str) -> None:
        """A report nobody waits for: audited, nothing else."""
        self.audit("stale_report", step, event=type(event).__name__, why=why)

    def first(self, status: Enum) -> Any:
        """The first step in ``status``, or None."""
        st: Any = self.state
        return next((s for s in st.steps if s.status is status), None)

    def send(self, name: str, started: Enum, attempt: int, effect: RunStep | RunCompensation,
             timer: str, what: str) -> None:
        """Persist step ``name`` as ``started`` (attempt ``attempt``), then
        send ``effect`` and arm its ``timer``; audited as ``what``."""
        attempt_field = "undo_attempt" if isinstance(effect, RunCompensation) else "attempt"
        self.update(name, status=started, due=None, **{attempt_field: attempt})
        self.persist(what)
        self.effects.append(effect)
        self.effects.append(ArmTimer(timer, name, attempt, effect.timeout_s))
        self.audit(what, name, attempt=attempt)

    def ask_approval(self, name: str, awaiting: Enum, attempt: int, timeout_s: float,
                     now: float, what: str, **detail: Any) -> None:
        """Step ``name`` (attempt ``attempt``: 2 once escalated) waits for a
        person's decision until ``now + timeout_s``: persisted, its timer
        armed, audited as ``what``."""
        self.update(name, status=awaiting, attempt=attempt, due=now + timeout_s)
        self.persist(what)
        self.arm_approval(name, attempt, timeout_s)
        self.audit(what, name, attempt=attempt, timeout_s=timeout_s, **detail)

    def arm_approval(self, name: str, attempt: int, left: float) -> None:
        """The timer of an approval's wait, ``left`` seconds from now (in turns
        of at most :data:`TIMER_MAX_S`)."""
        delay = min(max(0.0, left), TIMER_MAX_S)
        self.effects.append(ArmTimer(APPROVAL_TIMEOUT, name, attempt, delay))

    def awaiting(self, event: Decide) -> Any:
        """The step awaiting the decision ``event`` (Conflict if none does,
        or if ``event`` names another one)."""
        check_who(event)
        st: Any = self.state
        verb = "approve" if event.approve else "reject"
        step = next((s for s in st.steps if s.status.value == AWAITING_APPROVAL), None)
        if st.status.value != AWAITING_APPROVAL or step is None:
            raise Conflict(f"{self._kind} run {st.run_id!r} is {st.status.value}: "
                           f"no step awaits approval, nothing to {verb}")
        if event.step is not None and event.step != step.name:
            raise Conflict(f"{self._kind} run {st.run_id!r} awaits approval of step "
                           f"{step.name!r}, not {event.step!r}")
        return step

    def approval_timer(self, event: TimerFired) -> Any:
        """The awaiting step whose wait ``event`` ends, or None: stale, or one
        turn of a long wait (the rest is armed)."""
        st: Any = self.state
        if event.step is None or st.status.value != AWAITING_APPROVAL:
            return None
        step = st.step(event.step)
        if step.status.value != AWAITING_APPROVAL or step.attempt != event.attempt:
            return None
        if step.due is not None and event.now < step.due:
            self.arm_approval(step.name, step.attempt, step.due - event.now)
            return None
        return step

    def approval_timed_out(self, step: Any, awaiting: Enum, now: float) -> Decide | None:
        """The wait of undecided approval ``step`` ended.  ``on_timeout="escalate"``,
        the first time: an alert, and it waits once more as long (None).
        Else the rejection ``by: "timeout"`` the machine applies."""
        st: Any = self.state
        spec = st.spec.step(step.name)
        if spec.on_timeout == "escalate" and step.attempt == 1:
            self.ask_approval(step.name, awaiting, 2, spec.timeout_s, now, "approval_escalated",
                              severity="alert")
            return None
        self.audit("approval_timed_out", step.name, attempt=step.attempt,
                   timeout_s=spec.timeout_s)
        waited = spec.timeout_s * step.attempt
        return Decide(False, TIMED_OUT_BY, f"no decision within {waited:g}s", now)

    def message(self, step: str, attempt: int, key: str, **fields_: Any) -> dict[str, Any]:
        """The message a step's agent gets: the run's coordinates, then ``fields_``."""
        st: Any = self.state
        return {"run_id": st.run_id, "step": step, "attempt": attempt,
                "idempotency_key": key, **fields_}


Handlers = Mapping[type[Any], Callable[[Any, Any], None]]


def dispatch(handlers: Handlers, tx: RunTx[S], event: object, kind: str
             ) -> tuple[S, list[Any]]:
    """Run the handler of ``event``'s type on ``tx``: the new state and effects."""
    handler = handlers.get(type(event))
    if handler is None:
        raise InvalidRequest(f"not a {kind} event: {event!r}")
    handler(tx, event)
    return tx.state, tx.effects


def timer_kind(kinds: type[T], kind: str, machine: str) -> T:
    try:
        return kinds(kind)  # type: ignore[call-arg]
    except ValueError:
        raise InvalidRequest(f"unknown {machine} timer kind {kind!r}") from None


# -- what a shell needs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Machine:
    """A kind of durable run, as a shell drives it: ``handle`` events,
    rebuild from and render to records, tell a finished run (its shell
    exits), and the event that carries on a run rebuilt from its record."""

    kind: str
    handle: Callable[[Any, Any], tuple[Any, list[Any]]]
    from_record: Callable[[dict[str, Any]], Any]
    to_record: Callable[[Any], dict[str, Any]]
    final: frozenset[str]

    def is_final(self, state: Any) -> bool:
        return str(state.status.value) in self.final

    def carry_on(self, state: Any, now: float) -> Start | Recover:
        """``Start`` for a run created but never started, else ``Recover``."""
        return Start(now) if state.status.value == "pending" else Recover(now)
