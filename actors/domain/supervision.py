"""Erlang/OTP supervisor semantics as a pure state machine (stdlib + naosd.errors only).

Over 600 lines on purpose: the specs, events and effects are the contract the
actor shell imports together with ``handle``; move the dataclasses to a sibling
module if this grows.

A supervisor actor shell keeps one :class:`SupState`, feeds every message it
gets to :func:`handle` as an event and performs the effects it gets back, in
order. Nothing here imports Thespian, reads a clock or does I/O: time is the
``now`` float of each event, and timers are effects the shell arms.

Events: ``Boot``, ``ChildStarted``, ``ChildExited``, ``StopChild``,
``StartChild``, ``AddChild``, ``RemoveChild``, ``Pause``, ``Resume``,
``BackoffElapsed``, ``Shutdown``, ``StopTimeout``, ``CrashReported``.
Effects: ``Start``, ``Stop`` (arm a ``StopTimeout`` timer), ``Kill``,
``Schedule`` (arm a ``BackoffElapsed`` timer), ``GiveUp`` (escalate to the
parent as an abnormal exit), ``Audit``.

Audit types. ``<kind>`` is the child's kind, ``agent`` or ``supervisor``; every
detail holds ``supervisor`` (this supervisor's name) and, for child events,
``name``:
``<kind>.started`` (pid, restarts), ``<kind>.stopped`` (exit we asked for, or
a pending start cancelled; reason), ``<kind>.crashed`` (abnormal exit we did
not ask for; reason), ``<kind>.exited`` (normal exit we did not ask for;
reason), ``<kind>.restarted`` (a restart was decided; restarts, delay_s,
cause), ``<kind>.killed`` (timeout_s), ``<kind>.added`` (restart),
``<kind>.removed``, ``<kind>.paused``, ``<kind>.resumed``;
``supervisor.booted``, ``supervisor.shutting_down``, ``supervisor.shut_down``,
``supervisor.gave_up`` (reason, child), ``<kind>.crash_reported`` (reason: why
the last exit happened, reported after it).

Multi-step operations live in :class:`Pending` and run one child at a time, as
OTP does: children are stopped in reverse start order, each after the previous
one has exited, then started in start order, each after the previous one has
reported its pid (``Boot`` too). Decisions where OTP is silent or differs:

- Intensity counts restart decisions (one per crash, however many siblings a
  group restart touches) with OTP's inclusive window: kept if ``now - t <= window_s``.
- GiveUp is emitted once every child is down, not when the decision is taken,
  so the parent never runs a replacement beside our last children.
- A sibling that dies on its own while queued to be stopped for a group
  restart is absorbed (restarted with the group, not counted again).
- A group restart restarts only siblings that were up (or already queued) and
  are not temporary; children the operator stopped stay down, and a paused
  sibling is stopped and stays down (PAUSED) unless resumed before it exits.
- A backoff delays the whole group: nobody starts until the crashed child's
  timer fires. The backoff streak restarts at 1 after a run of ``window_s``.
- A child that fails while starting (also during ``Boot``) is an ordinary crash;
  OTP would fail the whole supervisor at boot.
- ``Pause`` never stops a child; it only stops restarts. ``StopChild`` clears
  the pause (the operator wins); ``StartChild`` of a paused child is refused.
- A child's reason can arrive after its exit (a remote agent's exit notice comes
  from its node's admin, on another connection): ``CrashReported`` then makes it
  the ``last_error`` of a child whose last exit had none; the restart decision,
  taken at the exit, stands.
- Timer events are never errors: a ``BackoffElapsed`` or ``StopTimeout`` that no
  longer matches an armed deadline is ignored, because the shell cannot cancel
  timers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias, TypeVar

from actors.domain.definitions import validate_name
from naosd.errors import Conflict, InvalidRequest, NotFound

CHILD_KINDS: Final = ("agent", "supervisor")
TIMER_SLACK_S: Final = 1e-3  # a timer may fire this early (float rounding) and still count
_MAX_DOUBLINGS: Final = 64  # 2.0 ** 1024 overflows; the cap is reached long before


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(enum.StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted; its spec stays, it ends "stopped"


class ChildRun(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"  # Start sent, pid not reported yet
    RUNNING = "running"
    STOPPING = "stopping"  # Stop (maybe Kill) sent, exit not reported yet
    RESTARTING = "restarting"  # down; waiting for its backoff or for siblings to stop
    FAILED = "failed"  # down because the whole supervisor gave up
    PAUSED = "paused"  # down, and not restarted until resumed


class SupStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"  # Shutdown: stopping children, then STOPPED
    STOPPED = "stopped"
    FAILED = "failed"  # gave up; children are stopped, then GiveUp is emitted


UP: Final = frozenset({ChildRun.STARTING, ChildRun.RUNNING, ChildRun.STOPPING})
_E = TypeVar("_E", bound=enum.StrEnum)


def _coerce(kind: type[_E], value: object, what: str) -> _E:
    try:
        return kind(str(value).replace("-", "_"))
    except ValueError:
        options = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"invalid {what} {value!r}: use one of {options}") from None


def _check_seconds(value: object, what: str, *, zero_ok: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    else:
        ok = math.isfinite(value) and (value > 0 or (zero_ok and value == 0))
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidRequest(f"{what} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child as declared: ``kind`` is "agent" or "supervisor"."""

    name: str
    kind: str
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        validate_name(self.name, "child")
        if self.kind not in CHILD_KINDS:
            raise InvalidRequest(f"invalid child kind {self.kind!r}: use agent or supervisor")
        object.__setattr__(self, "restart", _coerce(RestartType, self.restart, "restart type"))
        _check_seconds(self.shutdown_timeout_s, "shutdown_timeout_s")


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor as declared; children are listed in start order."""

    name: str
    strategy: Strategy
    max_restarts: int = 3
    window_s: float = 5.0
    backoff_initial_s: float = 0.0
    backoff_max_s: float = 0.0
    children: tuple[ChildSpec, ...] = ()

    def __post_init__(self) -> None:
        validate_name(self.name, "supervisor")
        object.__setattr__(self, "strategy", _coerce(Strategy, self.strategy, "strategy"))
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool):
            raise InvalidRequest(f"max_restarts must be an integer, got {self.max_restarts!r}")
        if self.max_restarts < 0:
            raise InvalidRequest(f"max_restarts must be >= 0, got {self.max_restarts}")
        _check_seconds(self.window_s, "window_s", zero_ok=False)
        _check_seconds(self.backoff_initial_s, "backoff_initial_s")
        _check_seconds(self.backoff_max_s, "backoff_max_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise InvalidRequest("backoff_max_s must be >= backoff_initial_s")
        object.__setattr__(self, "children", tuple(self.children))
        _check_children(self.children)

    def child(self, name: str) -> ChildSpec:
        """The spec of child ``name`` (raises NotFound)."""
        for spec in self.children:
            if spec.name == name:
                return spec
        raise NotFound(f"supervisor {self.name!r} has no child {name!r}")


def _check_children(children: tuple[object, ...]) -> None:
    seen: set[str] = set()
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise InvalidRequest(f"children must be ChildSpec values, got {spec!r}")
        if spec.name in seen:
            raise InvalidRequest(f"duplicate child name {spec.name!r}")
        seen.add(spec.name)


@dataclass(frozen=True, slots=True)
class ChildState:
    """What the supervisor knows about one child right now."""

    name: str
    run: ChildRun = ChildRun.STOPPED
    restarts: int = 0
    pid: int | None = None
    last_error: str = ""
    started_at: float | None = None
    paused: bool = False  # budget pause: never restarted while set
    crashes: int = 0  # consecutive exits that led to a restart: the backoff exponent
    deadline: float | None = None  # when its armed timer is due (backoff or stop timeout)


@dataclass(frozen=True, slots=True)
class Pending:
    """The multi-step operation in progress (empty when there is none)."""

    stops: tuple[str, ...] = ()  # stopped one at a time, head first (reverse start order)
    starts: tuple[str, ...] = ()  # started one at a time once ``stops`` is empty
    give_up: str = ""  # reason for the GiveUp effect, emitted once every child is down


@dataclass(frozen=True, slots=True)
class SupState:
    """A supervisor's whole state; ``children`` is in start order."""

    spec: SupervisorSpec
    status: SupStatus = SupStatus.STOPPED
    children: tuple[ChildState, ...] = ()
    restart_log: tuple[float, ...] = ()  # restart times inside the intensity window
    pending: Pending = Pending()
    restarts: int = 0  # restart decisions taken since initial()

    def child(self, name: str) -> ChildState:
        """The state of child ``name`` (raises NotFound)."""
        for child in self.children:
            if child.name == name:
                return child
        raise NotFound(f"supervisor {self.spec.name!r} has no child {name!r}")


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    now: float


