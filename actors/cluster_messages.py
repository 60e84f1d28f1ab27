"""Messages of cluster mode (a leaf module: stdlib plus actors.messages).

naosd -> root: :class:`InitCluster` (the root keeps it and starts the cluster
monitor with it, again after every restart of the monitor). Leader's monitor
-> probe on a member: :class:`Beat`, answered by :class:`BeatAck`; a
supervisor -> an agent it placed on a member: :class:`HostedFor`. Monitor ->
root -> every supervisor (down the tree): :class:`NodeLost`. Supervisor ->
itself: :class:`Unplaceable` (applied outside the effect loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.messages import Request


@dataclass(frozen=True, slots=True)
class InitCluster(Request):
    """Cluster settings of this node. Result: None."""

    node: str
    address: str
    capabilities: tuple[str, ...]
    is_leader: bool
    heartbeat_s: float
    lost_after: int
    db_path: str
    checkpoint_path: str
    run: str  # this leader incarnation (32 hex digits): members fence by it


@dataclass(frozen=True, slots=True)
class Beat:
    """Leader -> the probe on member ``node``: are you there?"""

    node: str
    seq: int
    run: str


@dataclass(frozen=True, slots=True)
class BeatAck:
    """Probe -> leader: the member ``node`` answered beat ``seq``."""

    node: str
    seq: int
    pid: int


@dataclass(frozen=True, slots=True)
class HostedFor:
    """Supervisor -> an agent it placed on another node: you run for leader
    incarnation ``run`` (die when it stops beating; naosd.runtime.fence)."""

    run: str


@dataclass(frozen=True, slots=True)
class NodeLost:
    """Member ``node`` is gone (``reason``): its agents must be placed again."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """No node can run agent ``name`` now (``reason`` says why)."""

    name: str
    reason: str
