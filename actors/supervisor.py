"""SupervisorActor: the thin shell around the OTP state machine in
:mod:`actors.domain.supervision`.

It turns Thespian's signals into domain events (``ChildPid`` -> started,
``ChildActorExited`` -> exited; an exit we did not ask for is abnormal, with
the reason the child sent in ``ChildCrashed`` if any), and performs the
domain's effects: create a child actor, ask it to stop (with a timer that
kills it when its shutdown timeout passes), SIGKILL, schedule a backoff,
write an audit row, give up (stop everything, tell the parent why, exit:
the parent sees an abnormal exit and applies its own strategy).

A supervisor reads its definition and its children from SQLite every time
it starts, so a restarted supervisor runs the current tree; ``Sync`` makes a
running one pick up changes.  Every change of state is pushed to the root
(``TreeUpdate``, ``Registered``) so naosd can draw the tree and find agents.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.agent import AgentActor
from actors.base import NaosActor
from actors.cluster_messages import HostedFor, NodeLost, Unplaceable
from actors.domain import supervision as sv
from actors.domain.definitions import AgentDef, SupervisorDef
from actors.messages import (
    Activate,
    ChildCrashed,
    ChildDone,
    ChildPid,
    Deactivate,
    ExitNoted,
    GetTree,
    InitAgent,
    InitSupervisor,
    Registered,
    Sync,
    TreeUpdate,
)
from naosd.errors import NaosError
from naosd.runtime.procs import process_alive

SWEEP = timedelta(milliseconds=250)
SPARE_DELAY = timedelta(milliseconds=50)
# A child placed on another node that has not reported its pid by then is
# treated as crashed (the member may have died between choice and creation:
# Thespian then drops the creation without telling the parent).
REMOTE_START = timedelta(seconds=15)
# The reason of an abnormal exit whose child did not say why (yet).
PROCESS_DIED = "process died"


def child_spec(d: AgentDef | SupervisorDef) -> sv.ChildSpec:
    kind = "agent" if isinstance(d, AgentDef) else "supervisor"
    timeout = d.shutdown_timeout_s if isinstance(d, AgentDef) else 30.0
    return sv.ChildSpec(d.name, kind, sv.RestartType(d.restart), timeout)


def supervisor_spec(d: SupervisorDef, children: list[AgentDef | SupervisorDef]
                    ) -> sv.SupervisorSpec:
    return sv.SupervisorSpec(
        d.name, sv.Strategy(d.strategy), d.max_restarts, d.window_s,
        d.backoff_initial_s, d.backoff_max_s, tuple(child_spec(c) for c in children))


class SupervisorActor(NaosActor):
    def __init__(self) -> None:
        super().__init__()
        self._state: sv.SupState | None = None
        self._defs: dict[str, AgentDef | SupervisorDef] = {}
        self._addrs: dict[str, Any] = {}
        self._pids: dict[str, int] = {}
        self._stopping: set[str] = set()
        self._done: set[str] = set()
        self._removing: set[str] = set()
        self._on_demand: set[str] = set()
        self._spare: Any = None
        self._spare_pending = False
        self._reasons: dict[str, str] = {}
        # name -> address of its last incarnation, if that one exited without a reason
        self._unexplained: dict[str, Any] = {}
        self._parent: Any = None
        self._root: Any = None
        self._db_path = ""
        self._checkpoint = ""
        self._store: Any = None
        self._giving_up = ""
        self._exiting = False
        self._local_node: str | None = None  # None: cluster mode is off
        self._placed: dict[str, str] = {}  # agent -> node (cluster mode)
        self._run = ""  # the leader incarnation agents placed elsewhere are fenced by

    # -- start ---------------------------------------------------------------
    def receiveMsg_InitSupervisor(self, msg: InitSupervisor, sender: Any) -> None:
        self.name = msg.name
        self._parent, self._root = sender, msg.root
        self._db_path, self._checkpoint = msg.db_path, msg.checkpoint_path
        from naosd.storage import cluster as cluster_store

        self._local_node = cluster_store.local_node(self._db())
        self._run = cluster_store.run_id(self._db()) if self._local_node else ""
        definition, children = self._load()
        self._state = sv.initial(supervisor_spec(definition, children))
        self.send(self._root, Registered(self.name, "supervisor", self.myAddress,
                                         os.getpid(), ""))
        self.send(sender, ChildPid(self.name, os.getpid()))
        self._apply(sv.Boot(time.monotonic()))
        self.wakeupAfter(SWEEP, payload=("sweep", None, None))
        self._want_spare()

    def _load(self) -> tuple[SupervisorDef, list[AgentDef | SupervisorDef]]:
        from naosd.storage import definitions as defs_store

        store = self._db()
        definition = defs_store.get_supervisor(store, self.name)
        children = [c for c in defs_store.children_of(store, self.name)
                    if c.desired == "running" or c.name in self._on_demand]
        self._defs = {c.name: c for c in children}
        return definition, children

    def _db(self) -> Any:
        if self._store is None:
            from pathlib import Path

            from naosd.storage.store import Store

            self._store = Store.open(Path(self._db_path),
                                     checkpoint_path=Path(self._checkpoint))
        return self._store

    # -- requests --------------------------------------------------------------
    def receiveMsg_GetTree(self, msg: GetTree, sender: Any) -> None:
        self.reply(sender, msg, self._node())

    def receiveMsg_Sync(self, msg: Sync, sender: Any) -> None:
        """Reconcile the running children with the database."""
        wanted = {c.name: c for c in self._load_children()}
        now = time.monotonic()
        for name in [n for n in self._current_names() if n not in wanted]:
            self._retire(name, now)
        for name, d in wanted.items():
            self._defs[name] = d
            self._removing.discard(name)
            if name not in self._current_names():
                self._apply(sv.AddChild(child_spec(d), now))
        self.reply(sender, msg, self._node())

    def _retire(self, name: str, now: float) -> None:
        """Stop ``name`` if it runs, and remove it once it is down."""
        assert self._state is not None
        child = next(c for c in self._state.children if c.name == name)
        self._removing.add(name)
        if child.run in (sv.ChildRun.STOPPED, sv.ChildRun.PAUSED, sv.ChildRun.FAILED):
            self._remove_if_down(name, now)
        elif child.run is not sv.ChildRun.STOPPING:
            self._apply(sv.StopChild(name, now))

    def _remove_if_down(self, name: str, now: float) -> None:
        assert self._state is not None
        child = next((c for c in self._state.children if c.name == name), None)
        if child is None:
            self._removing.discard(name)
        elif child.run in (sv.ChildRun.STOPPED, sv.ChildRun.PAUSED, sv.ChildRun.FAILED):
            self._removing.discard(name)
            self._apply(sv.RemoveChild(name, now))
            self._defs.pop(name, None)

    def _load_children(self) -> list[AgentDef | SupervisorDef]:
        from naosd.storage import definitions as defs_store

        return [c for c in defs_store.children_of(self._db(), self.name)
                if c.desired == "running" or c.name in self._on_demand]

    def receiveMsg_Activate(self, msg: Activate, sender: Any) -> None:
        """Run an agent on demand: it stays until naosd deactivates it."""
        from naosd.storage import definitions as defs_store

        d = defs_store.get_agent(self._db(), msg.name)
        self._on_demand.add(msg.name)
        self._defs[msg.name] = d
        now = time.monotonic()
        child = self._child(msg.name)
        if child is None:
            self._apply(sv.AddChild(child_spec(d), now))
        elif child.run is sv.ChildRun.STOPPED:
            self._removing.discard(msg.name)
            self._apply(sv.StartChild(msg.name, now))
        self.reply(sender, msg)

    def receiveMsg_Deactivate(self, msg: Deactivate, sender: Any) -> None:
        from naosd.storage import definitions as defs_store

        self._on_demand.discard(msg.name)
        d = defs_store.get_agent(self._db(), msg.name)
        if d.desired != "running" and self._child(msg.name) is not None:
            self._audit("agent.deactivated", {"name": msg.name, "supervisor": self.name,
                                              "reason": "idle"})
            self._retire(msg.name, time.monotonic())
        self.reply(sender, msg)

    def _child(self, name: str) -> sv.ChildState | None:
        assert self._state is not None
        return next((c for c in self._state.children if c.name == name), None)

    def _current_names(self) -> list[str]:
        assert self._state is not None
        return [c.name for c in self._state.children]

    # -- signals from children -------------------------------------------------
    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        if self._addrs.get(msg.name) != sender:
            return
        self._pids[msg.name] = msg.pid

        def register() -> None:  # after the tree update, before the audit rows
            if isinstance(self._defs.get(msg.name), AgentDef):
                self.send(self._root, Registered(msg.name, "agent", sender, msg.pid,
                                                 self.name))

        self._apply(sv.ChildStarted(msg.name, msg.pid, time.monotonic()), then=register)

    def receiveMsg_ChildCrashed(self, msg: ChildCrashed, sender: Any) -> None:
        if self._addrs.get(msg.name) == sender:
            self._reasons[msg.name] = msg.reason
        elif self._unexplained.get(msg.name) == sender:  # overtaken by its exit
            del self._unexplained[msg.name]
            self._apply(sv.CrashReported(msg.name, msg.reason, PROCESS_DIED))
        self.send(sender, ExitNoted(msg.name))  # the child waits for this to exit

    def receiveMsg_ChildDone(self, msg: ChildDone, sender: Any) -> None:
        if self._addrs.get(msg.name) == sender:
            self._done.add(msg.name)
        self.send(sender, ExitNoted(msg.name))

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self._spare is not None and msg.childAddress == self._spare:
            self._spare = None
            self._want_spare()
            return
        name = next((n for n, a in self._addrs.items() if a == msg.childAddress), None)
        if name is not None:
            self._child_exited(name)

    def _sweep(self) -> None:
        """Safety net: Thespian sometimes loses one ChildActorExited when
        several children die at once; a child whose process is gone is
        treated as exited (a late ChildActorExited then finds nothing).
        Only local children: a pid on another node means nothing here."""
        for name, pid in list(self._pids.items()):
            if self._remote(name):
                continue
            if not process_alive(pid):
                self._child_exited(name)
        if not self._exiting:
            self.wakeupAfter(SWEEP, payload=("sweep", None, None))

    def _child_exited(self, name: str) -> None:
        if self._exiting or name not in self._addrs:
            return
        addr = self._addrs.pop(name)
        self._pids.pop(name, None)
        abnormal = name not in self._stopping and name not in self._done
        self._stopping.discard(name)
        self._done.discard(name)
        reason = self._reasons.pop(name, "exited" if not abnormal else PROCESS_DIED)
        if reason == PROCESS_DIED:
            self._unexplained[name] = addr  # its ChildCrashed may still come
        else:
            self._unexplained.pop(name, None)
        self.send(self._root, Registered(name, "agent", None, None, self.name))
        if self._local_node is not None and name in self._placed:
            from naosd.storage import cluster as cluster_store

            cluster_store.unplace(self._db(), name)
        now = time.monotonic()
        self._apply(sv.ChildExited(name, abnormal, reason, now))
        if name in self._removing:
            self._remove_if_down(name, now)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        kind, name, addr = msg.payload
        now = time.monotonic()
        if kind == "sweep":
            self._sweep()
        elif kind == "spare":
            self._make_spare()
        elif kind == "stop-timeout" and self._addrs.get(name) == addr and name in self._stopping:
            self._apply(sv.StopTimeout(name, now))
        elif kind == "backoff":
            self._apply(sv.BackoffElapsed(name, now))
        elif kind == "remote-start" and self._addrs.get(name) == addr and name not in self._pids:
            self._reasons[name] = (f"did not start on node {self._placed.get(name)} within "
                                   f"{REMOTE_START.total_seconds():g}s")
            self._child_exited(name)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops our children with us

    # -- driving the domain ------------------------------------------------------
    def _apply(self, event: Any, then: Any = None) -> None:
        """Feed ``event`` to the state machine and act.  Audit rows are
        written last, in one transaction: a replacement process is never
        kept waiting for the disk."""
        assert self._state is not None
        try:
            self._state, effects = sv.handle(self._state, event)
        except NaosError as exc:
            self.logger().warning("%s: %s ignored: %s", self.name, type(event).__name__, exc)
            return
        audits = [e for e in effects if isinstance(e, sv.Audit)]
        for effect in effects:
            if not isinstance(effect, sv.Audit):
                self._perform(effect)
        self._after()
        if then is not None:
            then()
        if audits:
            self._audit_all(audits)

    def _perform(self, effect: Any) -> None:
        match effect:
            case sv.Start(name):
                self._start(name)
            case sv.Stop(name, timeout_s):
                self._stop(name, timeout_s)
            case sv.Kill(name):
                self._kill(name)
            case sv.Schedule(name, delay_s):
                self.wakeupAfter(timedelta(seconds=delay_s), payload=("backoff", name, None))
            case sv.GiveUp(reason):
                self._giving_up = reason or "restart intensity exceeded"

    def _start(self, name: str) -> None:
        d = self._defs[name]
        if isinstance(d, AgentDef):
            if self._local_node is not None or d.requires:
                addr = self._start_placed(d)
                if addr is None:
                    return
            else:
                addr, self._spare = self._spare, None
                if addr is None:
                    addr = self.createActor(AgentActor)
            self._addrs[name] = addr
            self.send(addr, InitAgent(d, self._db_path))
            if self._remote(name):
                self.send(addr, HostedFor(self._run))
            self._want_spare()
        else:
            addr = self.createActor(SupervisorActor)
            self._addrs[name] = addr
            self.send(addr, InitSupervisor(name, self._db_path, self._checkpoint, self._root))

    # -- cluster mode: placement and node loss ------------------------------------
    def _start_placed(self, d: AgentDef) -> Any:
        """Create agent ``d`` on the node naosd chooses for it (None: no node
        can run it now; the child is then parked by ``Unplaceable``)."""
        from actors.domain.placement import choose, parse_requirements, pin
        from naosd.storage import cluster as cluster_store

        req = parse_requirements(d.requires)
        if self._local_node is None:
            return self._unplaceable(d, f"requires {req} but cluster mode is off")
        store = self._db()
        previous = self._placed.get(d.name)  # its row went when it exited
        target = choose(req, cluster_store.nodes(store), cluster_store.loads(store))
        if target is None:
            return self._unplaceable(d, f"no node that is up has {req}")
        if target.local:
            addr, self._spare = self._spare, None
            if addr is None:
                addr = self.createActor(AgentActor)
        else:
            addr = self.createActor(AgentActor, targetActorRequirements=pin(target))
            self.wakeupAfter(REMOTE_START, payload=("remote-start", d.name, addr))
        self._placed[d.name] = target.name
        cluster_store.place(store, d.name, target.name, previous=previous,
                            requires=list(d.requires), actor=self.name)
        return addr

    def _unplaceable(self, d: AgentDef, reason: str) -> None:
        from naosd.storage import cluster as cluster_store

        self._placed.pop(d.name, None)
        cluster_store.unplaceable(self._db(), d.name, list(d.requires), reason, self.name)
        self.send(self.myAddress, Unplaceable(d.name, reason))
        return None

    def receiveMsg_Unplaceable(self, msg: Unplaceable, sender: Any) -> None:
        """Park the child: paused, with the reason as its last error (an
        operator's stop + start tries again)."""
        child = self._child(msg.name)
        if child is None or msg.name in self._addrs or child.run is not sv.ChildRun.STARTING:
            return
        now = time.monotonic()
        if not child.paused:
            self._apply(sv.Pause(msg.name))
        self._apply(sv.ChildExited(msg.name, True, f"unplaceable: {msg.reason}", now))

    def receiveMsg_NodeLost(self, msg: NodeLost, sender: Any) -> None:
        """Member ``msg.node`` is gone: its agents exited abnormally (and are
        restarted, placed again, by the strategy); pass it down the tree."""
        for name in [n for n, node in self._placed.items() if node == msg.node]:
            addr = self._addrs.get(name)
            if addr is None:
                continue
            self.send(addr, ActorExitRequest())  # in case the member is only cut off
            self._reasons[name] = f"node {msg.node} lost: {msg.reason}"
            self._child_exited(name)
        for name, addr in list(self._addrs.items()):
            if isinstance(self._defs.get(name), SupervisorDef):
                self.send(addr, msg)

    def _remote(self, name: str) -> bool:
        node = self._placed.get(name)
        return node is not None and node != self._local_node

    def _want_spare(self) -> None:
        """Keep one forked, uninitialised agent process ready, so a restart
        does not wait for a fork.  Made later, never on the restart path."""
        if self._spare is None and not self._spare_pending and not self._exiting:
            self._spare_pending = True
            self.wakeupAfter(SPARE_DELAY, payload=("spare", None, None))

    def _make_spare(self) -> None:
        self._spare_pending = False
        if self._spare is None and not self._exiting and not self._giving_up:
            self._spare = self.createActor(AgentActor)

    def _stop(self, name: str, timeout_s: float) -> None:
        addr = self._addrs.get(name)
        if addr is None:
            return
        self._stopping.add(name)
        self.send(addr, ActorExitRequest())
        self.wakeupAfter(timedelta(seconds=timeout_s), payload=("stop-timeout", name, addr))

    def _kill(self, name: str) -> None:
        pid = self._pids.get(name)
        if self._remote(name):
            self.logger().warning("%s: cannot SIGKILL %s on node %s", self.name, name,
                                  self._placed.get(name))
        elif pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _audit(self, type_: str, detail: dict[str, Any]) -> None:
        self._audit_all([sv.Audit(type_, detail)])

    def _audit_all(self, audits: list[Any]) -> None:
        try:
            with self._db().transaction() as tx:
                for a in audits:
                    child = a.detail.get("name")
                    agent = child if isinstance(self._defs.get(str(child)), AgentDef) else None
                    tx.audit(a.type, actor=self.name, agent=agent, detail=a.detail)
        except NaosError as exc:
            self.logger().error("%s: %d audit rows failed: %s", self.name, len(audits), exc)

    def _after(self) -> None:
        self.send(self._root, TreeUpdate(self.name, self._node()))
        if self._giving_up and not self._addrs:
            self.send(self._parent, ChildCrashed(self.name, f"gave up: {self._giving_up}"))
            self._exiting = True
            self.send(self.myAddress, ActorExitRequest())

    def _node(self) -> dict[str, Any]:
        assert self._state is not None
        node: dict[str, Any] = sv.tree_node(self._state)
        node["pid"] = os.getpid()
        if self._local_node is not None:
            for child in node.get("children", []):
                if child.get("name") in self._placed and child.get("name") in self._addrs:
                    child["node"] = self._placed[child["name"]]
        if self._giving_up:
            node["state"] = "failed"
        return node
