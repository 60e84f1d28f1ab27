"""The transaction every supervision handler works through, and the driver of
multi-step operations (pure; part of :mod:`actors.domain.supervision`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from actors.domain.supervision_types import (
    DOWN,
    TIMER_SLACK_S,
    Audit,
    ChildRun,
    ChildState,
    Effect,
    GiveUp,
    Start,
    Stop,
    SupState,
    SupStatus,
)
from naosd.errors import Conflict


class Tx:
    """One event being applied: the evolving frozen state plus the effects so far.

    ``handle`` hands out ``tx.state`` only when the handler returns, so a handler
    that raises halfway leaves the caller with the state it passed in.
    """

    __slots__ = ("effects", "state")

    def __init__(self, state: SupState) -> None:
        self.state = state
        self.effects: list[Effect] = []

    def require(self, action: str, *allowed: SupStatus) -> None:
        if self.state.status not in allowed:
            raise Conflict(
                f"supervisor {self.state.spec.name!r} is {self.state.status}: cannot {action}"
            )

    def child(self, name: str) -> ChildState:
        return self.state.child(name)

    def kind(self, name: str) -> str:
        return self.state.spec.child(name).kind

    def update(self, name: str, **changes: Any) -> None:
        children = tuple(
            replace(c, **changes) if c.name == name else c for c in self.state.children
        )
        self.state = replace(self.state, children=children)

    def set_pending(self, **changes: Any) -> None:
        self.state = replace(self.state, pending=replace(self.state.pending, **changes))

    def drop_start(self, name: str) -> None:
        self.set_pending(starts=tuple(n for n in self.state.pending.starts if n != name))

    def in_order(self, names: Iterable[str], *, reverse: bool = False) -> tuple[str, ...]:
        wanted = set(names)
        ordered = [c.name for c in self.state.children if c.name in wanted]
        return tuple(reversed(ordered)) if reverse else tuple(ordered)

    def audit(self, verb: str, name: str | None = None, **detail: Any) -> None:
        verbs = self.state.spec.audit_verbs
        if verbs is not None and verb not in verbs:
            return
        info: dict[str, Any] = {"supervisor": self.state.spec.name}
        kind = "supervisor"
        if name is not None:
            kind = self.kind(name)
            info["name"] = name
        self.effects.append(Audit(f"{kind}.{verb}", info | detail))

    def start(self, name: str) -> None:
        """A new incarnation of ``name``: its reports from now on are this process's."""
        child = self.child(name)
        self.update(
            name,
            run=ChildRun.STARTING,
            deadline=None,
            incarnation=child.incarnation + 1,
            notice=None,
            respawn=False,
        )
        self.effects.append(Start(name))

    def stop(self, name: str, now: float) -> None:
        timeout = self.state.spec.child(name).shutdown_timeout_s
        self.update(name, run=ChildRun.STOPPING, deadline=now + timeout)
        self.effects.append(Stop(name, timeout))

    def settle(self, name: str) -> None:
        """Put a child that just went down where it belongs; no restart decision."""
        child, status = self.child(name), self.state.status
        if status is SupStatus.FAILED:
            run = ChildRun.FAILED
        elif status is SupStatus.STOPPING:
            run = ChildRun.STOPPED
        elif child.paused:
            run = ChildRun.PAUSED
        elif name in self.state.pending.starts:
            run = ChildRun.RESTARTING  # part of a sibling's restart
        else:
            run = ChildRun.STOPPED
        if run is not ChildRun.RESTARTING:
            self.drop_start(name)
            self.update(name, recovering=False)
        self.update(name, run=run)

    def remove(self, name: str) -> None:
        """Forget child ``name`` (it is down and out of every queue)."""
        self.drop_start(name)
        self.audit("removed", name)
        kept = tuple(c for c in self.state.spec.children if c.name != name)
        self.state = replace(
            self.state,
            spec=replace(self.state.spec, children=kept),
            children=tuple(c for c in self.state.children if c.name != name),
        )

    def after_down(self, name: str) -> None:
        """A child that is down for now: removed if it is retiring, started
        again if it was wanted back while it was stopping."""
        child = self.state.find(name)
        if child is None or child.run not in DOWN:
            return
        if child.retiring:
            self.remove(name)
        elif child.respawn and child.run is ChildRun.STOPPED:
            if self.state.status is SupStatus.RUNNING:
                self.update(name, crashes=0)
                self.start(name)
            else:
                self.update(name, respawn=False)


def current(child: ChildState, incarnation: int | None) -> bool:
    """Does a report tagged ``incarnation`` come from the child's current process?"""
    return incarnation is None or incarnation == child.incarnation


# -- driving multi-step operations ----------------------------------------------------


def advance(tx: Tx, now: float) -> None:
    """Take the next step of the pending operation, or finish it."""
    stops = tx.state.pending.stops
    if stops:
        if tx.child(stops[0]).run is not ChildRun.STOPPING:
            tx.stop(stops[0], now)
        return
    drive_starts(tx)
    _finish(tx)


def drive_starts(tx: Tx) -> None:
    """Start the next queued child once every stop is done and no backoff holds the group."""
    pending = tx.state.pending
    if pending.stops or not pending.starts:
        return
    if any(armed(tx.child(name)) for name in pending.starts):
        return
    if tx.child(pending.starts[0]).run is not ChildRun.STARTING:
        tx.start(pending.starts[0])


def _finish(tx: Tx) -> None:
    if tx.state.status is SupStatus.STOPPING:
        tx.state = replace(tx.state, status=SupStatus.STOPPED)
        tx.audit("shut_down")
    elif tx.state.pending.give_up:
        tx.effects.append(GiveUp(tx.state.pending.give_up))
        tx.set_pending(give_up="")


def armed(child: ChildState) -> bool:
    return child.run is ChildRun.RESTARTING and child.deadline is not None


def due(child: ChildState | None, run: ChildRun, now: float) -> bool:
    if child is None or child.run is not run or child.deadline is None:
        return False
    return now >= child.deadline - TIMER_SLACK_S
