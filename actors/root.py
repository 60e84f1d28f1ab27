"""RootSupervisor: the top of the actor tree, and the name registry.

Its children are the daemon's own actors (heartbeat, sandbox pool, cluster
monitor), the implicit ``agents`` supervisor and every top-level user
supervisor. It supervises them with the same pure state machine as every
supervisor (:mod:`actors.domain.supervision`), one_for_one with per-child
intensity: the daemon's own actors and the implicit supervisor are
critical (restarted at once, always); a user supervisor that gives up is
restarted at once, then with a backoff, and after too many give-ups in a row
it is failed until an operator starts it again (``supervisor start``).

Children are registered by LOGICAL name: their Thespian address changes on
every restart. Reports are matched against the *current* process of each
child (its incarnation), so a duplicate ``ChildActorExited`` or an exit of a
replaced instance is stale and ignored.

The root is a top-level actor: its parent is the admin, and nobody is told if
it dies (naosd's health check has to Ping it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import NaosActor
from actors.domain import supervision as sv
from actors.domain.definitions import IMPLICIT_SUPERVISOR
from actors.messages import (
    ChildCrashed,
    ChildPid,
    Crash,
    CrashChild,
    GetTree,
    InitChild,
    InitRoot,
    InitSandbox,
    InitSupervisor,
    KillChild,
    Registered,
    Resolve,
    StartChild,
    StopChild,
    Sync,
    TreeUpdate,
    WhereIs,
)
from actors.root_registry import Registry
from actors.supervision_driver import MachineDriver
from actors.system_children import CHILD_KINDS, DEFAULT_CHILDREN
from naosd.errors import Conflict, InvalidRequest

ROOT_SPEC: Final = sv.SupervisorSpec(
    "root", sv.Strategy.ONE_FOR_ONE, max_restarts=5, window_s=10.0,
    backoff_initial_s=0.5, backoff_max_s=30.0, intensity=sv.Intensity.CHILD,
    # the root writes rows only for restarts and failures of its children
    audit_verbs=frozenset({"restarted", "failed", "crashed", "exited", "killed"}),
)


def root_child(name: str, kind: str) -> sv.ChildSpec:
    """The machine's spec of a root child of actor ``kind``."""
    if kind == "supervisor":
        return sv.ChildSpec(name, "supervisor", shutdown_timeout_s=30.0,
                            critical=name == IMPLICIT_SUPERVISOR)
    return sv.ChildSpec(name, "service", critical=True)


