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
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited

from actors.base import NaosActor
from actors.domain.restart import (
    ChildState,
    ChildStatus,
    Decision,
    on_exit,
    on_started,
    on_stop,
)
from actors.messages import (
    ChildPid,
    Crash,
    CrashChild,
    GetTree,
    InitChild,
    KillChild,
    StartChild,
    StopChild,
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
        self._children[msg.name] = on_stop(self._status(msg.name))
        addr = self._addrs.get(msg.name)
        if addr is not None:
            self.send(addr, ActorExitRequest())
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
        if decision is Decision.RESTART:
            self._spawn(status)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True  # Thespian stops the children; do not restart them

    # -- helpers -----------------------------------------------------------

    def _spawn(self, status: ChildStatus) -> None:
        addr = self.createActor(CHILD_KINDS[status.kind])
        self._children[status.name] = status
        self._addrs[status.name] = addr
        self.send(addr, InitChild(status.name))

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
            "children": [c.to_node() for c in self._children.values()],
        }
