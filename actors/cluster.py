"""Cluster mode actors: the leader's ClusterMonitor and a NodeProbe per member.

Thespian's convention is the engine: members register with the leader's
admin, the monitor hears of them through ``notifyOnSystemRegistrationChanges``
(``ActorSystemConventionUpdate``) and pins one :class:`NodeProbe` on each
member (``targetActorRequirements={"naos.node": name}``). Thespian does not
notice a member that dies hard (no ``ChildActorExited`` ever comes; its own
re-registration timeout is minutes), so the monitor beats every probe each
``heartbeat_s`` and declares the member lost after ``lost_after`` silent
intervals (:func:`actors.domain.placement.is_lost`). Then it records the loss
(audited, with the agents that were placed there) and tells the root, which
passes :class:`NodeLost` down to every supervisor: each one restarts the
children it had there, placed again.

A probe answering again after a loss makes the member "up" again (new
agents may go there; the relocated ones stay where they are).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from thespian.actors import ActorSystemConventionUpdate, WakeupMessage

from actors.base import NaosActor
from actors.cluster_messages import Beat, BeatAck, InitCluster, NodeLost
from actors.domain.placement import (
    ADDRESS_CAPABILITY,
    CAPS_CAPABILITY,
    LEFT,
    LOST,
    NODE_CAPABILITY,
    UP,
    Node,
    check_name,
    is_lost,
    pin,
    satisfies,
)
from actors.messages import ChildPid
from naosd.errors import InvalidRequest


def _valid_name(value: object) -> bool:
    try:
        check_name(value, "name")
    except InvalidRequest:
        return False
    return True


def _valid_address(value: object) -> str:
    """``host:port`` as a member advertises it, or "" (then pinned by name only)."""
    from naosd.config import parse_host_port

    try:
        parse_host_port(value if isinstance(value, str) else "", "naos.address")
    except ValueError:
        return ""
    return str(value)


class NodeProbe(NaosActor):
    """Lives on a member; answers the leader's heartbeats and renews the
    lease of the agents this leader placed there (naosd.runtime.fence)."""

    def __init__(self) -> None:
        super().__init__()
        self._registered = False

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],
                                   requirements: dict[str, Any] | None) -> bool:
        return satisfies(capabilities, requirements)

    def receiveMsg_Beat(self, msg: Beat, sender: Any) -> None:
        from naosd.runtime import fence

        if not self._registered:  # the probe, too, dies with its leader
            self._registered = True
            fence.register(msg.run, os.getpid())
        fence.touch_beat(msg.run)
        self.send(sender, BeatAck(msg.node, msg.seq, os.getpid()))


class ClusterMonitor(NaosActor):
    """The leader's view of the convention (a child of the root)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "cluster"
        self._cfg: InitCluster | None = None
        self._root: Any = None
        self._store: Any = None
        self._probes: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._state: dict[str, str] = {}
        self._admins: dict[str, str] = {}  # node -> the host:port it registered from
        self._seq = 0

    def receiveMsg_InitCluster(self, msg: InitCluster, sender: Any) -> None:
        from naosd.storage.store import Store

        self._cfg, self._root = msg, sender
        self._store = Store.open(Path(msg.db_path), checkpoint_path=Path(msg.checkpoint_path))
        self.send(sender, ChildPid(self.name, os.getpid()))
        self.notifyOnSystemRegistrationChanges(True)
        self._tick()

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate,
                                               sender: Any) -> None:
        from naosd.storage import cluster as cluster_store

        if self._cfg is None:
            return
        caps = msg.remoteCapabilities or {}
        name = caps.get(NODE_CAPABILITY)
        if not _valid_name(name) or name == self._cfg.node:
            return  # not a naos node, or one that claims our name
        address = _valid_address(caps.get(ADDRESS_CAPABILITY))
        if not msg.remoteAdded:
            # Thespian drops the old registration of a member that came back
            # on another port late: only the registration we know counts.
            if self._admins.get(name) == address:
                self._gone(name, LEFT, "left the convention")
            return
        if self._admins.get(name, address) != address:
            self._gone(name, LOST, f"registered again from {address}: restarted")
        self._admins[name] = address
        raw_caps = caps.get(CAPS_CAPABILITY)
        node_caps = sorted({c for c in raw_caps if _valid_name(c)}) if isinstance(
            raw_caps, list) else []
        cluster_store.node_joined(self._store, name, address, node_caps)
        self._state[name] = UP
        self._last[name] = time.monotonic()
        self._probes[name] = self.createActor(
            NodeProbe, targetActorRequirements=pin(Node(name, frozenset(), address=address)))
        self.send(self._probes[name], Beat(name, self._seq, self._cfg.run))

    def receiveMsg_BeatAck(self, msg: BeatAck, sender: Any) -> None:
        from naosd.storage import cluster as cluster_store

        if self._probes.get(msg.node) != sender:
            return
        self._last[msg.node] = time.monotonic()
        if self._state.get(msg.node) != UP:
            self._state[msg.node] = UP
            cluster_store.node_joined(self._store, msg.node, None, None)
        cluster_store.heartbeat(self._store, msg.node)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "beat":
            self._tick()

    def _tick(self) -> None:
        assert self._cfg is not None
        now = time.monotonic()
        self._seq += 1
        for name, probe in list(self._probes.items()):
            if self._state.get(name) == UP and is_lost(
                    self._last[name], now, self._cfg.heartbeat_s, self._cfg.lost_after):
                silent = now - self._last[name]
                self._gone(name, LOST, f"no heartbeat answer for {silent:.1f}s")
            self.send(probe, Beat(name, self._seq, self._cfg.run))
        self.wakeupAfter(timedelta(seconds=self._cfg.heartbeat_s), payload="beat")

    def _gone(self, name: str, state: str, reason: str) -> None:
        from naosd.storage import cluster as cluster_store

        if self._state.get(name) != UP:
            return
        self._state[name] = state
        if state == LEFT:
            self._probes.pop(name, None)
        cluster_store.node_gone(self._store, name, state, reason)
        self.logger().warning("cluster: node %s %s: %s", name, state, reason)
        self.send(self._root, NodeLost(name, reason))
