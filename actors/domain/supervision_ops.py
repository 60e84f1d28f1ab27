"""Supervision handlers for what the operator and the definitions ask for:
stop, start, add, remove, pause, resume, reconcile with the definitions, and
on-demand activation (pure; part of :mod:`actors.domain.supervision`)."""

from __future__ import annotations

from dataclasses import replace

from actors.domain.supervision_tx import Tx, advance, drive_starts
from actors.domain.supervision_types import (
    Activate,
    AddChild,
    ChildRun,
    ChildSpec,
    ChildState,
    Deactivate,
    Pause,
    Reconcile,
    RemoveChild,
    Resume,
    StartChild,
    StopChild,
    SupervisorSpec,
    SupStatus,
)
from naosd.errors import Conflict, InvalidRequest

_DOWN_OR_WAITING = (ChildRun.RESTARTING, ChildRun.PAUSED)


def on_stop_child(tx: Tx, ev: StopChild) -> None:
    tx.require("stop children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if child.run is ChildRun.FAILED:  # FAILED -> STOPPED: nothing runs, the failure is cleared
        tx.update(ev.name, run=ChildRun.STOPPED, paused=False)
        tx.audit("stopped", ev.name, reason="failed state cleared")
        return
    live = child.run in (ChildRun.STARTING, ChildRun.RUNNING)
    waiting = ev.name in tx.state.pending.starts or child.run in _DOWN_OR_WAITING
    if not live and not waiting:
        raise Conflict(f"child {ev.name!r} is {child.run}: nothing to stop")
    _halt(tx, ev.name, ev.now)
    advance(tx, ev.now)


def _halt(tx: Tx, name: str, now: float) -> None:
    """Stop ``name`` if it is live, cancel its (re)start if it is waiting."""
    child = tx.child(name)
    tx.drop_start(name)
    # the operator's stop wins over a budget pause, and is audited (not a restart)
    tx.update(name, paused=False, recovering=False, respawn=False)
    if child.run in (ChildRun.STARTING, ChildRun.RUNNING):
        tx.stop(name, now)
    elif child.run is not ChildRun.STOPPING:  # down: cancel its pending (re)start
        tx.update(name, run=ChildRun.STOPPED, deadline=None)
        tx.audit("stopped", name, reason="pending start cancelled")


def on_start_child(tx: Tx, ev: StartChild) -> None:
    tx.require("start children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if child.paused:
        raise Conflict(f"child {ev.name!r} is paused: resume it instead")
    queued = ev.name in tx.state.pending.starts
    if child.run is not ChildRun.FAILED and (child.run is not ChildRun.STOPPED or queued):
        where = "queued to start" if child.run is ChildRun.STOPPED else child.run.value
        raise Conflict(f"child {ev.name!r} is {where}: cannot start it")
    tx.update(ev.name, crashes=0)  # FAILED -> STARTING: an operator's start clears it
    tx.start(ev.name)


def on_add_child(tx: Tx, ev: AddChild) -> None:
    tx.require("add children", SupStatus.RUNNING, SupStatus.STOPPED)
    if not isinstance(ev.spec, ChildSpec):
        raise InvalidRequest(f"AddChild needs a ChildSpec, got {ev.spec!r}")
    _add(tx, ev.spec)


def _add(tx: Tx, spec: ChildSpec, *, on_demand: bool = False) -> None:
    if tx.state.find(spec.name) is not None:
        raise Conflict(f"supervisor {tx.state.spec.name!r} already has a child {spec.name!r}")
    specs = (*tx.state.spec.children, spec)
    children = (*tx.state.children, ChildState(spec.name, on_demand=on_demand))
    tx.state = replace(tx.state, spec=replace(tx.state.spec, children=specs), children=children)
    tx.audit("added", spec.name, restart=spec.restart.value)
    if tx.state.status is SupStatus.RUNNING:
        tx.start(spec.name)


def on_remove_child(tx: Tx, ev: RemoveChild) -> None:
    tx.require("remove children", SupStatus.RUNNING, SupStatus.STOPPED)
    child = tx.child(ev.name)
    queued = ev.name in tx.state.pending.starts
    if child.run not in (ChildRun.STOPPED, ChildRun.PAUSED, ChildRun.FAILED) or queued:
        where = "queued to start" if child.run is ChildRun.STOPPED else child.run.value
        raise Conflict(f"child {ev.name!r} is {where}: stop it before removing it")
    tx.remove(ev.name)


def on_pause(tx: Tx, ev: Pause) -> None:
    tx.require("pause children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if child.paused:
        raise Conflict(f"child {ev.name!r} is already paused")
    tx.update(ev.name, paused=True)
    tx.audit("paused", ev.name)
    queued = child.run is ChildRun.STOPPED and ev.name in tx.state.pending.starts
    if child.run is ChildRun.RESTARTING or queued:  # waiting to (re)start: not any more
        tx.drop_start(ev.name)
        tx.update(ev.name, run=ChildRun.PAUSED, deadline=None, recovering=False)
        drive_starts(tx)


def on_resume(tx: Tx, ev: Resume) -> None:
    tx.require("resume children", SupStatus.RUNNING)
    child = tx.child(ev.name)
    if not child.paused:
        raise Conflict(f"child {ev.name!r} is not paused")
    tx.update(ev.name, paused=False, crashes=0)
    tx.audit("resumed", ev.name)
    if child.run is ChildRun.PAUSED:
        tx.start(ev.name)


# -- the definitions and on-demand children -------------------------------------------


def on_reconcile(tx: Tx, ev: Reconcile) -> None:
    tx.require("reconcile", SupStatus.RUNNING)
    wanted = {spec.name: spec for spec in ev.wanted}
    for child in tx.state.children:
        if child.name in wanted or child.retiring or tx.kind(child.name) not in ev.kinds:
            continue
        if not child.on_demand or child.name in ev.stop:
            retire(tx, child.name, ev.now)
    for name, spec in wanted.items():
        found = tx.state.find(name)
        if found is None:
            _add(tx, spec)
            continue
        tx.state = replace(tx.state, spec=_with_child(tx, spec))
        if found.retiring:  # wanted again while it stops: start it once it is down
            tx.update(name, retiring=False, respawn=True)
        tx.update(name, on_demand=False)
        if name in ev.start:
            _operator_start(tx, name)
    advance(tx, ev.now)


def _with_child(tx: Tx, spec: ChildSpec) -> SupervisorSpec:
    children = tuple(spec if c.name == spec.name else c for c in tx.state.spec.children)
    return replace(tx.state.spec, children=children)


def _operator_start(tx: Tx, name: str) -> None:
    """An operator started ``name``: a FAILED, stopped or backing-off child
    starts now (and its streak is forgotten); a paused one stays paused."""
    child = tx.child(name)
    queued = name in tx.state.pending.starts
    if child.paused or queued:
        return
    if child.run in (ChildRun.FAILED, ChildRun.STOPPED, ChildRun.RESTARTING):
        tx.update(name, crashes=0, deadline=None, recovering=False)
        tx.start(name)


def on_activate(tx: Tx, ev: Activate) -> None:
    tx.require("activate children", SupStatus.RUNNING)
    name = ev.spec.name
    child = tx.state.find(name)
    if child is None:
        _add(tx, ev.spec, on_demand=True)
        return
    if child.run is ChildRun.FAILED:
        raise Conflict(
            f"{tx.kind(name)} {name!r} failed ({child.last_error}); it is not restarted"
            f" until it is started again"
        )
    if child.retiring:  # being deactivated: start it again once it is down
        tx.update(name, retiring=False, respawn=True, on_demand=True)
    elif child.run is ChildRun.STOPPED and not child.paused and not _queued(tx, name):
        tx.update(name, crashes=0)
        tx.start(name)


def on_deactivate(tx: Tx, ev: Deactivate) -> None:
    tx.require("deactivate children", SupStatus.RUNNING)
    child = tx.state.find(ev.name)
    if child is None or not child.on_demand or child.retiring:
        return  # wanted by its definition, gone, or already going
    tx.audit("deactivated", ev.name, reason=ev.reason)
    retire(tx, ev.name, ev.now)
    advance(tx, ev.now)


def _queued(tx: Tx, name: str) -> bool:
    return name in tx.state.pending.starts


def retire(tx: Tx, name: str, now: float) -> None:
    """Stop ``name`` if it runs, and remove it once it is down (at once if it is)."""
    child = tx.child(name)
    tx.update(name, retiring=True, on_demand=False)
    if child.run in (ChildRun.STARTING, ChildRun.RUNNING, ChildRun.STOPPING):
        _halt(tx, name, now)
    else:  # STOPPED, PAUSED, FAILED, RESTARTING (its timer is then stale)
        tx.remove(name)