@dataclass(frozen=True, slots=True)
class ChildStarted:
    name: str
    pid: int
    now: float


@dataclass(frozen=True, slots=True)
class ChildExited:
    name: str
    abnormal: bool
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class StopChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class StartChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class AddChild:
    spec: ChildSpec
    now: float


@dataclass(frozen=True, slots=True)
class RemoveChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class Pause:
    name: str


@dataclass(frozen=True, slots=True)
class Resume:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class BackoffElapsed:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class Shutdown:
    now: float


@dataclass(frozen=True, slots=True)
class StopTimeout:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class CrashReported:
    """Why child ``name`` exited, arriving after its ``ChildExited`` (the shell
    feeds it only from the incarnation that exited last, and only when that
    exit came without a reason, i.e. ``ChildExited.reason`` was ``unexplained``)."""

    name: str
    reason: str
    unexplained: str


Event: TypeAlias = (
    Boot
    | ChildStarted
    | ChildExited
    | StopChild
    | StartChild
    | AddChild
    | RemoveChild
    | Pause
    | Resume
    | BackoffElapsed
    | Shutdown
    | StopTimeout
    | CrashReported
)


# -- effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    name: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Kill:
    name: str


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


@dataclass(frozen=True, slots=True)
class Audit:
    type: str
    detail: dict[str, Any]


