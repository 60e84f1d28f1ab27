"""Events and effects that sagas and workflows share (pure, picklable).

Both run their steps in order through agents: the same reports come back
(started, succeeded, failed, timed out), the same Recover arrives after a
daemon restart, and both ask their shell to Persist a record before the
next effect and to write Audit rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

S = TypeVar("S")


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
class Recover:
    """After a daemon restart: carry on from the persisted record."""

    now: float


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``record`` (a full ``to_record``) before sending the effects after it."""

    what: str
    record: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Audit:
    type: str
    detail: dict[str, Any] = field(hash=False)


class RunTx(Generic[S]):
    """One transition of a run: the state as it changes and the effects to
    carry out, in order.  ``kind`` ("saga", "workflow") prefixes the audit
    types and names the definition in each audit detail; ``to_record``
    makes the record a Persist carries.  The state needs ``run_id``,
    ``spec.name``, ``steps`` (dataclasses with ``name``) and ``step(name)``."""

    __slots__ = ("_kind", "_to_record", "effects", "state")

    def __init__(self, state: S, kind: str, to_record: Callable[[S], dict[str, Any]]) -> None:
        self.state = state
        self.effects: list[Any] = []
        self._kind = kind
        self._to_record = to_record

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
