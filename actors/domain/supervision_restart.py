"""Supervision handlers for the supervisor's lifecycle, its children's reports
and the restart decisions (pure; part of :mod:`actors.domain.supervision`).

Audit rows of a crash: one per restart (``restarted``, with the reason), or
``crashed``/``exited`` when no restart follows, or ``failed`` when a child
is given up on. A restart's start writes no ``started`` row, and a sibling
stopped for a group restart no ``stopped`` row: its ``restarted`` row says it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from actors.domain.supervision_tx import Tx, advance, current, due
from actors.domain.supervision_types import (
    PROCESS_DIED,
    UP,
    Alert,
    BackoffElapsed,
    Boot,
    ChildExited,
    ChildLost,
    ChildRun,
    ChildSpawned,
    ChildStarted,
    ChildState,
    ExitNotice,
    Forget,
    Intensity,
    Kill,
    Pending,
    ProcessGone,
    RestartType,
    Schedule,
    Shutdown,
    StartTimedOut,
    StopTimeout,
    Strategy,
    SupervisorSpec,
    SupStatus,
    Unplaceable,
)
from naosd.errors import Conflict

_MAX_DOUBLINGS: Final = 64  # 2.0 ** 1024 overflows; the cap is reached long before


def backoff_delay(spec: SupervisorSpec, crashes: int) -> float:
    """Delay before restarting a child after its ``crashes``-th consecutive exit."""
    if spec.backoff_initial_s <= 0:
        return 0.0
    doublings = min(max(crashes - 1, 0), _MAX_DOUBLINGS)
    return min(spec.backoff_initial_s * 2.0**doublings, spec.backoff_max_s)


def restart_delay(spec: SupervisorSpec, name: str, crashes: int) -> float:
    """The delay of a restart after ``crashes`` consecutive quick exits.

    OTP intensity: ``backoff_delay`` from the first crash. CHILD intensity: the
    first crash after a healthy run restarts at once (a SIGKILLed agent is back
    in milliseconds); the backoff starts with the second; critical children
    never wait.
    """
    if spec.intensity is Intensity.SUPERVISOR:
        return backoff_delay(spec, crashes)
    if spec.child(name).critical or crashes <= 1:
        return 0.0
    return backoff_delay(spec, crashes - 1)


# -- supervisor lifecycle -------------------------------------------------------------


def on_boot(tx: Tx, ev: Boot) -> None:
    tx.require("boot", SupStatus.STOPPED)
    tx.state = replace(tx.state, status=SupStatus.RUNNING, restart_log=(), pending=Pending())
    tx.audit("booted")
    for child in tx.state.children:
        run = ChildRun.PAUSED if child.paused else ChildRun.STOPPED
        tx.update(child.name, run=run, crashes=0, recovering=False, respawn=False)
    queue = (c.name for c in tx.state.children if not c.paused)
    tx.set_pending(starts=tx.in_order(queue))
    advance(tx, ev.now)


def on_shutdown(tx: Tx, ev: Shutdown) -> None:
    tx.require("shut down", SupStatus.RUNNING)
    for child in tx.state.children:
        if child.run is ChildRun.RESTARTING:  # cancel the restart
            tx.update(child.name, run=ChildRun.STOPPED, deadline=None, recovering=False)
    up = (c.name for c in tx.state.children if c.run in UP)
    tx.state = replace(
        tx.state, status=SupStatus.STOPPING, pending=Pending(stops=tx.in_order(up, reverse=True))
    )
    tx.audit("shutting_down")
    advance(tx, ev.now)


def _give_up(tx: Tx, name: str, ev: ChildExited) -> None:
    spec = tx.state.spec
    reason = (
        f"child {name!r} exited ({ev.reason or 'no reason'}): more than "
        f"{spec.max_restarts} restarts in {spec.window_s:g}s"
    )
    for child in tx.state.children:
        if child.run not in UP:
            tx.update(child.name, run=ChildRun.FAILED, deadline=None, recovering=False)
    up = tx.in_order((c.name for c in tx.state.children if c.run in UP), reverse=True)
    tx.state = replace(tx.state, status=SupStatus.FAILED, pending=Pending(up, (), reason))
    tx.audit("gave_up", reason=reason, child=name)


# -- reports from children ------------------------------------------------------------


def on_spawned(tx: Tx, ev: ChildSpawned) -> None:
    child = tx.state.find(ev.name)
    live = child is not None and child.run in (ChildRun.STARTING, ChildRun.STOPPING)
    if live and child is not None and current(child, ev.incarnation):
        tx.update(ev.name, pid=ev.pid)


def on_started(tx: Tx, ev: ChildStarted) -> None:
    child = tx.child(ev.name)
    if not current(child, ev.incarnation):
        return  # a process we no longer track
    if child.run is ChildRun.STOPPING:  # asked to stop before it reported: keep stopping
        tx.update(ev.name, pid=ev.pid)
        return
    if child.run is not ChildRun.STARTING:
        raise Conflict(f"child {ev.name!r} is {child.run}: no start was pending")
    tx.update(ev.name, run=ChildRun.RUNNING, pid=ev.pid, started_at=ev.now, recovering=False)
    if ev.name not in tx.state.pending.stops:  # else: to be stopped, then started again
        tx.drop_start(ev.name)
    if not child.recovering:
        tx.audit("started", ev.name, pid=ev.pid, restarts=child.restarts)
    advance(tx, ev.now)


def on_exited(tx: Tx, ev: ChildExited) -> None:
    child = tx.child(ev.name)
    if child.run not in UP:
        raise Conflict(f"child {ev.name!r} is {child.run}: it has no process to exit")
    if current(child, ev.incarnation):
        exit_child(tx, child, ev)


def on_notice(tx: Tx, ev: ExitNotice) -> None:
    """Keep why the child is about to exit; a reason that comes after an
    unexplained exit (a remote agent's exit notice comes from its node's admin,
    on another connection) becomes its last error. Decisions taken stand."""
    child = tx.state.find(ev.name)
    if child is None:
        return
    incarnation = child.incarnation if ev.incarnation is None else ev.incarnation
    late = not ev.normal and incarnation == child.unexplained
    if incarnation == child.incarnation and child.run in UP:
        tx.update(ev.name, notice=(ev.normal, ev.reason))
    elif late and child.last_error == PROCESS_DIED:
        tx.update(ev.name, last_error=ev.reason, unexplained=0)


def on_gone(tx: Tx, ev: ProcessGone) -> None:
    child = tx.state.find(ev.name)
    if child is None or not current(child, ev.incarnation) or child.run not in UP:
        return  # a duplicate notice, or a process we no longer track
    normal, said = child.notice or (False, "")
    abnormal = child.run is not ChildRun.STOPPING and not normal
    reason = said or ("exited" if not abnormal else PROCESS_DIED)
    if not said and abnormal:
        tx.update(ev.name, unexplained=child.incarnation)
    exit_child(tx, tx.child(ev.name), ChildExited(ev.name, abnormal, reason, ev.now))


def on_lost(tx: Tx, ev: ChildLost) -> None:
    child = tx.state.find(ev.name)
    if child is None or not current(child, ev.incarnation) or child.run not in UP:
        return
    tx.effects.append(Forget(ev.name))
    exit_child(tx, child, ChildExited(ev.name, True, ev.reason, ev.now))


def on_start_timeout(tx: Tx, ev: StartTimedOut) -> None:
    child = tx.state.find(ev.name)
    if child is None or not current(child, ev.incarnation):
        return
    never_started = child.run is ChildRun.STOPPING and child.started_at is None
    if child.run is ChildRun.STARTING or never_started:
        tx.effects.append(Forget(ev.name))
        exit_child(tx, child, ChildExited(ev.name, True, ev.reason, ev.now))


def on_unplaceable(tx: Tx, ev: Unplaceable) -> None:
    """Park the child: paused, with the reason as its last error (an
    operator's stop + start tries again)."""
    child = tx.state.find(ev.name)
    if child is None or child.run is not ChildRun.STARTING:
        return
    if not child.paused:
        tx.update(ev.name, paused=True)
        tx.audit("paused", ev.name)
    reason = f"unplaceable: {ev.reason}"
    exit_child(tx, tx.child(ev.name), ChildExited(ev.name, True, reason, ev.now))


def exit_child(tx: Tx, child: ChildState, ev: ChildExited) -> None:
    """Child ``ev.name`` (``child`` as it was) is down: settle it or decide."""
    name = ev.name
    error = ev.reason if ev.abnormal else child.last_error
    tx.update(
        name,
        run=ChildRun.STOPPED,
        pid=None,
        started_at=None,
        deadline=None,
        last_error=error,
        notice=None,
    )
    in_stops = name in tx.state.pending.stops
    tx.set_pending(stops=tuple(n for n in tx.state.pending.stops if n != name))
    if child.run is ChildRun.STOPPING:  # we asked for this exit: not a crash
        if not child.recovering:
            tx.audit("stopped", name, reason=ev.reason)
        tx.settle(name)
    elif in_stops or tx.state.status is not SupStatus.RUNNING or child.retiring:
        # It died on its own while we were about to stop it anyway: absorbed, not counted.
        if not child.recovering:
            tx.audit(_exit_verb(ev), name, reason=ev.reason)
        tx.settle(name)
    else:
        _on_crash(tx, child, ev)
    tx.after_down(name)
    advance(tx, ev.now)


def _exit_verb(ev: ChildExited) -> str:
    return "crashed" if ev.abnormal else "exited"


def _wants_restart(restart: RestartType, abnormal: bool) -> bool:
    if restart is RestartType.PERMANENT:
        return True
    return abnormal and restart is RestartType.TRANSIENT


def _streak(spec: SupervisorSpec, before: ChildState, now: float) -> int:
    """Consecutive quick exits, this one included: a run of ``window_s`` ends a streak."""
    ran_long = before.started_at is not None and now - before.started_at >= spec.window_s
    return 1 if ran_long else before.crashes + 1


def _on_crash(tx: Tx, before: ChildState, ev: ChildExited) -> None:
    """An exit we did not ask for, while running: restart, or not, or give up."""
    spec = tx.state.spec
    if before.paused or not _wants_restart(spec.child(ev.name).restart, ev.abnormal):
        tx.audit(_exit_verb(ev), ev.name, reason=ev.reason)
        tx.drop_start(ev.name)
        tx.settle(ev.name)
        return
    if spec.intensity is Intensity.CHILD:
        _restart_alone(tx, before, ev)
        return
    log = (*(t for t in tx.state.restart_log if ev.now - t <= spec.window_s), ev.now)
    tx.state = replace(tx.state, restart_log=log)
    if len(log) > spec.max_restarts:
        tx.audit(_exit_verb(ev), ev.name, reason=ev.reason)
        _give_up(tx, ev.name, ev)
        return
    crashes = _streak(spec, before, ev.now)
    delay = restart_delay(spec, ev.name, crashes)
    _decide_restart(tx, before, ev, crashes, delay)
    if spec.strategy is not Strategy.ONE_FOR_ONE:
        _restart_group(tx, ev.name)
    elif delay == 0 and ev.name not in tx.state.pending.starts:
        tx.start(ev.name)


def _restart_alone(tx: Tx, before: ChildState, ev: ChildExited) -> None:
    """CHILD intensity: this child's own streak decides; nobody else is touched.
    A normal exit is no failure: it restarts at once and ends the streak."""
    spec = tx.state.spec
    crashes = _streak(spec, before, ev.now) if ev.abnormal else 0
    if ev.abnormal and not spec.child(ev.name).critical and crashes > spec.max_restarts:
        _fail_child(tx, before, ev, crashes)
        return
    delay = restart_delay(spec, ev.name, crashes)
    _decide_restart(tx, before, ev, crashes, delay)
    if delay == 0 and ev.name not in tx.state.pending.starts:
        tx.start(ev.name)


def _fail_child(tx: Tx, before: ChildState, ev: ChildExited, crashes: int) -> None:
    """(down) -> FAILED: no more restarts until an operator starts it; one
    audit row and one alert."""
    spec = tx.state.spec
    tx.drop_start(ev.name)
    tx.update(ev.name, run=ChildRun.FAILED, crashes=crashes, recovering=False)
    tx.audit("failed", ev.name, reason=ev.reason, crashes=crashes, restarts=before.restarts)
    kind = tx.kind(ev.name)
    tx.effects.append(Alert(
        f"{kind} {ev.name!r} under {spec.name!r} failed: {crashes} crashes in a row, each"
        f" within {spec.window_s:g}s of its start (last: {ev.reason}); it is not restarted"
        f" until it is started again"
    ))


def _decide_restart(
    tx: Tx, before: ChildState, ev: ChildExited, crashes: int, delay: float
) -> None:
    """Down -> RESTARTING (at once, or when its backoff timer fires)."""
    tx.state = replace(tx.state, restarts=tx.state.restarts + 1)
    tx.update(
        ev.name,
        run=ChildRun.RESTARTING,
        crashes=crashes,
        restarts=before.restarts + 1,
        deadline=ev.now + delay if delay > 0 else None,
        recovering=True,
    )
    tx.audit(
        "restarted",
        ev.name,
        restarts=before.restarts + 1,
        delay_s=delay,
        cause=ev.name,
        reason=ev.reason,
    )
    if delay > 0:
        tx.effects.append(Schedule(ev.name, delay))


def _restart_group(tx: Tx, crashed: str) -> None:
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
            tx.update(name, restarts=child.restarts + 1, recovering=True)
            tx.audit("restarted", name, restarts=child.restarts + 1, delay_s=0.0, cause=crashed)
    tx.set_pending(stops=tx.in_order(stops, reverse=True), starts=tx.in_order(starts))


def _joins_restart(tx: Tx, child: ChildState) -> bool:
    """A sibling is restarted if it is up by our choice and not temporary.

    A paused one joins too: ``settle`` parks it as PAUSED when it exits, unless
    it was resumed in between.
    """
    if child.run not in (ChildRun.STARTING, ChildRun.RUNNING):
        return False
    return tx.state.spec.child(child.name).restart is not RestartType.TEMPORARY


# -- timers ---------------------------------------------------------------------------


def on_backoff(tx: Tx, ev: BackoffElapsed) -> None:
    if not due(tx.state.find(ev.name), ChildRun.RESTARTING, ev.now):
        return  # stale timer
    tx.update(ev.name, deadline=None)
    if ev.name in tx.state.pending.starts:
        advance(tx, ev.now)
    else:
        tx.start(ev.name)


def on_stop_timeout(tx: Tx, ev: StopTimeout) -> None:
    if not due(tx.state.find(ev.name), ChildRun.STOPPING, ev.now):
        return  # stale timer: it exited, or was stopped again later
    tx.update(ev.name, deadline=None)
    tx.effects.append(Kill(ev.name))
    tx.audit("killed", ev.name, timeout_s=tx.state.spec.child(ev.name).shutdown_timeout_s)