Effect: TypeAlias = Start | Stop | Kill | Schedule | GiveUp | Audit


# -- public functions -----------------------------------------------------------------


def initial(spec: SupervisorSpec) -> SupState:
    """A stopped supervisor with every child stopped; ``Boot`` starts it."""
    return SupState(spec=spec, children=tuple(ChildState(c.name) for c in spec.children))


def handle(state: SupState, event: Event) -> tuple[SupState, list[Effect]]:
    """Apply ``event``: the new state and the effects the shell must perform, in order.

    Raises:
        NotFound: the event names a child this supervisor does not have.
        Conflict: the event is not allowed in the current state (``state`` is unchanged).
        InvalidRequest: ``event`` is not an event.
    """
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise InvalidRequest(f"not a supervision event: {event!r}")
    tx = _Tx(state)
    handler(tx, event)
    return tx.state, tx.effects


def backoff_delay(spec: SupervisorSpec, crashes: int) -> float:
    """Delay before restarting a child after its ``crashes``-th consecutive exit."""
    if spec.backoff_initial_s <= 0:
        return 0.0
    doublings = min(max(crashes - 1, 0), _MAX_DOUBLINGS)
    return min(spec.backoff_initial_s * 2.0**doublings, spec.backoff_max_s)


def tree_node(state: SupState) -> dict[str, Any]:
    """The JSON-able tree node of this supervisor and its children."""
    return {
        "name": state.spec.name,
        "kind": "supervisor",
        "strategy": state.spec.strategy.value,
        "state": state.status.value,
        "restarts": state.restarts,
        "children": [_child_node(state, child) for child in state.children],
    }


def _child_node(state: SupState, child: ChildState) -> dict[str, Any]:
    return {
        "name": child.name,
        "kind": state.spec.child(child.name).kind,
        "state": child.run.value,
        "pid": child.pid,
        "restarts": child.restarts,
        "last_error": child.last_error,
        "paused": child.paused,
        "started_at": child.started_at,  # the ``now`` of ChildStarted (monotonic)
    }


# -- the transaction all handlers work through ----------------------------------------


class _Tx:
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
        info: dict[str, Any] = {"supervisor": self.state.spec.name}
        kind = "supervisor"
        if name is not None:
            kind = self.state.spec.child(name).kind
            info["name"] = name
        self.effects.append(Audit(f"{kind}.{verb}", info | detail))

    def start(self, name: str) -> None:
        self.update(name, run=ChildRun.STARTING, deadline=None)
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
        self.update(name, run=run)


# -- driving multi-step operations ----------------------------------------------------


def _advance(tx: _Tx, now: float) -> None:
    """Take the next step of the pending operation, or finish it."""
    stops = tx.state.pending.stops
    if stops:
        if tx.child(stops[0]).run is not ChildRun.STOPPING:
            tx.stop(stops[0], now)
        return
    _drive_starts(tx)
    _finish(tx)


def _drive_starts(tx: _Tx) -> None:
    """Start the next queued child once every stop is done and no backoff holds the group."""
    pending = tx.state.pending
    if pending.stops or not pending.starts:
        return
    if any(_armed(tx.child(name)) for name in pending.starts):
        return
    if tx.child(pending.starts[0]).run is not ChildRun.STARTING:
        tx.start(pending.starts[0])


