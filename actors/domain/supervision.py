"""Erlang/OTP supervisor semantics as a pure state machine (stdlib + naosd.errors only).

A supervisor actor shell (``actors.supervisor``, and the root in
``actors.root``) keeps one :class:`SupState`, feeds every message it gets to
:func:`handle` as an event and performs the effects it gets back, in order.
Nothing here imports Thespian, reads a clock or does I/O: time is the ``now``
float of each event, and timers are effects the shell arms. Every decision is
here: when to restart, how long to back off, when to give up on a child or on
the whole supervisor, what a process's exit means, which report is stale, what
to stop, add and remove when the definitions change. The shell keeps only
addresses and pids.

The values live in :mod:`actors.domain.supervision_types`, the handlers in
``supervision_restart`` (lifecycle, children's reports, restarts, timers) and
``supervision_ops`` (operator commands, definitions, on-demand children);
this module re-exports them all.

Events: ``Boot``, ``ChildSpawned``, ``ChildStarted``, ``ExitNotice``,
``ProcessGone``, ``ChildExited``, ``ChildLost``, ``StartTimedOut``,
``Unplaceable``, ``StopChild``, ``StartChild``, ``AddChild``, ``RemoveChild``,
``Reconcile``, ``Activate``, ``Deactivate``, ``Pause``, ``Resume``,
``BackoffElapsed``, ``Shutdown``, ``StopTimeout``.
Effects: ``Start``, ``Stop`` (arm a ``StopTimeout`` timer), ``Kill``,
``Schedule`` (arm a ``BackoffElapsed`` timer), ``Forget`` (drop a process
whose exit was decided without it), ``GiveUp`` (escalate to the parent as an
abnormal exit), ``Alert`` (log a warning), ``Audit``.

Audit types. ``<kind>`` is the child's kind (``agent``, ``supervisor``,
``service``); every detail holds ``supervisor`` (this supervisor's name) and,
for child events, ``name``. At most one row per restart:
``<kind>.started`` (pid, restarts; a start that is not a restart),
``<kind>.restarted`` (a restart was decided: restarts, delay_s, cause, reason),
``<kind>.crashed`` / ``<kind>.exited`` (an abnormal / normal exit we did not
ask for and that is not restarted; reason), ``<kind>.failed`` (CHILD
intensity gave up on it: reason, crashes, restarts), ``<kind>.stopped`` (exit
we asked for, or a pending start cancelled; reason), ``<kind>.killed``
(timeout_s), ``<kind>.added`` (restart), ``<kind>.removed``,
``<kind>.paused``, ``<kind>.resumed``, ``<kind>.deactivated`` (reason);
``supervisor.booted``, ``supervisor.shutting_down``, ``supervisor.shut_down``,
``supervisor.gave_up`` (reason, child). ``SupervisorSpec.audit_verbs`` limits
the verbs a supervisor writes (the root writes only restarts and failures).

Multi-step operations live in :class:`Pending` and run one child at a time, as
OTP does: children are stopped in reverse start order, each after the previous
one has exited, then started in start order, each after the previous one has
reported its pid (``Boot`` too). Decisions where OTP is silent or differs:

- Intensity counts restart decisions (one per crash, however many siblings a
  group restart touches) with OTP's inclusive window: kept if ``now - t <= window_s``.
- ``Intensity.CHILD`` (the implicit ``agents`` supervisor, the root) replaces
  the supervisor's intensity with each child's own: a child that crashes more
  than ``max_restarts`` times in a row, each time after a run shorter than
  ``window_s`` (a failed start counts), is FAILED: not restarted, one
  ``failed`` row and one ``Alert``; an operator's start clears it. Its first
  restart after a healthy run is immediate, later ones back off
  exponentially. A normal exit is no failure. Critical children are always
  restarted at once. The supervisor never gives up, so a crash loop never
  touches a sibling.
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
- ``StopChild`` works in every state but stopped and stopping: a live child is
  stopped, a waiting one cancelled, a FAILED one cleared to stopped.
- Every ``Start`` opens a new incarnation; reports tagged with another one
  are stale and ignored (a duplicate exit notice, a late pid report). The exit
  of a process is explained by what the shell asked (a stop) or by the
  ``ExitNotice`` the child sent before it; otherwise it "died". A notice that
  arrives after an unexplained exit becomes that exit's ``last_error``; the
  decision taken at the exit stands.
- ``Reconcile`` retires children whose definitions no longer want them
  (stopped, then removed), except on-demand ones; ``Deactivate`` retires an
  on-demand one. A child wanted again while it is being retired starts again
  once it is down.
- Timer events are never errors: a ``BackoffElapsed``, ``StopTimeout`` or
  ``StartTimedOut`` that no longer matches is ignored, because the shell
  cannot cancel timers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from actors.domain import supervision_ops as ops
from actors.domain import supervision_restart as rs
from actors.domain.definitions import validate_name
from actors.domain.supervision_restart import backoff_delay, restart_delay
from actors.domain.supervision_tx import Tx
from actors.domain.supervision_types import (
    CHILD_KINDS,
    DOWN,
    PROCESS_DIED,
    TIMER_SLACK_S,
    UP,
    Activate,
    AddChild,
    Alert,
    Audit,
    BackoffElapsed,
    Boot,
    ChildExited,
    ChildLost,
    ChildRun,
    ChildSpawned,
    ChildSpec,
    ChildStarted,
    ChildState,
    Deactivate,
    Effect,
    Event,
    ExitNotice,
    Forget,
    GiveUp,
    Intensity,
    Kill,
    Pause,
    Pending,
    ProcessGone,
    Reconcile,
    RemoveChild,
    RestartType,
    Resume,
    Schedule,
    Shutdown,
    Start,
    StartChild,
    StartTimedOut,
    Stop,
    StopChild,
    StopTimeout,
    Strategy,
    SupervisorSpec,
    SupState,
    SupStatus,
    Unplaceable,
)
from naosd.errors import InvalidRequest

__all__ = [
    "CHILD_KINDS", "DOWN", "PROCESS_DIED", "TIMER_SLACK_S", "UP", "Activate", "AddChild",
    "Alert", "Audit", "BackoffElapsed", "Boot", "ChildExited", "ChildLost", "ChildRun",
    "ChildSpawned", "ChildSpec", "ChildStarted", "ChildState", "Deactivate", "Effect",
    "Event", "ExitNotice", "Forget", "GiveUp", "Intensity", "Kill", "Pause", "Pending",
    "ProcessGone", "Reconcile", "RemoveChild", "RestartType", "Resume", "Schedule",
    "Shutdown", "Start", "StartChild", "StartTimedOut", "Stop", "StopChild", "StopTimeout",
    "Strategy", "SupState", "SupStatus", "SupervisorSpec", "Unplaceable", "backoff_delay",
    "handle", "initial", "restart_delay", "tree_node", "validate_name",
]  # fmt: skip


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
    tx = Tx(state)
    handler(tx, event)
    return tx.state, tx.effects


def tree_node(state: SupState) -> dict[str, Any]:
    """The JSON-able tree node of this supervisor and its children."""
    return {
        "name": state.spec.name,
        "kind": "supervisor",
        "strategy": state.spec.strategy.value,
        "state": state.status.value,
        "restarts": state.restarts,
        "children": [child_node(state, child) for child in state.children],
    }


def child_node(state: SupState, child: ChildState) -> dict[str, Any]:
    """The JSON-able node of one child (a leaf)."""
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


_HANDLERS: Final[dict[type[Any], Callable[[Tx, Any], None]]] = {
    Boot: rs.on_boot,
    Shutdown: rs.on_shutdown,
    ChildSpawned: rs.on_spawned,
    ChildStarted: rs.on_started,
    ChildExited: rs.on_exited,
    ExitNotice: rs.on_notice,
    ProcessGone: rs.on_gone,
    ChildLost: rs.on_lost,
    StartTimedOut: rs.on_start_timeout,
    Unplaceable: rs.on_unplaceable,
    BackoffElapsed: rs.on_backoff,
    StopTimeout: rs.on_stop_timeout,
    StopChild: ops.on_stop_child,
    StartChild: ops.on_start_child,
    AddChild: ops.on_add_child,
    RemoveChild: ops.on_remove_child,
    Pause: ops.on_pause,
    Resume: ops.on_resume,
    Reconcile: ops.on_reconcile,
    Activate: ops.on_activate,
    Deactivate: ops.on_deactivate,
}
