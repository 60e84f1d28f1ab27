"""Schedules: what fires, when, and what a late start does about missed times
(pure; stdlib + naosd.errors).

A schedule names a target (a saga, a workflow or an agent), its input, and
when: a cron expression (``actors/domain/cron.py``, UTC, to the minute) or,
as a testing aid only, ``every_s`` seconds (slots at whole multiples of it
since the epoch).  The times it names are its *slots*; naosd keeps the next
one due (``next_due``) with each schedule and, on every firing, the slot it
fired and the next one, in the transaction that starts the run, so a restart
neither fires a slot twice nor forgets one that was due.

:func:`plan` is the whole decision, with the clock as an argument: at
``now``, given ``next_due``, which slots fire and which were missed.  Slots
are missed when naosd was not running (or busy) at their time.  The
schedule's ``missed`` policy says what happens then:

- ``skip``: the missed slots collapse into one firing now, for the newest of
  them; the older ones are skipped (and audited as such).
- ``catch-up``: every missed slot fires, oldest first, at most
  :data:`CATCH_UP_MAX` of the newest; older ones than that are skipped.

On time (one slot due) both fire that slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Protocol

from actors.domain import cron
from actors.domain.definitions import validate_name
from naosd.errors import InvalidRequest

TARGETS: Final = ("saga", "workflow", "agent")
MISSED: Final = ("skip", "catch-up")
CATCH_UP_MAX: Final = 100  # slots one late start fires at most (the newest ones)
EVERY_MAX_S: Final = 366 * 86400
AGENT_TIMEOUT_MAX_S: Final = 86400.0
_BEFORE: Final = 0.5  # a slot is a whole second (cron: a whole minute); just before one


class Timing(Protocol):
    def next_after(self, epoch: float) -> float: ...

    def previous(self, epoch: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Every:
    """Slots every ``seconds`` (a testing aid: ``schedule add --every``)."""

    seconds: int

    def next_after(self, epoch: float) -> float:
        return float((math.floor(epoch / self.seconds) + 1) * self.seconds)

    def previous(self, epoch: float) -> float:
        return float(math.floor(epoch / self.seconds) * self.seconds)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule as stored: exactly one of ``cron`` and ``every_s``."""

    name: str
    target_kind: str
    target: str
    input: Any = None
    cron: str | None = None
    every_s: int | None = None
    missed: str = "skip"
    timeout_s: float = 60.0  # an agent target: how long its call may take

    def __post_init__(self) -> None:
        validate_name(self.name, "schedule")
        if self.target_kind not in TARGETS:
            raise InvalidRequest(f"a schedule runs a saga, a workflow or an agent, "
                                 f"not a {self.target_kind!r}")
        validate_name(self.target, self.target_kind)
        if (self.cron is None) == (self.every_s is None):
            raise InvalidRequest("give a schedule either a cron expression or --every seconds")
        if self.cron is not None:
            object.__setattr__(self, "cron", cron.parse(self.cron).text)
        elif isinstance(self.every_s, bool) or not isinstance(self.every_s, int) or not (
                1 <= self.every_s <= EVERY_MAX_S):
            raise InvalidRequest(f"every must be a whole number of seconds from 1 to "
                                 f"{EVERY_MAX_S}, got {self.every_s!r}")
        if self.missed not in MISSED:
            raise InvalidRequest(f"missed must be skip or catch-up, got {self.missed!r}")
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                0 < timeout <= AGENT_TIMEOUT_MAX_S):
            raise InvalidRequest(f"timeout must be more than 0 and at most "
                                 f"{AGENT_TIMEOUT_MAX_S:g} seconds, got {timeout!r}")

    @property
    def timing(self) -> Timing:
        return cron.parse(self.cron) if self.cron is not None else Every(int(self.every_s or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target_kind": self.target_kind, "target": self.target,
                "input": self.input, "cron": self.cron, "every_s": self.every_s,
                "missed": self.missed, "timeout_s": self.timeout_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSpec:
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidRequest(f"corrupt schedule: {exc}") from None


@dataclass(frozen=True, slots=True)
class Firing:
    """What is due at a moment: ``slots`` to fire (oldest first), the
    ``skipped`` slots not fired (first and last, or None) and ``next_due``,
    the first slot after the moment."""

    slots: tuple[float, ...]
    skipped: tuple[float, float] | None
    next_due: float


def first_due(spec: ScheduleSpec, now: float) -> float:
    """A new schedule's first slot: the first after ``now``."""
    return spec.timing.next_after(now)


def plan(spec: ScheduleSpec, next_due: float, now: float, limit: int = CATCH_UP_MAX
         ) -> Firing:
    """What fires at ``now`` when ``next_due`` is the first slot not fired yet."""
    if now < next_due:
        return Firing((), None, next_due)
    timing = spec.timing
    keep = 1 if spec.missed == "skip" else limit
    slots = [timing.previous(now)]  # the newest due slot: >= next_due
    while len(slots) < keep:
        earlier = timing.previous(slots[0] - _BEFORE)
        if earlier < next_due:
            break
        slots.insert(0, earlier)
    skipped = None
    if slots[0] > next_due:
        skipped = (next_due, timing.previous(slots[0] - _BEFORE))
    return Firing(tuple(slots), skipped, timing.next_after(now))