class RootSupervisor(NaosActor):
    """Starts the default children, supervises them, keeps the registry."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "root"
        self._machine = MachineDriver(sv.initial(ROOT_SPEC), self._perform, self._warn)
        self._kinds: dict[str, str] = {}  # child -> its actor kind
        self._procs: dict[str, tuple[int, Any, int | None]] = {}  # incarnation, address, pid
        self._exiting = False
        self._env: InitRoot | None = None
        self._db: Any = None
        self._registry = Registry(self)
        self._cluster: Any = None  # InitCluster, in cluster mode on the leader

    def on_start(self) -> None:
        self._kinds.update(DEFAULT_CHILDREN)
        specs = tuple(root_child(name, kind) for name, kind in DEFAULT_CHILDREN)
        self._machine.state = sv.initial(replace(ROOT_SPEC, children=specs))
        self._apply(sv.Boot(time.monotonic()))

    @property
    def _state(self) -> sv.SupState:
        return self._machine.state

    # -- requests ----------------------------------------------------------

    def receiveMsg_GetTree(self, msg: GetTree, sender: Any) -> None:
        self.reply(sender, msg, self._tree())

    def receiveMsg_StartChild(self, msg: StartChild, sender: Any) -> None:
        if msg.kind not in CHILD_KINDS:
            raise InvalidRequest(f"unknown child kind {msg.kind!r}")
        self._ensure(msg.name, msg.kind, strict=True)
        self.reply(sender, msg)

    def receiveMsg_StopChild(self, msg: StopChild, sender: Any) -> None:
        self._apply(sv.StopChild(msg.name, time.monotonic()), strict=True)
        self.reply(sender, msg)

    def receiveMsg_CrashChild(self, msg: CrashChild, sender: Any) -> None:
        self.send(self._address(msg.name), Crash())
        self.reply(sender, msg)

    def receiveMsg_KillChild(self, msg: KillChild, sender: Any) -> None:
        self._state.child(msg.name)  # NotFound
        pid = self._procs[msg.name][2] if msg.name in self._procs else None
        if pid is None:
            raise Conflict(f"child {msg.name!r} has not reported a pid yet")
        os.kill(pid, signal.SIGKILL)
        self.reply(sender, msg, pid)

    def receiveMsg_WhereIs(self, msg: WhereIs, sender: Any) -> None:
        self.reply(sender, msg, self._address(msg.name))

    # -- user supervisors, the cluster monitor -------------------------------

    def receiveMsg_InitRoot(self, msg: InitRoot, sender: Any) -> None:
        self._env = msg
        self.port = msg.port
        self._ensure("sandbox", "sandbox-pool")
        self._sync_supervisors(())
        self._ensure("orchestration", "orchestration")  # after the agents supervisor
        self.reply(sender, msg)

    def receiveMsg_InitCluster(self, msg: Any, sender: Any) -> None:
        self._cluster = msg
        self._ensure("cluster", "cluster")
        self.reply(sender, msg)

    def receiveMsg_NodeLost(self, msg: Any, sender: Any) -> None:
        """A member is gone: every supervisor places its agents from there again."""
        for name, (_, address, _) in self._procs.items():
            if self._kinds.get(name) == "supervisor":
                self.send(address, msg)

    def receiveMsg_Sync(self, msg: Sync, sender: Any) -> None:
        if self._env is None:
            raise Conflict("the root has no database yet (InitRoot)")
        self._sync_supervisors(msg.start)
        self.reply(sender, msg, self._tree())

    def _sync_supervisors(self, start: tuple[str, ...]) -> None:
        """Run the implicit supervisor and every top-level user supervisor
        whose desired state is running; stop the others."""
        from naosd.storage import definitions as defs_store

        wanted = [IMPLICIT_SUPERVISOR] + [
            d.name for d in defs_store.list_supervisors(self._store(), parent=None)
            if d.desired == "running"]
        self._kinds.update(dict.fromkeys(wanted, "supervisor"))
        specs = tuple(root_child(name, "supervisor") for name in wanted)
        self._apply(sv.Reconcile(specs, time.monotonic(), start=start, kinds=("supervisor",)))

    def _ensure(self, name: str, kind: str, *, strict: bool = False) -> None:
        """Start child ``name`` of actor ``kind``: add it, or start it if stopped."""
        child = self._state.find(name)
        self._kinds[name] = kind
        if child is None:
            self._apply(sv.AddChild(root_child(name, kind), time.monotonic()), strict=strict)
        elif child.run in (sv.ChildRun.STOPPED, sv.ChildRun.FAILED) or strict:
            self._apply(sv.StartChild(name, time.monotonic()), strict=strict)

    def _store(self) -> Any:
        from naosd.storage.store import Store

        if self._db is None:
            assert self._env is not None
            self._db = Store.open(Path(self._env.db_path),
                                  checkpoint_path=Path(self._env.checkpoint_path))
        return self._db

    # -- the name registry (actors.root_registry) ----------------------------

    def receiveMsg_Registered(self, msg: Registered, sender: Any) -> None:
        self._registry.registered(msg)

    def receiveMsg_TreeUpdate(self, msg: TreeUpdate, sender: Any) -> None:
        self._registry.tree_update(msg)

    def receiveMsg_Resolve(self, msg: Resolve, sender: Any) -> None:
        self._registry.resolve(msg, sender)

    # -- supervision: reports in, effects out ------------------------------

    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        found = self._proc_of(sender)
        if found is not None:
            name, (incarnation, address, _) = found
            self._procs[name] = (incarnation, address, msg.pid)
            self._apply(sv.ChildStarted(name, msg.pid, time.monotonic(), incarnation))

    def receiveMsg_ChildCrashed(self, msg: ChildCrashed, sender: Any) -> None:
        found = self._proc_of(sender)
        if found is not None:
            name, (incarnation, _, _) = found
            self._apply(sv.ExitNotice(name, False, msg.reason, incarnation))

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        found = self._proc_of(msg.childAddress)
        if found is None or self._exiting:
            return  # a duplicate, a replaced instance, or we are going down
        name, (incarnation, _, _) = found
        del self._procs[name]
        if self._kinds.get(name) == "supervisor":
            self._registry.forget(name)
        self._apply(sv.ProcessGone(name, time.monotonic(), incarnation))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        kind, name, tag = msg.payload
        if kind == "resolve":
            self._registry.wait_over(name, tag)
        elif kind == "stop-timeout":
            self._apply(sv.StopTimeout(name, time.monotonic()))
        elif kind == "backoff":
            self._apply(sv.BackoffElapsed(name, time.monotonic()))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops the children; do not restart them

    def _apply(self, event: Any, *, strict: bool = False) -> None:
        """Feed ``event`` to the machine and act; with ``strict`` its refusal
        of ``event`` is raised."""
        for audit in self._machine.apply(event, strict=strict):
            self._audit(audit.type, audit.detail)
        for child in self._state.children:
            if child.run is sv.ChildRun.FAILED:
                self._registry.failed(child.name, child.last_error)

    def _warn(self, text: str) -> None:
        self.logger().warning("root: %s", text)

    def _perform(self, effect: Any) -> None:
        match effect:
            case sv.Start(name):
                self._spawn(name)
            case sv.Stop(name, timeout_s):
                self._stop(name, timeout_s)
            case sv.Kill(name):
                self._kill(name)
            case sv.Schedule(name, delay_s):
                self.wakeupAfter(timedelta(seconds=delay_s), payload=("backoff", name, None))
            case sv.Alert(message):
                self._warn(message)

    def _spawn(self, name: str) -> None:
        actor_class, init = self._how_to_start(name, self._kinds[name])
        address = self.createActor(actor_class)
        self._procs[name] = (self._state.child(name).incarnation, address, None)
        self.send(address, init)

    def _stop(self, name: str, timeout_s: float) -> None:
        if name not in self._procs:  # no process to stop (it never came to be): it is down
            self._machine.follow(sv.ProcessGone(name, time.monotonic()))
            return
        self.send(self._procs[name][1], ActorExitRequest())
        self.wakeupAfter(timedelta(seconds=timeout_s), payload=("stop-timeout", name, None))

    def _kill(self, name: str) -> None:
        pid = self._procs[name][2] if name in self._procs else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _how_to_start(self, name: str, kind: str) -> tuple[type, Any]:
        """The actor class of a child of ``kind`` and its first message."""
        if kind == "sandbox-pool":
            from actors.sandbox import SandboxPool

            assert self._env is not None
            cache = str(Path(self._env.db_path).parent / "wasm-cache")
            return SandboxPool, InitSandbox(name, self._env.db_path, cache,
                                            self._env.sandbox_workers)
        if kind == "orchestration":
            from actors.orch_messages import InitOrchestration
            from actors.orchestration import OrchestrationSupervisor

            return OrchestrationSupervisor, InitOrchestration(name, self.port, self.myAddress)
        if kind == "cluster":
            from actors.cluster import ClusterMonitor

            return ClusterMonitor, self._cluster
        if kind == "supervisor":
            from actors.supervisor import SupervisorActor

            assert self._env is not None
            return SupervisorActor, InitSupervisor(name, self._env.db_path,
                                                   self._env.checkpoint_path, self.myAddress)
        return CHILD_KINDS[kind], InitChild(name)

    def _audit(self, type_: str, detail: dict[str, Any]) -> None:
        if self._env is None:
            return
        try:
            self._store().append_audit(type_, actor="root", detail=detail)
        except Exception as exc:  # noqa: BLE001 - never let the audit stop supervision
            self.logger().error("root: audit %s failed: %s", type_, exc)

    # -- helpers -----------------------------------------------------------

    def _proc_of(self, address: Any) -> tuple[str, tuple[int, Any, int | None]] | None:
        # Linear and by ==: a local address and the child's real address compare
        # equal but need not hash alike.
        return next(((n, p) for n, p in self._procs.items() if p[1] == address), None)

    def _address(self, name: str) -> Any:
        self._state.child(name)  # NotFound
        if name not in self._procs:
            raise Conflict(f"child {name!r} is not running")
        return self._procs[name][1]

    def _tree(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "root",
            "state": "running",
            "pid": os.getpid(),
            "restarts": 0,
            "children": [self._registry.expand(self._child_node(c))
                         for c in self._state.children],
        }

    def _child_node(self, child: sv.ChildState) -> dict[str, Any]:
        node: dict[str, Any] = {
            "name": child.name, "kind": self._kinds.get(child.name, "?"),
            "state": child.run.value, "pid": child.pid, "restarts": child.restarts,
            "children": [],
        }
        if child.last_error and child.run is not sv.ChildRun.RUNNING:
            node["last_error"] = child.last_error
        return node


