"""SupervisorActor: the thin shell around the OTP state machine in
:mod:`actors.domain.supervision`.

It decides nothing. It turns Thespian's signals and its children's reports
into domain events, each tagged with the incarnation of the process it came
from (``ChildSpawned``, ``ChildPid`` -> started, ``ChildCrashed`` /
``ChildDone`` -> exit notice, ``ChildActorExited`` or a dead pid -> gone),
and performs the domain's effects: create a child actor, ask it to stop
(with a timer that feeds the stop timeout), SIGKILL, arm a backoff timer,
forget a process, log an alert, write audit rows, give up (tell the parent
why and exit: the parent sees an abnormal exit and applies its own strategy).
What it keeps is what the machine cannot: each child's current address and
pid, a spare agent process, handler probes, and (cluster mode) placements.

A supervisor reads its definition and its children from SQLite every time
it starts, so a restarted supervisor runs the current tree; ``Sync`` makes a
running one reconcile with the database.  Every change of state is pushed to
the root (``TreeUpdate``, ``Registered``) so naosd can draw the tree and find
agents.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.agent import AgentActor
from actors.base import NaosActor
from actors.cluster_messages import HostedFor, NodeLost
from actors.domain import supervision as sv
from actors.domain.definitions import AgentDef, SupervisorDef
from actors.messages import (
    Activate,
    ChildCrashed,
    ChildDone,
    ChildPid,
    ChildSpawned,
    Deactivate,
    ExitNoted,
    GetTree,
    InitAgent,
    InitSupervisor,
    ProbeAgent,
    ProbeResult,
    Registered,
    Sync,
    TreeUpdate,
)
from actors.probes import Probes
from actors.supervision_driver import MachineDriver
from naosd.errors import NaosError
from naosd.runtime.procs import process_alive

SWEEP = timedelta(milliseconds=250)
SPARE_DELAY = timedelta(milliseconds=50)
# A child placed on another node that has not reported its pid by then has
# not started (the member may have died between choice and creation:
# Thespian then drops the creation without telling the parent).
REMOTE_START = timedelta(seconds=15)


def child_spec(d: AgentDef | SupervisorDef) -> sv.ChildSpec:
    kind = "agent" if isinstance(d, AgentDef) else "supervisor"
    timeout = d.shutdown_timeout_s if isinstance(d, AgentDef) else 30.0
    return sv.ChildSpec(d.name, kind, sv.RestartType(d.restart), timeout)


def supervisor_spec(d: SupervisorDef, children: list[AgentDef | SupervisorDef]
                    ) -> sv.SupervisorSpec:
    return sv.SupervisorSpec(
        d.name, sv.Strategy(d.strategy), d.max_restarts, d.window_s,
        d.backoff_initial_s, d.backoff_max_s, tuple(child_spec(c) for c in children),
        sv.Intensity(d.intensity))


@dataclass(slots=True)
class Proc:
    """One process of a child: the incarnation the machine gave it."""

    incarnation: int
    address: Any
    pid: int | None = None


class SupervisorActor(NaosActor):
    def __init__(self) -> None:
        super().__init__()
        self._machine: MachineDriver | None = None
        self._defs: dict[str, AgentDef | SupervisorDef] = {}
        self._procs: dict[str, Proc] = {}  # child -> its current process
        self._exited: dict[str, Proc] = {}  # child -> its last process that exited
        self._spare: Any = None
        self._spare_pending = False
        self._probes = Probes(self.send)
        self._parent: Any = None
        self._root: Any = None
        self._db_path = ""
        self._checkpoint = ""
        self._store: Any = None
        self._exiting = False
        self._local_node: str | None = None  # None: cluster mode is off
        self._placed: dict[str, str] = {}  # agent -> node (cluster mode)
        self._run = ""  # the leader incarnation agents placed elsewhere are fenced by

    # -- start ---------------------------------------------------------------
    def receiveMsg_InitSupervisor(self, msg: InitSupervisor, sender: Any) -> None:
        from naosd.storage import cluster as cluster_store
        from naosd.storage import definitions as defs_store

        self.name = msg.name
        self._parent, self._root = sender, msg.root
        self._db_path, self._checkpoint = msg.db_path, msg.checkpoint_path
        self._local_node = cluster_store.local_node(self._db())
        self._run = cluster_store.run_id(self._db()) if self._local_node else ""
        definition = defs_store.get_supervisor(self._db(), self.name)
        state = sv.initial(supervisor_spec(definition, self._wanted()))
        self._machine = MachineDriver(state, self._perform, self._warn)
        self.send(self._root, Registered(self.name, "supervisor", self.myAddress,
                                         os.getpid(), ""))
        self.send(sender, ChildPid(self.name, os.getpid()))
        self._apply(sv.Boot(time.monotonic()))
        self.wakeupAfter(SWEEP, payload=("sweep", None, None))
        self._want_spare()

    def _wanted(self) -> list[AgentDef | SupervisorDef]:
        """The children the database wants running (their definitions kept)."""
        from naosd.storage import definitions as defs_store

        children = [c for c in defs_store.children_of(self._db(), self.name)
                    if c.desired == "running"]
        self._defs.update((c.name, c) for c in children)
        return children

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
        wanted = tuple(child_spec(d) for d in self._wanted())
        self._apply(sv.Reconcile(wanted, time.monotonic(), msg.stop, msg.start))
        self.reply(sender, msg, self._node())

    def receiveMsg_Activate(self, msg: Activate, sender: Any) -> None:
        """Run an agent on demand: it stays until naosd deactivates it."""
        from naosd.storage import definitions as defs_store

        d = defs_store.get_agent(self._db(), msg.name)
        self._defs[msg.name] = d
        self._apply(sv.Activate(child_spec(d), time.monotonic()), strict=True)
        self.reply(sender, msg)

    def receiveMsg_Deactivate(self, msg: Deactivate, sender: Any) -> None:
        self._apply(sv.Deactivate(msg.name, time.monotonic()))
        self.reply(sender, msg)

    def receiveMsg_ProbeAgent(self, msg: ProbeAgent, sender: Any) -> None:
        """Load a handler in a throwaway agent process and answer whether it loads."""
        address = self._take_spare()
        self._probes.add(address, sender, msg)
        self.send(address, InitAgent(msg.definition, self._db_path, probe=True))
        self.wakeupAfter(timedelta(seconds=msg.timeout_s), payload=("probe", None, address))
        self._want_spare()

    # -- reports from children --------------------------------------------------
    def receiveMsg_ChildSpawned(self, msg: ChildSpawned, sender: Any) -> None:
        found = self._proc_of(sender)
        if found is None:
            self._probes.spawned(sender, msg.pid)
            return
        name, proc = found
        proc.pid = msg.pid
        self._apply(sv.ChildSpawned(name, msg.pid, time.monotonic(), proc.incarnation))

    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        found = self._proc_of(sender)
        if found is None:
            return
        name, proc = found
        proc.pid = msg.pid

        def register() -> None:  # after the tree update, before the audit rows
            if isinstance(self._defs.get(name), AgentDef):
                self.send(self._root, Registered(name, "agent", sender, msg.pid, self.name))

        now = time.monotonic()
        self._apply(sv.ChildStarted(name, msg.pid, now, proc.incarnation), then=register)

    def receiveMsg_ProbeResult(self, msg: ProbeResult, sender: Any) -> None:
        self._probes.answer(sender, msg.error)

    def receiveMsg_ChildCrashed(self, msg: ChildCrashed, sender: Any) -> None:
        self._notice(sender, msg.name, False, msg.reason)

    def receiveMsg_ChildDone(self, msg: ChildDone, sender: Any) -> None:
        self._notice(sender, msg.name, True, "")

    def _notice(self, sender: Any, said: str, normal: bool, reason: str) -> None:
        found = self._proc_of(sender) or self._proc_of(sender, self._exited)
        if found is not None:
            name, proc = found
            self._apply(sv.ExitNotice(name, normal, reason, proc.incarnation))
        self.send(sender, ExitNoted(said))  # the child waits for this to exit

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        address = msg.childAddress
        if self._spare is not None and address == self._spare:
            self._spare = None
            self._want_spare()
        elif not self._probes.exited(address):
            found = self._proc_of(address)
            if found is not None:
                self._gone(found[0])

    def _sweep(self) -> None:
        """Safety net: Thespian sometimes loses one ChildActorExited when
        several children die at once; a child whose process is gone is
        treated as exited (a late ChildActorExited then finds nothing).
        Only local children: a pid on another node means nothing here."""
        for name, proc in list(self._procs.items()):
            if proc.pid is not None and not self._remote(name) and not process_alive(proc.pid):
                self._gone(name)
        self._probes.sweep()
        if not self._exiting:
            self.wakeupAfter(SWEEP, payload=("sweep", None, None))

    def _gone(self, name: str) -> None:
        if self._exiting or name not in self._procs:
            return
        proc = self._procs.pop(name)
        self._exited[name] = proc
        self._unregister(name)
        self._apply(sv.ProcessGone(name, time.monotonic(), proc.incarnation))

    def _unregister(self, name: str) -> None:
        from naosd.storage import cluster as cluster_store

        self.send(self._root, Registered(name, "agent", None, None, self.name))
        if self._local_node is not None and name in self._placed:  # kept: "previous" node
            cluster_store.unplace(self._db(), name)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        kind, name, tag = msg.payload
        now = time.monotonic()
        if kind == "sweep":
            self._sweep()
        elif kind == "spare":
            self._make_spare()
        elif kind == "probe":
            self._probes.timed_out(tag)
        elif kind == "stop-timeout":
            self._apply(sv.StopTimeout(name, now))
        elif kind == "backoff":
            self._apply(sv.BackoffElapsed(name, now))
        elif kind == "remote-start":
            why = f"did not start on node {tag[1]} within {REMOTE_START.total_seconds():g}s"
            self._apply(sv.StartTimedOut(name, why, now, tag[0]))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops our children with us

    def receiveMsg_NodeLost(self, msg: NodeLost, sender: Any) -> None:
        """Member ``msg.node`` is gone: its agents exited abnormally (and are
        restarted, placed again, by the strategy); pass it down the tree."""
        now = time.monotonic()
        for name in [n for n, node in self._placed.items() if node == msg.node]:
            proc = self._procs.get(name)
            if proc is not None:
                why = f"node {msg.node} lost: {msg.reason}"
                self._apply(sv.ChildLost(name, why, now, proc.incarnation))
        for name, proc in list(self._procs.items()):
            if isinstance(self._defs.get(name), SupervisorDef):
                self.send(proc.address, msg)

    # -- driving the domain ------------------------------------------------------
    @property
    def _state(self) -> sv.SupState:
        assert self._machine is not None
        return self._machine.state

    def _apply(self, event: Any, then: Callable[[], None] | None = None, *,
               strict: bool = False) -> None:
        """Feed ``event`` to the state machine and act.  Audit rows are
        written last, in one transaction: a replacement process is never
        kept waiting for the disk.  With ``strict`` the machine's refusal of
        ``event`` is raised."""
        assert self._machine is not None
        audits = self._machine.apply(event, strict=strict)
        self._after()
        if then is not None:
            then()
        if audits:
            self._audit_all(audits)

    def _warn(self, text: str) -> None:
        self.logger().warning("%s: %s", self.name, text)

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
            case sv.Forget(name):
                self._forget(name)
            case sv.Alert(message):
                self._warn(message)
            case sv.GiveUp(reason):
                self.send(self._parent, ChildCrashed(self.name, f"gave up: {reason}"))
                self._exiting = True
                self.send(self.myAddress, ActorExitRequest())

    def _start(self, name: str) -> None:
        d, incarnation = self._defs[name], self._state.child(name).incarnation
        if isinstance(d, SupervisorDef):
            address = self.createActor(SupervisorActor)
            self._procs[name] = Proc(incarnation, address)
            self.send(address, InitSupervisor(name, self._db_path, self._checkpoint,
                                              self._root))
            return
        placed = self._local_node is not None or bool(d.requires)
        address = self._start_placed(d) if placed else self._take_spare()
        if address is None:
            return  # unplaceable: the machine has been told
        self._procs[name] = Proc(incarnation, address)
        self.send(address, InitAgent(d, self._db_path, remote=self._remote(name)))
        if self._remote(name):
            self.send(address, HostedFor(self._run))
            self.wakeupAfter(REMOTE_START, payload=("remote-start", name,
                                                    (incarnation, self._placed[name])))
        self._want_spare()

    def _stop(self, name: str, timeout_s: float) -> None:
        proc = self._procs.get(name)
        if proc is None:  # no process to stop (it never came to be): it is down
            self._follow(sv.ProcessGone(name, time.monotonic()))
            return
        self.send(proc.address, ActorExitRequest())
        self.wakeupAfter(timedelta(seconds=timeout_s), payload=("stop-timeout", name, None))

    def _follow(self, event: Any) -> None:
        assert self._machine is not None
        self._machine.follow(event)

    def _kill(self, name: str) -> None:
        proc = self._procs.get(name)
        if self._remote(name):
            self.logger().warning("%s: cannot SIGKILL %s on node %s", self.name, name,
                                  self._placed.get(name))
        elif proc is not None and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    def _forget(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            self.send(proc.address, ActorExitRequest())  # in case it is only cut off
            self._exited[name] = proc
            self._unregister(name)

    def _proc_of(self, address: Any, procs: dict[str, Proc] | None = None
                 ) -> tuple[str, Proc] | None:
        # Linear and by ==: a local address and the child's real address
        # compare equal but need not hash alike.
        table = self._procs if procs is None else procs
        return next(((n, p) for n, p in table.items() if p.address == address), None)

    # -- cluster mode: placement ------------------------------------------------
    def _start_placed(self, d: AgentDef) -> Any:
        """Create agent ``d`` on the node naosd chooses for it (None: no node
        can run it now; the machine is told it is unplaceable)."""
        from actors.domain.placement import choose, parse_requirements, pin
        from naosd.storage import cluster as cluster_store

        req = parse_requirements(d.requires)
        if self._local_node is None:
            return self._unplaceable(d, f"requires {req} but cluster mode is off")
        store = self._db()
        previous = self._placed.get(d.name)
        target = choose(req, cluster_store.nodes(store), cluster_store.loads(store))
        if target is None:
            return self._unplaceable(d, f"no node that is up has {req}")
        if target.local:
            address = self._take_spare()
        else:
            address = self.createActor(AgentActor, targetActorRequirements=pin(target))
        self._placed[d.name] = target.name
        cluster_store.place(store, d.name, target.name, previous=previous,
                            requires=list(d.requires), actor=self.name)
        return address

    def _unplaceable(self, d: AgentDef, reason: str) -> None:
        from naosd.storage import cluster as cluster_store

        self._placed.pop(d.name, None)
        cluster_store.unplaceable(self._db(), d.name, list(d.requires), reason, self.name)
        self._follow(sv.Unplaceable(d.name, reason, time.monotonic()))

    def _remote(self, name: str) -> bool:
        node = self._placed.get(name)
        return node is not None and node != self._local_node

    # -- spare process ------------------------------------------------------------
    def _want_spare(self) -> None:
        """Keep one forked, uninitialised agent process ready, so a restart
        does not wait for a fork.  Made later, never on the restart path."""
        if self._spare is None and not self._spare_pending and not self._exiting:
            self._spare_pending = True
            self.wakeupAfter(SPARE_DELAY, payload=("spare", None, None))

    def _make_spare(self) -> None:
        self._spare_pending = False
        if self._spare is None and not self._exiting:
            self._spare = self.createActor(AgentActor)

    def _take_spare(self) -> Any:
        address, self._spare = self._spare, None
        return address if address is not None else self.createActor(AgentActor)

    # -- audit and the tree -------------------------------------------------------
    def _audit_all(self, audits: list[sv.Audit]) -> None:
        try:
            with self._db().transaction() as tx:
                for a in audits:
                    agent = a.detail.get("name") if a.type.startswith("agent.") else None
                    tx.audit(a.type, actor=self.name, agent=agent, detail=a.detail)
        except NaosError as exc:
            self.logger().error("%s: %d audit rows failed: %s", self.name, len(audits), exc)

    def _after(self) -> None:
        names = {c.name for c in self._state.children}
        self._defs = {n: d for n, d in self._defs.items() if n in names}
        self._exited = {n: p for n, p in self._exited.items() if n in names}
        self.send(self._root, TreeUpdate(self.name, self._node()))

    def _node(self) -> dict[str, Any]:
        node: dict[str, Any] = sv.tree_node(self._state)
        node["pid"] = os.getpid()
        if self._local_node is not None:
            for child in node.get("children", []):
                if child.get("name") in self._placed and child.get("name") in self._procs:
                    child["node"] = self._placed[child["name"]]
        return node
