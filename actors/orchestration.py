"""The orchestration subtree: one actor per running saga or workflow, one per
pool, under the ``orchestration`` supervisor (a child of the root).

- :class:`CoordinatorActor` is the shell of one run: it holds the run's pure
  machine state (``actors/domain/saga.py``, ``workflow.py``) in a
  :class:`~actors.orchestration_run.RunDriver`, which persists each
  transition and asks agents through naosd's port, and arms timers with
  ``wakeupAfter``.  When its run is final and on disk it says so
  (:class:`RunFinished`) and is stopped; an operator's command for a
  finished run starts a coordinator again.
- :class:`OrchestrationSupervisor` starts coordinators (naosd's
  ``StartRun``), hands them operator commands, starts pool actors
  (``actors/orchestration_pool.py``), and restarts a child that crashed:
  the replacement loads its run's durable record through the port and
  carries on (``Recover``).  Too many crashes in a row and it gives up on
  that run (audited through the port).  When it starts (with naosd, or
  after a crash of its own) it asks naosd which runs and pools need an
  actor; naosd answers once the agents supervisor is up.

Actors here do no SQL: everything durable goes through the port.  The
supervisor pushes its node to the root, so ``naosctl status`` and the
dashboard show every coordinator with its state and pid.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import NaosActor, error_reply
from actors.domain import orch_tree as ot
from actors.domain import saga, workflow
from actors.domain.run_events import Machine, Recover, TimerFired
from actors.messages import ChildCrashed, ChildPid, GetTree, PortReply, Reply, TreeUpdate
from actors.orch_messages import (
    CoordinatorGaveUp,
    InitCoordinator,
    InitOrchestration,
    InitPool,
    LoadRun,
    PoolAddress,
    RecoverRuns,
    RunCommand,
    RunFinished,
    StartRun,
)
from actors.orchestration_pool import PoolActor
from actors.orchestration_run import RunDriver
from naosd.errors import Conflict, InvalidRequest, NaosError
from naosd.runtime.procs import process_alive

MACHINES: dict[str, Machine] = {m.kind: m for m in (saga.MACHINE, workflow.MACHINE)}
SWEEP = timedelta(milliseconds=250)
SPARE_DELAY = timedelta(milliseconds=50)
TREE_DELAY = timedelta(milliseconds=50)
RECOVER_RETRY = timedelta(seconds=1)
POOL_PREFIX = "pool:"


class CoordinatorActor(NaosActor):
    """The shell of one saga or workflow run."""

    def __init__(self) -> None:
        super().__init__()
        self._parent: Any = None
        self._machine: Machine | None = None
        self._run: RunDriver | None = None
        self._waiting: list[RunCommand] = []  # commands that came before the record
        self._crashed = False

    def receiveMsg_InitCoordinator(self, msg: InitCoordinator, sender: Any) -> None:
        self.name, self.port, self._parent = msg.run_id, msg.port, sender
        self._machine = MACHINES[msg.kind]
        self.send(sender, ChildPid(msg.run_id, os.getpid()))
        if msg.command is not None:
            self._waiting.append(msg.command)
        if msg.record is None:  # a restart: the run as it is on disk
            self.ask_port(LoadRun, self._loaded, run_id=msg.run_id)
        else:
            self._begin(msg.record, msg.epoch)

    def _loaded(self, reply: PortReply) -> None:
        if not reply.ok:
            self.run_crashed(None, f"cannot load the run: {reply.error_code}: {reply.message}")
            return
        self._begin(reply.result["record"], reply.result["epoch"])

    def _begin(self, record: dict[str, Any], epoch: int) -> None:
        """Drive the run from ``record``: an unfinished run carries on first
        (``Start`` if it never started, else ``Recover``), then the commands
        that came meanwhile are obeyed."""
        assert self._machine is not None
        try:
            state = self._machine.from_record(record)
        except NaosError as exc:
            self.run_crashed(None, f"cannot be recovered: {exc}")
            return
        self._run = RunDriver(self, self.name, epoch, self._machine.handle, state,
                              self._machine.is_final)
        if not self._run.final:
            self._run.safe_feed(self._machine.carry_on(state, time.time()))
        commands, self._waiting = self._waiting, []
        for command in commands:
            self._obey(command)
        self._run.settle()  # a final run (a refused command) is let go

    def receiveMsg_RunCommand(self, msg: RunCommand, sender: Any) -> None:
        if self._run is None:
            self._waiting.append(msg)
        else:
            self._obey(msg)

    def _obey(self, command: RunCommand) -> None:
        assert self._run is not None
        try:
            if isinstance(command.event, Recover):  # carried on when this shell began
                seq = self._run.seq
            else:
                seq = self._run.feed(command.event)
        except NaosError as exc:
            self.send(command.reply_to, error_reply(command, exc))
            self._run.settle()
            return
        self.send(command.reply_to, Reply(command.request_id, True, {
            "epoch": self._run.epoch, "seq": seq,
            "status": self._run.state.status.value}))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if self._run is not None and isinstance(msg.payload, tuple) and msg.payload[0] == "run":
            _, _, kind, step, attempt = msg.payload
            self._run.safe_feed(TimerFired(kind, step, attempt, time.time()))

    # -- Host ------------------------------------------------------------------
    def run_done(self, driver: RunDriver) -> None:
        self.send(self._parent, RunFinished(self.name))

    def run_crashed(self, driver: RunDriver | None, reason: str) -> None:
        """Let it crash: the supervisor restarts the run from its record."""
        if self._crashed:
            return
        self._crashed = True
        self.logger().warning("coordinator of %s crashes: %s", self.name, reason)
        self.send(self._parent, ChildCrashed(self.name, reason))
        self.send(self.myAddress, ActorExitRequest())


class OrchestrationSupervisor(NaosActor):
    """Starts, restarts and lists the coordinators and pool actors."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "orchestration"
        self._root: Any = None
        self._children: dict[str, ot.Child] = {}
        self._addrs: dict[str, Any] = {}
        self._reasons: dict[str, str] = {}
        self._spare: Any = None
        self._spare_pending = False
        self._tree_pending = False
        self._exiting = False

    # -- start -------------------------------------------------------------------
    def receiveMsg_InitOrchestration(self, msg: InitOrchestration, sender: Any) -> None:
        self.name, self.port, self._root = msg.name, msg.port, msg.root
        self.send(sender, ChildPid(msg.name, os.getpid()))
        self._tree_changed()
        self._recover()
        self.wakeupAfter(SWEEP, payload=("sweep",))
        self._want_spare()

    def _recover(self) -> None:
        self.ask_port(RecoverRuns, self._recovered)

    def _recovered(self, reply: PortReply) -> None:
        if not reply.ok:
            self.logger().warning("orchestration: recovery failed (%s: %s); trying again",
                                  reply.error_code, reply.message)
            self.wakeupAfter(RECOVER_RETRY, payload=("recover",))
            return
        for run_id, kind in reply.result["runs"]:
            if run_id not in self._children:
                self._start(run_id, kind, InitCoordinator(run_id, kind, self.port))
        for pool in reply.result["pools"]:
            self._pool(pool)

    # -- requests from naosd -------------------------------------------------------
    def receiveMsg_StartRun(self, msg: StartRun, sender: Any) -> None:
        if msg.kind not in MACHINES:
            raise InvalidRequest(f"no coordinator for runs of kind {msg.kind!r}")
        if msg.run_id not in self._children:  # else started already (by recovery)
            self._start(msg.run_id, msg.kind, InitCoordinator(
                msg.run_id, msg.kind, self.port, msg.record, msg.epoch))
        self.reply(sender, msg)

    def receiveMsg_RunCommand(self, msg: RunCommand, sender: Any) -> None:
        if msg.kind not in MACHINES:
            raise InvalidRequest(f"no coordinator for runs of kind {msg.kind!r}")
        command = RunCommand(msg.request_id, msg.run_id, msg.kind, msg.event, sender)
        child = self._children.get(msg.run_id)
        if child is not None and child.state is not ot.State.FINISHING:
            if isinstance(msg.event, Recover):
                raise Conflict(f"run {msg.run_id!r} is already being run")
            self.send(self._addrs[msg.run_id], command)
            return
        if child is not None:
            raise Conflict(f"run {msg.run_id!r} is just finishing; try again")
        self._start(msg.run_id, msg.kind,
                    InitCoordinator(msg.run_id, msg.kind, self.port, command=command))

    def receiveMsg_PoolAddress(self, msg: PoolAddress, sender: Any) -> None:
        self.reply(sender, msg, self._pool(msg.pool))

    def receiveMsg_GetTree(self, msg: GetTree, sender: Any) -> None:
        self.reply(sender, msg, self._node())

    # -- children ------------------------------------------------------------------
    def _pool(self, pool: str) -> Any:
        name = POOL_PREFIX + pool
        if name not in self._children:
            self._start(name, "pool", InitPool(pool, self.port))
        return self._addrs[name]

    def _start(self, name: str, kind: str, init: Any) -> None:
        if kind == "pool":
            addr = self.createActor(PoolActor)
        else:
            addr, self._spare = self._spare, None
            if addr is None:
                addr = self.createActor(CoordinatorActor)
            self._want_spare()
        self._children[name] = self._children.get(name) or ot.Child(name, kind)
        self._addrs[name] = addr
        self.send(addr, init)
        self._tree_changed()

    def _restart_init(self, child: ot.Child) -> Any:
        if child.kind == "pool":
            return InitPool(child.name[len(POOL_PREFIX):], self.port)
        return InitCoordinator(child.name, child.kind, self.port)

    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        child = self._children.get(msg.name)
        if child is not None and self._addrs.get(msg.name) == sender:
            self._children[msg.name] = ot.started(child, msg.pid)
            self._tree_changed()

    def receiveMsg_ChildCrashed(self, msg: ChildCrashed, sender: Any) -> None:
        if self._addrs.get(msg.name) == sender:
            self._reasons[msg.name] = msg.reason

    def receiveMsg_RunFinished(self, msg: RunFinished, sender: Any) -> None:
        child = self._children.get(msg.run_id)
        if child is None or self._addrs.get(msg.run_id) != sender:
            return
        self._children[msg.run_id] = ot.finishing(child)
        self.send(sender, ActorExitRequest())
        self._tree_changed()

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self._spare is not None and msg.childAddress == self._spare:
            self._spare = None
            self._want_spare()
            return
        name = next((n for n, a in self._addrs.items() if a == msg.childAddress), None)
        if name is not None:
            self._exited(name)

    def _exited(self, name: str) -> None:
        if self._exiting or name not in self._addrs:
            return
        del self._addrs[name]
        reason = self._reasons.pop(name, "process died")
        child, decision = ot.exited(self._children[name], time.time(), reason)
        match decision:
            case ot.Decision.FORGET:
                del self._children[name]
            case ot.Decision.RESTART:
                self._children[name] = child
                self._start(name, child.kind, self._restart_init(child))
            case ot.Decision.GIVE_UP:
                del self._children[name]
                self.logger().error("orchestration: gave up on %s after %d crashes: %s",
                                    name, len(child.crashes), reason)
                self.ask_port(CoordinatorGaveUp, _ignore, run_id=name, kind=child.kind,
                              reason=f"{len(child.crashes)} crashes within "
                                     f"{ot.WINDOW_S:g}s, last: {reason}")
        self._tree_changed()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        match msg.payload:
            case ("sweep",):
                self._sweep()
            case ("spare",):
                self._spare_pending = False
                if self._spare is None and not self._exiting:
                    self._spare = self.createActor(CoordinatorActor)
            case ("tree",):
                self._tree_pending = False
                self.send(self._root, TreeUpdate(self.name, self._node()))
            case ("recover",):
                self._recover()

    def _sweep(self) -> None:
        """Safety net: Thespian can lose a ChildActorExited when several
        children die at once; a child whose process is gone has exited."""
        for name, child in list(self._children.items()):
            if child.pid is not None and name in self._addrs and not process_alive(child.pid):
                self._exited(name)
        if not self._exiting:
            self.wakeupAfter(SWEEP, payload=("sweep",))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops the children with us

    # -- helpers -----------------------------------------------------------------
    def _want_spare(self) -> None:
        """Keep one forked coordinator ready, so a run's start does not wait
        for a fork.  Made later, never on the start path."""
        if self._spare is None and not self._spare_pending and not self._exiting:
            self._spare_pending = True
            self.wakeupAfter(SPARE_DELAY, payload=("spare",))

    def _tree_changed(self) -> None:
        """Push the node to the root, at most every TREE_DELAY."""
        if not self._tree_pending and self._root is not None:
            self._tree_pending = True
            self.wakeupAfter(TREE_DELAY, payload=("tree",))

    def _node(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "orchestration", "state": "running",
                "pid": os.getpid(), "restarts": 0,
                "children": [ot.node(c) for c in self._children.values()]}


def _ignore(reply: PortReply) -> None:
    """A port answer nobody needs."""
