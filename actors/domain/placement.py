"""Cluster placement and node liveness: pure functions, no actors, no I/O.

An agent may declare requirements: capabilities (``gpu``) and at most one
node name (``node=b``). A node is eligible when it is up, has every required
capability and, if a node is named, is that node. Among eligible nodes naosd
picks the least loaded (running agents placed there); ties go to the local
node, then by name, so a placement is deterministic. Thespian's own
placement is local-first and never balances, which is why naosd decides and
then pins the actor with ``targetActorRequirements={"naos.node": name}``.

Liveness is counted in heartbeats: a member whose last answer is older than
``interval * misses`` is lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from naosd.errors import InvalidRequest

NODE_CAPABILITY = "naos.node"  # the Thespian capability that names a node
ADDRESS_CAPABILITY = "naos.address"  # its admin's host:port (one registration of it)
CAPS_CAPABILITY = "naos.capabilities"  # a sorted list of capability names
MAX_REQUIREMENTS = 16
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

UP, LOST, LEFT = "up", "lost", "left"


def check_name(value: object, what: str) -> str:
    """A node or capability name: lower-case letters, digits, ``_.-``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequest(
            f"{what} {value!r} is not valid: use 1-63 lower-case letters, digits, "
            "'_', '.' or '-', starting with a letter or digit")
    return value


@dataclass(frozen=True, slots=True)
class Requirements:
    capabilities: frozenset[str] = frozenset()
    node: str | None = None

    @property
    def empty(self) -> bool:
        return not self.capabilities and self.node is None

    def to_list(self) -> list[str]:
        out = sorted(self.capabilities)
        return out + ([f"node={self.node}"] if self.node else [])

    def __str__(self) -> str:
        return ", ".join(self.to_list()) or "none"


def parse_requirements(items: Iterable[object]) -> Requirements:
    """``["gpu", "node=b"]`` -> Requirements; InvalidRequest names a bad item."""
    caps: set[str] = set()
    node: str | None = None
    items = list(items)
    if len(items) > MAX_REQUIREMENTS:
        raise InvalidRequest(f"at most {MAX_REQUIREMENTS} requirements, got {len(items)}")
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"a requirement must be a string, got {item!r}")
        if item.startswith("node="):
            name = check_name(item[5:], "required node name")
            if node is not None and node != name:
                raise InvalidRequest(f"requirements name two nodes: {node!r} and {name!r}")
            node = name
        elif "=" in item:
            raise InvalidRequest(
                f"requirement {item!r}: only node=NAME takes a value; "
                "other requirements are capability names")
        else:
            caps.add(check_name(item, "required capability"))
    return Requirements(frozenset(caps), node)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    capabilities: frozenset[str]
    state: str = UP
    local: bool = False
    address: str = ""


def eligible(req: Requirements, node: Node) -> bool:
    if node.state != UP:
        return False
    if req.node is not None and node.name != req.node:
        return False
    return req.capabilities <= node.capabilities


def choose(req: Requirements, nodes: Iterable[Node], loads: Mapping[str, int]) -> Node | None:
    """The node to run an agent with ``req`` on, or None if none is eligible."""
    candidates = [n for n in nodes if eligible(req, n)]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (loads.get(n.name, 0), not n.local, n.name))


def pin(node: Node) -> dict[str, str]:
    """Thespian requirements that select exactly this registration of ``node``:
    after a member restarts on a new port, Thespian keeps the dead
    registration (same name) until it misses three re-registrations."""
    req = {NODE_CAPABILITY: node.name}
    if node.address:
        req[ADDRESS_CAPABILITY] = node.address
    return req


def satisfies(capabilities: Mapping[str, object], requirements: Mapping[str, object] | None
              ) -> bool:
    """Thespian's ``actorSystemCapabilityCheck`` for pinned actors: a system
    qualifies when every requirement equals its capability of that name."""
    return all(capabilities.get(k) == v for k, v in (requirements or {}).items())


def is_lost(last_seen: float, now: float, interval_s: float, misses: int) -> bool:
    """True when no heartbeat answer came for ``misses`` intervals."""
    return now - last_seen > interval_s * misses
