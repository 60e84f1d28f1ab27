"""The root's name registry: where each agent and supervisor runs now, the
tree node each supervisor last pushed, and the callers waiting for a name to
register (answered at once when it does, with an error when its supervisor
reports it failed, or NotFound when their wait is over).

Part of the root's shell (``actors.root``): the actor hands itself in for
sending; nothing here decides supervision.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from actors.base import error_reply
from actors.messages import Registered, Resolve, TreeUpdate
from naosd.errors import Conflict, NaosError, NotFound


class Registry:
    def __init__(self, actor: Any) -> None:
        self._actor = actor  # the root: send, reply, wakeupAfter
        self._entries: dict[str, Registered] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, list[tuple[Any, Resolve]]] = {}

    def registered(self, msg: Registered) -> None:
        if msg.address is not None:
            if msg.kind == "supervisor":
                self._forget_under(msg.name)
            self._entries[msg.name] = msg
            self._wake_waiters(msg)
        elif msg.name in self._entries and self._entries[msg.name].supervisor == msg.supervisor:
            self.forget(msg.name)

    def forget(self, name: str) -> None:
        """``name`` is gone, and everything that ran under it."""
        self._entries.pop(name, None)
        self._nodes.pop(name, None)
        self._forget_under(name)

    def _forget_under(self, supervisor: str) -> None:
        for child in [n for n, r in self._entries.items() if r.supervisor == supervisor]:
            self.forget(child)

    def tree_update(self, msg: TreeUpdate) -> None:
        self._nodes[msg.name] = msg.node
        if msg.node.get("state") != "running":
            return  # a supervisor giving up: its children come back with it
        for child in msg.node.get("children") or []:
            if child.get("state") == "failed":
                self.failed(child["name"], child.get("last_error") or "")

    def failed(self, name: str, why: str) -> None:
        """``name`` is failed: whoever waits for it to start waits no more."""
        if name in self._waiters:
            self._fail_waiters(name, Conflict(
                f"{name!r} failed ({why or 'crashed too often'}); it is not restarted"
                " until it is started again"))

    def resolve(self, msg: Resolve, sender: Any) -> None:
        entry = self._entries.get(msg.name)
        if entry is not None and (not msg.stale_pid or entry.pid != msg.stale_pid):
            self._actor.reply(sender, msg, _where(entry))
        elif msg.wait_s > 0:  # answer when it registers, or when the wait is over
            self._waiters.setdefault(msg.name, []).append((sender, msg))
            self._actor.wakeupAfter(timedelta(seconds=msg.wait_s),
                                    payload=("resolve", msg.name, msg.request_id))
        else:
            raise NotFound(f"{msg.name!r} is not running")

    def wait_over(self, name: str, request_id: str) -> None:
        waiting = self._waiters.get(name, [])
        for asker, request in [w for w in waiting if w[1].request_id == request_id]:
            waiting.remove((asker, request))
            self._actor.send(asker, error_reply(request, NotFound(
                f"{name!r} did not start within {request.wait_s:g}s")))

    def _fail_waiters(self, name: str, exc: NaosError) -> None:
        for asker, request in self._waiters.pop(name, []):
            self._actor.send(asker, error_reply(request, exc))

    def _wake_waiters(self, entry: Registered) -> None:
        waiting = self._waiters.pop(entry.name, [])
        for asker, request in waiting:
            if request.stale_pid and request.stale_pid == entry.pid:
                self._waiters.setdefault(entry.name, []).append((asker, request))
            else:
                self._actor.reply(asker, request, _where(entry))

    def expand(self, node: dict[str, Any]) -> dict[str, Any]:
        """Replace a supervisor child's stub with its latest pushed node."""
        if node.get("kind") not in ("supervisor", "orchestration"):
            return node
        latest = self._nodes.get(node["name"])
        if latest is None:
            return node
        merged = {**latest, "restarts": node.get("restarts", 0)}
        if node.get("state") != "running":
            merged["state"] = node.get("state")
        merged["children"] = [self.expand(c) for c in latest.get("children", [])]
        return merged


def _where(entry: Registered) -> dict[str, Any]:
    return {"address": entry.address, "pid": entry.pid, "kind": entry.kind,
            "supervisor": entry.supervisor}