def _finish(tx: _Tx) -> None:
    if tx.state.status is SupStatus.STOPPING:
        tx.state = replace(tx.state, status=SupStatus.STOPPED)
        tx.audit("shut_down")
    elif tx.state.pending.give_up:
        tx.effects.append(GiveUp(tx.state.pending.give_up))
        tx.set_pending(give_up="")


def _armed(child: ChildState) -> bool:
    return child.run is ChildRun.RESTARTING and child.deadline is not None


def _due(child: ChildState | None, run: ChildRun, now: float) -> bool:
    if child is None or child.run is not run or child.deadline is None:
        return False
    return now >= child.deadline - TIMER_SLACK_S


def _find(state: SupState, name: str) -> ChildState | None:
    return next((c for c in state.children if c.name == name), None)


# -- supervisor lifecycle -------------------------------------------------------------


def _on_boot(tx: _Tx, ev: Boot) -> None:
    tx.require("boot", SupStatus.STOPPED)
    tx.state = replace(tx.state, status=SupStatus.RUNNING, restart_log=(), pending=Pending())
    tx.audit("booted")
    for child in tx.state.children:
        run = ChildRun.PAUSED if child.paused else ChildRun.STOPPED
        tx.update(child.name, run=run, crashes=0)
    queue = (c.name for c in tx.state.children if not c.paused)
    tx.set_pending(starts=tx.in_order(queue))
    _advance(tx, ev.now)


def _on_shutdown(tx: _Tx, ev: Shutdown) -> None:
    tx.require("shut down", SupStatus.RUNNING)
    for child in tx.state.children:
        if child.run is ChildRun.RESTARTING:  # cancel the restart
            tx.update(child.name, run=ChildRun.STOPPED, deadline=None)
    up = (c.name for c in tx.state.children if c.run in UP)
    tx.state = replace(
        tx.state, status=SupStatus.STOPPING, pending=Pending(stops=tx.in_order(up, reverse=True))
    )
    tx.audit("shutting_down")
    _advance(tx, ev.now)


def _give_up(tx: _Tx, name: str, ev: ChildExited) -> None:
    spec = tx.state.spec
    reason = (
        f"child {name!r} exited ({ev.reason or 'no reason'}): more than "
        f"{spec.max_restarts} restarts in {spec.window_s:g}s"
    )
    for child in tx.state.children:
        if child.run not in UP:
            tx.update(child.name, run=ChildRun.FAILED, deadline=None)
    up = tx.in_order((c.name for c in tx.state.children if c.run in UP), reverse=True)
    tx.state = replace(tx.state, status=SupStatus.FAILED, pending=Pending(up, (), reason))
    tx.audit("gave_up", reason=reason, child=name)


# -- reports from children ------------------------------------------------------------


def _on_started(tx: _Tx, ev: ChildStarted) -> None:
    child = tx.child(ev.name)
    if child.run is ChildRun.STOPPING:  # asked to stop before it reported: keep stopping
        tx.update(ev.name, pid=ev.pid)
        return
    if child.run is not ChildRun.STARTING:
        raise Conflict(f"child {ev.name!r} is {child.run}: no start was pending")
    tx.update(ev.name, run=ChildRun.RUNNING, pid=ev.pid, started_at=ev.now)
    if ev.name not in tx.state.pending.stops:  # else: to be stopped, then started again
        tx.drop_start(ev.name)
    tx.audit("started", ev.name, pid=ev.pid, restarts=child.restarts)
    _advance(tx, ev.now)


def _on_exited(tx: _Tx, ev: ChildExited) -> None:
    child = tx.child(ev.name)
    if child.run not in UP:
        raise Conflict(f"child {ev.name!r} is {child.run}: it has no process to exit")
    error = ev.reason if ev.abnormal else child.last_error
    tx.update(
        ev.name, run=ChildRun.STOPPED, pid=None, started_at=None, deadline=None, last_error=error
    )
    in_stops = ev.name in tx.state.pending.stops
    tx.set_pending(stops=tuple(n for n in tx.state.pending.stops if n != ev.name))
    if child.run is ChildRun.STOPPING:  # we asked for this exit: not a crash
        tx.audit("stopped", ev.name, reason=ev.reason)
        tx.settle(ev.name)
    elif in_stops or tx.state.status is not SupStatus.RUNNING:
        # It died on its own while we were about to stop it anyway: absorbed, not counted.
        tx.audit("crashed" if ev.abnormal else "exited", ev.name, reason=ev.reason)
        tx.settle(ev.name)
    else:
        tx.audit("crashed" if ev.abnormal else "exited", ev.name, reason=ev.reason)
        _on_crash(tx, child, ev)
    _advance(tx, ev.now)


