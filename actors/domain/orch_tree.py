"""The orchestration supervisor's decisions about its children (pure).

Each child is the shell of one run (a saga's or a workflow's coordinator) or
of one pool.  A child that exits without having said its run is finished
crashed: it is restarted from its durable record ("let it crash"), unless it
crashed ``max_restarts`` times within ``window_s`` seconds; then the
supervisor gives up on it (the run stays as persisted, and a later restart
of naosd or ``resume`` carries it on).  Time is an argument."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Final

MAX_RESTARTS: Final = 5
WINDOW_S: Final = 30.0


class State(enum.StrEnum):
    STARTING = "starting"  # created, no pid yet
    RUNNING = "running"
    RESTARTING = "restarting"  # crashed, replacement created, no pid yet
    FINISHING = "finishing"  # its run is final: asked to exit


class Decision(enum.Enum):
    RESTART = "restart"
    GIVE_UP = "give_up"
    FORGET = "forget"  # it finished: nothing to do


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    kind: str  # "saga", "workflow" or "pool"
    state: State = State.STARTING
    pid: int | None = None
    restarts: int = 0
    crashes: tuple[float, ...] = ()  # times of recent crashes
    last_error: str = ""


def started(child: Child, pid: int) -> Child:
    state = child.state if child.state is State.FINISHING else State.RUNNING
    return replace(child, state=state, pid=pid)


def finishing(child: Child) -> Child:
    return replace(child, state=State.FINISHING)


def exited(child: Child, now: float, reason: str, *, max_restarts: int = MAX_RESTARTS,
           window_s: float = WINDOW_S) -> tuple[Child, Decision]:
    """The child's process is gone: forget it (finished), restart it, or give up."""
    if child.state is State.FINISHING:
        return replace(child, pid=None), Decision.FORGET
    crashes = (*[t for t in child.crashes if now - t < window_s], now)
    child = replace(child, pid=None, crashes=crashes, last_error=reason)
    if len(crashes) > max_restarts:
        return child, Decision.GIVE_UP
    return replace(child, state=State.RESTARTING, restarts=child.restarts + 1), Decision.RESTART


def node(child: Child) -> dict[str, Any]:
    """The child's node in the supervision tree."""
    out: dict[str, Any] = {"name": child.name, "kind": child.kind, "state": child.state.value,
                           "pid": child.pid, "restarts": child.restarts, "children": []}
    if child.last_error:
        out["last_error"] = child.last_error
    return out
