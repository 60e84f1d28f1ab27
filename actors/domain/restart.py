"""Restart decisions of a supervisor, as pure functions.

The supervisor actor keeps one :class:`ChildStatus` per logical child name and
feeds it events (child reported its pid, child exited, stop requested); these
functions return the new status and, on exit, what to do. Only ``one_for_one``
with unlimited immediate restarts exists today; strategies (one_for_all,
rest_for_one) and restart intensity (max restarts per period, then escalate)
grow here.

Thespian's ``ChildActorExited`` carries no exit reason, so a crash and a normal
exit look the same: a child that was not asked to stop is restarted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any


class ChildState(enum.StrEnum):
    STARTING = "starting"  # created, has not reported its pid yet
    RUNNING = "running"  # reported its pid
    RESTARTING = "restarting"  # exited, replacement created, no pid yet
    STOPPED = "stopped"  # asked to stop; never restarted


class Decision(enum.Enum):
    RESTART = "restart"
    LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """What a supervisor knows about one child, keyed by its logical name."""

    name: str
    kind: str
    state: ChildState = ChildState.STARTING
    pid: int | None = None
    restarts: int = 0

    def to_node(self) -> dict[str, Any]:
        """The JSON-able tree node of this child (a leaf)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "children": [],
        }


def on_started(child: ChildStatus, pid: int) -> ChildStatus:
    """The child reported its pid: it is serving (unless already stopped)."""
    if child.state is ChildState.STOPPED:
        return replace(child, pid=pid)
    return replace(child, state=ChildState.RUNNING, pid=pid)


def on_exit(child: ChildStatus) -> tuple[ChildStatus, Decision]:
    """The child's process is gone: restart it unless it was stopped."""
    if child.state is ChildState.STOPPED:
        return replace(child, pid=None), Decision.LEAVE
    restarted = replace(child, state=ChildState.RESTARTING, pid=None, restarts=child.restarts + 1)
    return restarted, Decision.RESTART


def on_stop(child: ChildStatus) -> ChildStatus:
    """A stop was requested: whatever happens next, do not restart."""
    return replace(child, state=ChildState.STOPPED)