def _on_crash_reported(tx: _Tx, ev: CrashReported) -> None:
    child = tx.child(ev.name)
    if child.last_error != ev.unexplained:
        return  # a later exit has its own reason by now: keep it
    tx.update(ev.name, last_error=ev.reason)
    tx.audit("crash_reported", ev.name, reason=ev.reason)


def _wants_restart(restart: RestartType, abnormal: bool) -> bool:
    if restart is RestartType.PERMANENT:
        return True
    return abnormal and restart is RestartType.TRANSIENT


def _on_crash(tx: _Tx, before: ChildState, ev: ChildExited) -> None:
    """An exit we did not ask for, while running: restart, or not, or give up."""
    spec = tx.state.spec
    if before.paused or not _wants_restart(spec.child(ev.name).restart, ev.abnormal):
        tx.drop_start(ev.name)
        tx.settle(ev.name)
        return
    log = (*(t for t in tx.state.restart_log if ev.now - t <= spec.window_s), ev.now)
    tx.state = replace(tx.state, restart_log=log)
    if len(log) > spec.max_restarts:
        _give_up(tx, ev.name, ev)
        return
    tx.state = replace(tx.state, restarts=tx.state.restarts + 1)
    ran_long = before.started_at is not None and ev.now - before.started_at >= spec.window_s
    crashes = 1 if ran_long else before.crashes + 1
    delay = backoff_delay(spec, crashes)
    tx.update(
        ev.name,
        run=ChildRun.RESTARTING,
        crashes=crashes,
        restarts=before.restarts + 1,
        deadline=ev.now + delay if delay > 0 else None,
    )
    tx.audit("restarted", ev.name, restarts=before.restarts + 1, delay_s=delay, cause=ev.name)
    if delay > 0:
        tx.effects.append(Schedule(ev.name, delay))
    if spec.strategy is not Strategy.ONE_FOR_ONE:
        _restart_group(tx, ev.name)
    elif delay == 0 and ev.name not in tx.state.pending.starts:
        tx.start(ev.name)


def _restart_group(tx: _Tx, crashed: str) -> None:
    """one_for_all / rest_for_one: stop the rest of the group, restart it in order."""
    names = [c.name for c in tx.state.children]
    group = names
    if tx.state.spec.strategy is Strategy.REST_FOR_ONE:
        group = names[names.index(crashed) :]
    stops, starts = set(tx.state.pending.stops), set(tx.state.pending.starts) | {crashed}
    for name in group:
        child = tx.child(name)
        if child.run in UP:
            stops.add(name)
        if name not in starts and _joins_restart(tx, child):
            starts.add(name)
            tx.update(name, restarts=child.restarts + 1)
            tx.audit("restarted", name, restarts=child.restarts + 1, delay_s=0.0, cause=crashed)
    tx.set_pending(stops=tx.in_order(stops, reverse=True), starts=tx.in_order(starts))


def _joins_restart(tx: _Tx, child: ChildState) -> bool:
    """A sibling is restarted if it is up by our choice and not temporary.

    A paused one joins too: ``settle`` parks it as PAUSED when it exits, unless
    it was resumed in between.
    """
    if child.run not in (ChildRun.STARTING, ChildRun.RUNNING):
        return False
    return tx.state.spec.child(child.name).restart is not RestartType.TEMPORARY


# -- timers ---------------------------------------------------------------------------


def _on_backoff(tx: _Tx, ev: BackoffElapsed) -> None:
    if not _due(_find(tx.state, ev.name), ChildRun.RESTARTING, ev.now):
        return  # stale timer
    tx.update(ev.name, deadline=None)
    if ev.name in tx.state.pending.starts:
        _advance(tx, ev.now)
    else:
        tx.start(ev.name)


def _on_stop_timeout(tx: _Tx, ev: StopTimeout) -> None:
    if not _due(_find(tx.state, ev.name), ChildRun.STOPPING, ev.now):
        return  # stale timer: it exited, or was stopped again later
    tx.update(ev.name, deadline=None)
    tx.effects.append(Kill(ev.name))
    tx.audit("killed", ev.name, timeout_s=tx.state.spec.child(ev.name).shutdown_timeout_s)


# -- operator commands ----------------------------------------------------------------


