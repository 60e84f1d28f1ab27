"""Events and effects that sagas and workflows share (pure, picklable).

Both run their steps in order through agents: the same reports come back
(started, succeeded, failed, timed out), the same Recover arrives after a
daemon restart, and both ask their shell to Persist a record before the
next effect and to write Audit rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
