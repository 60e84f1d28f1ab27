"""RootSupervisor: the top of the actor tree, one_for_one supervision.

Children are registered by LOGICAL name: their Thespian address changes on
every restart. Per child the supervisor keeps a
:class:`~actors.domain.restart.ChildStatus` (state, pid, restart count) and the
current address; what to do on an exit is decided by the pure functions in
:mod:`actors.domain.restart`.

``ChildActorExited`` carries no reason and can arrive twice: an exit is
matched against the *current* address of each child, and the address is
forgotten once handled, so a duplicate (or an exit of a replaced instance)
finds nothing and is ignored.

The root is a top-level actor: its parent is the admin, and nobody is told if
it dies (naosd's health check has to Ping it).
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import NaosActor, error_reply
from actors.domain.restart import (
    ChildState,
    ChildStatus,
    Decision,
    on_exit,
    on_started,
    on_stop,
)
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
from actors.system_children import CHILD_KINDS, DEFAULT_CHILDREN
from naosd.errors import Conflict, InvalidRequest, NotFound


class RootSupervisor(NaosActor):
    """Starts the default children, restarts any that exit, answers GetTree."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "root"
        self._children: dict[str, ChildStatus] = {}
        self._addrs: dict[str, Any] = {}
        self._exiting = False
        self._env: InitRoot | None = None
        self._registry: dict[str, Registered] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._reasons: dict[str, str] = {}
        self._waiters: dict[str, list[tuple[Any, Resolve]]] = {}
        self._cluster: Any = None  # InitCluster, in cluster mode on the leader

    def on_start(self) -> None:
        for name, kind in DEFAULT_CHILDREN:
            self._spawn(ChildStatus(name, kind))

    # -- requests ----------------------------------------------------------

    def receiveMsg_GetTree(self, msg: GetTree, sender: Any) -> None:
        self.reply(sender, msg, self._tree())

    def receiveMsg_StartChild(self, msg: StartChild, sender: Any) -> None:
        if msg.kind not in CHILD_KINDS:
            raise InvalidRequest(f"unknown child kind {msg.kind!r}")
        current = self._children.get(msg.name)
        if current is not None and current.state is not ChildState.STOPPED:
            raise Conflict(f"child {msg.name!r} is already {current.state.value}")
        self._spawn(ChildStatus(msg.name, msg.kind))
        self.reply(sender, msg)

    def receiveMsg_StopChild(self, msg: StopChild, sender: Any) -> None:
        self._stop_child(msg.name)
        self.reply(sender, msg)

    def receiveMsg_CrashChild(self, msg: CrashChild, sender: Any) -> None:
        self.send(self._address(msg.name), Crash())
        self.reply(sender, msg)

    def receiveMsg_KillChild(self, msg: KillChild, sender: Any) -> None:
        pid = self._status(msg.name).pid
        if pid is None:
            raise Conflict(f"child {msg.name!r} has not reported a pid yet")
        os.kill(pid, signal.SIGKILL)
        self.reply(sender, msg, pid)

    def receiveMsg_WhereIs(self, msg: WhereIs, sender: Any) -> None:
        self.reply(sender, msg, self._address(msg.name))

    # -- user supervisors and the name registry ------------------------------

    def receiveMsg_InitRoot(self, msg: InitRoot, sender: Any) -> None:
        self._env = msg
        self.port = msg.port
        if "sandbox" not in self._children:
            self._spawn(ChildStatus("sandbox", "sandbox-pool"))
        self._sync_supervisors()
        if "orchestration" not in self._children:  # after the agents supervisor
            self._spawn(ChildStatus("orchestration", "orchestration"))
        self.reply(sender, msg)

    # -- cluster mode (actors.cluster) ----------------------------------------

    def receiveMsg_InitCluster(self, msg: Any, sender: Any) -> None:
        self._cluster = msg
        current = self._children.get("cluster")
        if current is None or current.state is ChildState.STOPPED:
            self._spawn(ChildStatus("cluster", "cluster"))
        self.reply(sender, msg)

    def receiveMsg_NodeLost(self, msg: Any, sender: Any) -> None:
        """A member is gone: every supervisor places its agents from there again."""
        for name, status in self._children.items():
            if status.kind == "supervisor" and name in self._addrs:
                self.send(self._addrs[name], msg)

    def receiveMsg_Sync(self, msg: Sync, sender: Any) -> None:
        if self._env is None:
            raise Conflict("the root has no database yet (InitRoot)")
        self._sync_supervisors()
        self.reply(sender, msg, self._tree())

    def _sync_supervisors(self) -> None:
        """Run the implicit supervisor and every top-level user supervisor
        whose desired state is running; stop the others."""
        from actors.domain.definitions import IMPLICIT_SUPERVISOR
        from naosd.storage import definitions as defs_store

        assert self._env is not None
        store = self._store()
        wanted = [IMPLICIT_SUPERVISOR] + [
            d.name for d in defs_store.list_supervisors(store, parent=None)
            if d.desired == "running"]
        for name, status in list(self._children.items()):
            if status.kind == "supervisor" and name not in wanted:
                self._stop_child(name)
        for name in wanted:
            current = self._children.get(name)
            if current is None or current.state is ChildState.STOPPED:
                self._spawn(ChildStatus(name, "supervisor"))

    def _store(self) -> Any:
        from naosd.storage.store import Store

        if getattr(self, "_db", None) is None:
            assert self._env is not None
            self._db = Store.open(Path(self._env.db_path),
                                  checkpoint_path=Path(self._env.checkpoint_path))
        return self._db

    def receiveMsg_Registered(self, msg: Registered, sender: Any) -> None:
        if msg.address is not None:
            if msg.kind == "supervisor":
                self._forget_under(msg.name)
            self._registry[msg.name] = msg
            self._wake_waiters(msg)
        elif msg.name in self._registry and self._registry[msg.name].supervisor == msg.supervisor:
            self._forget(msg.name)

    def _forget(self, name: str) -> None:
        self._registry.pop(name, None)
        self._nodes.pop(name, None)
        self._forget_under(name)

    def _forget_under(self, supervisor: str) -> None:
        for child in [n for n, r in self._registry.items() if r.supervisor == supervisor]:
            self._forget(child)

    def receiveMsg_TreeUpdate(self, msg: TreeUpdate, sender: Any) -> None:
        self._nodes[msg.name] = msg.node

    def receiveMsg_Resolve(self, msg: Resolve, sender: Any) -> None:
        entry = self._registry.get(msg.name)
        if entry is not None and (not msg.stale_pid or entry.pid != msg.stale_pid):
            self.reply(sender, msg, self._where(entry))
        elif msg.wait_s > 0:  # answer when it registers, or when the wait is over
            self._waiters.setdefault(msg.name, []).append((sender, msg))
            self.wakeupAfter(timedelta(seconds=msg.wait_s),
                             payload=("resolve", msg.name, msg.request_id))
        else:
            raise NotFound(f"{msg.name!r} is not running")

    @staticmethod
    def _where(entry: Registered) -> dict[str, Any]:
        return {"address": entry.address, "pid": entry.pid, "kind": entry.kind,
                "supervisor": entry.supervisor}

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        kind, name, request_id = msg.payload
        if kind != "resolve":
            return
        waiting = self._waiters.get(name, [])
        for asker, request in [w for w in waiting if w[1].request_id == request_id]:
            waiting.remove((asker, request))
            self.send(asker, error_reply(request, NotFound(
                f"{name!r} did not start within {request.wait_s:g}s")))

    def _wake_waiters(self, entry: Registered) -> None:
        waiting = self._waiters.pop(entry.name, [])
        for asker, request in waiting:
            if request.stale_pid and request.stale_pid == entry.pid:
                self._waiters.setdefault(entry.name, []).append((asker, request))
            else:
                self.reply(asker, request, self._where(entry))

    def receiveMsg_ChildCrashed(self, msg: ChildCrashed, sender: Any) -> None:
        if self._addrs.get(msg.name) == sender:
            self._reasons[msg.name] = msg.reason

    def _audit(self, type_: str, **detail: Any) -> None:
        if self._env is None:
            return
        try:
            self._store().append_audit(type_, actor="root", detail=detail)
        except Exception as exc:  # noqa: BLE001 - never let the audit stop supervision
            self.logger().error("root: audit %s failed: %s", type_, exc)

    # -- supervision -------------------------------------------------------

    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        status = self._children.get(msg.name)
        if status is not None and self._addrs.get(msg.name) == sender:
            self._children[msg.name] = on_started(status, msg.pid)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        name = self._name_of(msg.childAddress)
        if name is None or self._exiting:
            return  # a duplicate, a replaced instance, or we are going down
        del self._addrs[name]
        status, decision = on_exit(self._children[name])
        self._children[name] = status
        if status.kind == "supervisor":
            self._forget(name)
            reason = self._reasons.pop(name, "process died")
            if decision is Decision.RESTART:
                self._audit("supervisor.restarted", child=name, reason=reason,
                            restarts=status.restarts)
        if decision is Decision.RESTART:
            self._spawn(status)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops the children; do not restart them

    # -- helpers -----------------------------------------------------------

    def _spawn(self, status: ChildStatus) -> None:
        actor_class, init = self._how_to_start(status)
        addr = self.createActor(actor_class)
        self._children[status.name] = status
        self._addrs[status.name] = addr
        self.send(addr, init)

    def _how_to_start(self, status: ChildStatus) -> tuple[type, Any]:
        """The actor class of a child of ``status.kind`` and its first message."""
        if status.kind == "sandbox-pool":
            from actors.sandbox import SandboxPool

            assert self._env is not None
            cache = str(Path(self._env.db_path).parent / "wasm-cache")
            return SandboxPool, InitSandbox(status.name, self._env.db_path, cache,
                                            self._env.sandbox_workers)
        if status.kind == "orchestration":
            from actors.orch_messages import InitOrchestration
            from actors.orchestration import OrchestrationSupervisor

            return OrchestrationSupervisor, InitOrchestration(status.name, self.port,
                                                              self.myAddress)
        if status.kind == "cluster":
            from actors.cluster import ClusterMonitor

            return ClusterMonitor, self._cluster
        if status.kind == "supervisor":
            from actors.supervisor import SupervisorActor

            assert self._env is not None
            return SupervisorActor, InitSupervisor(status.name, self._env.db_path,
                                                   self._env.checkpoint_path, self.myAddress)
        return CHILD_KINDS[status.kind], InitChild(status.name)

    def _stop_child(self, name: str) -> None:
        self._children[name] = on_stop(self._status(name))
        addr = self._addrs.get(name)
        if addr is not None:
            self.send(addr, ActorExitRequest())

    def _name_of(self, addr: Any) -> str | None:
        # Linear and by ==: a local address and the child's real address compare
        # equal but need not hash alike.
        return next((n for n, a in self._addrs.items() if a == addr), None)

    def _status(self, name: str) -> ChildStatus:
        try:
            return self._children[name]
        except KeyError:
            raise NotFound(f"no child named {name!r}") from None

    def _address(self, name: str) -> Any:
        self._status(name)
        addr = self._addrs.get(name)
        if addr is None:
            raise Conflict(f"child {name!r} is not running")
        return addr

    def _tree(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "root",
            "state": ChildState.RUNNING.value,
            "pid": os.getpid(),
            "restarts": 0,
            "children": [self._expand(c.to_node()) for c in self._children.values()],
        }

    def _expand(self, node: dict[str, Any]) -> dict[str, Any]:
        """Replace a supervisor child's stub with its latest pushed node."""
        if node.get("kind") not in ("supervisor", "orchestration"):
            return node
        latest = self._nodes.get(node["name"])
        if latest is None:
            return node
        merged = {**latest, "restarts": node.get("restarts", 0)}
        if node.get("state") != "running":
            merged["state"] = node.get("state")
        merged["children"] = [self._expand(c) for c in latest.get("children", [])]
        return merged