def _on_stop_child(tx: _Tx, ev: StopChild) -> None:
    tx.require("stop children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    live = child.run in (ChildRun.STARTING, ChildRun.RUNNING)
    waiting = ev.name in tx.state.pending.starts or child.run in (
        ChildRun.RESTARTING,
        ChildRun.PAUSED,
    )
    if not live and not waiting:
        raise Conflict(f"child {ev.name!r} is {child.run}: nothing to stop")
    tx.drop_start(ev.name)
    tx.update(ev.name, paused=False)  # the operator's stop wins over a budget pause
    if live:
        tx.stop(ev.name, ev.now)
    elif child.run is not ChildRun.STOPPING:  # down: cancel its pending (re)start
        tx.update(ev.name, run=ChildRun.STOPPED, deadline=None)
        tx.audit("stopped", ev.name, reason="pending start cancelled")
    _advance(tx, ev.now)


def _on_start_child(tx: _Tx, ev: StartChild) -> None:
    tx.require("start children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if child.paused:
        raise Conflict(f"child {ev.name!r} is paused: resume it instead")
    if child.run is not ChildRun.STOPPED or ev.name in tx.state.pending.starts:
        where = "queued to start" if child.run is ChildRun.STOPPED else child.run.value
        raise Conflict(f"child {ev.name!r} is {where}: cannot start it")
    tx.update(ev.name, crashes=0)
    tx.start(ev.name)


def _on_add_child(tx: _Tx, ev: AddChild) -> None:
    tx.require("add children", SupStatus.RUNNING, SupStatus.STOPPED)
    if not isinstance(ev.spec, ChildSpec):
        raise InvalidRequest(f"AddChild needs a ChildSpec, got {ev.spec!r}")
    if _find(tx.state, ev.spec.name) is not None:
        raise Conflict(f"supervisor {tx.state.spec.name!r} already has a child {ev.spec.name!r}")
    spec = replace(tx.state.spec, children=(*tx.state.spec.children, ev.spec))
    children = (*tx.state.children, ChildState(ev.spec.name))
    tx.state = replace(tx.state, spec=spec, children=children)
    tx.audit("added", ev.spec.name, restart=ev.spec.restart.value)
    if tx.state.status is SupStatus.RUNNING:
        tx.start(ev.spec.name)


def _on_remove_child(tx: _Tx, ev: RemoveChild) -> None:
    tx.require("remove children", SupStatus.RUNNING, SupStatus.STOPPED)
    child = tx.child(ev.name)
    if child.run not in (ChildRun.STOPPED, ChildRun.PAUSED) or ev.name in tx.state.pending.starts:
        where = "queued to start" if child.run is ChildRun.STOPPED else child.run.value
        raise Conflict(f"child {ev.name!r} is {where}: stop it before removing it")
    tx.audit("removed", ev.name)
    kept = tuple(c for c in tx.state.spec.children if c.name != ev.name)
    tx.state = replace(
        tx.state,
        spec=replace(tx.state.spec, children=kept),
        children=tuple(c for c in tx.state.children if c.name != ev.name),
    )


def _on_pause(tx: _Tx, ev: Pause) -> None:
    tx.require("pause children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if child.paused:
        raise Conflict(f"child {ev.name!r} is already paused")
    tx.update(ev.name, paused=True)
    tx.audit("paused", ev.name)
    queued = child.run is ChildRun.STOPPED and ev.name in tx.state.pending.starts
    if child.run is ChildRun.RESTARTING or queued:  # waiting to (re)start: not any more
        tx.drop_start(ev.name)
        tx.update(ev.name, run=ChildRun.PAUSED, deadline=None)
        _drive_starts(tx)


def _on_resume(tx: _Tx, ev: Resume) -> None:
    tx.require("resume children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if not child.paused:
        raise Conflict(f"child {ev.name!r} is not paused")
    tx.update(ev.name, paused=False, crashes=0)
    tx.audit("resumed", ev.name)
    if child.run is ChildRun.PAUSED:
        tx.start(ev.name)


_HANDLERS: Final[dict[type[Any], Callable[[_Tx, Any], None]]] = {
    Boot: _on_boot,
    ChildStarted: _on_started,
    ChildExited: _on_exited,
    StopChild: _on_stop_child,
    StartChild: _on_start_child,
    AddChild: _on_add_child,
    RemoveChild: _on_remove_child,
    Pause: _on_pause,
    Resume: _on_resume,
    BackoffElapsed: _on_backoff,
    Shutdown: _on_shutdown,
    StopTimeout: _on_stop_timeout,
    CrashReported: _on_crash_reported,
}
