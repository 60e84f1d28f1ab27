"""SQL for cluster mode (part of the storage layer: it goes through
:class:`naosd.storage.store.Store`). Each node keeps its own view here: the nodes of
the convention it knows (the leader knows them all, a member only itself and
its leader) and where this node's supervisors placed each agent."""

from __future__ import annotations

import json
from typing import Any

from actors.domain.placement import LOST, UP, Node
from naosd.storage.store import Store

_NODE_COLS = "name, address, capabilities, state, local, last_heartbeat, changed_at"


def reset(store: Store, *, name: str, address: str, capabilities: list[str],
          leader: str, run: str) -> None:
    """At start: forget every node and placement of the previous run and
    record this node (placements are stale: the actors died with naosd)."""
    with store.transaction() as tx:
        tx.execute("DELETE FROM cluster_nodes")
        tx.execute("DELETE FROM agent_placements")
        now = store.now_iso()
        tx.execute(f"INSERT INTO cluster_nodes({_NODE_COLS}) VALUES (?,?,?,?,?,?,?)",
                   (name, address, json.dumps(capabilities), UP, 1, now, now))
        tx.set_meta("cluster.leader", leader)
        tx.set_meta("cluster.run", run)


def run_id(store: Store) -> str:
    """This node's incarnation as a leader (set by :func:`reset`)."""
    return store.get_meta_or_none("cluster.run") or ""


def clear(store: Store) -> None:
    """Cluster mode is off: no node table, no placements."""
    with store.transaction() as tx:
        tx.execute("DELETE FROM cluster_nodes")
        tx.execute("DELETE FROM agent_placements")


def local_node(store: Store) -> str | None:
    """This node's name, or None when cluster mode is off."""
    rows = store.query("SELECT name FROM cluster_nodes WHERE local = 1")
    return str(rows[0][0]) if rows else None


def node_joined(store: Store, name: str, address: str | None, capabilities: list[str] | None
                ) -> bool:
    """Record a member as up (``None``: keep the known address/capabilities);
    True if it is new or was not up, which is audited."""
    with store.transaction() as tx:
        rows = tx.execute("SELECT state, local, address, capabilities, changed_at "
                          "FROM cluster_nodes WHERE name = ?", (name,))
        if rows and rows[0][1]:
            return False  # a member claims our own name: ignore it
        now = store.now_iso()
        fresh = not rows or rows[0][0] != UP
        if address is None or capabilities is None:
            if not rows:
                return False
            address, capabilities = str(rows[0][2]), list(json.loads(rows[0][3]))
        tx.execute(
            f"INSERT OR REPLACE INTO cluster_nodes({_NODE_COLS}) VALUES (?,?,?,?,?,?,?)",
            (name, address, json.dumps(capabilities), UP, 0, now,
             now if fresh else rows[0][4]))
        if fresh:
            tx.audit("cluster.node_joined", actor="cluster",
                     detail={"node": name, "address": address, "capabilities": capabilities})
        return fresh


def heartbeat(store: Store, name: str) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE cluster_nodes SET last_heartbeat = ? WHERE name = ? AND state = ?",
                   (store.now_iso(), name, UP))


def node_gone(store: Store, name: str, state: str, reason: str) -> list[str]:
    """Mark a member lost (or left); return the agents that were placed on
    it. The audit row names them."""
    with store.transaction() as tx:
        rows = tx.execute("SELECT state FROM cluster_nodes WHERE name = ? AND local = 0",
                          (name,))
        if not rows or rows[0][0] != UP:
            return []
        tx.execute("UPDATE cluster_nodes SET state = ?, changed_at = ? WHERE name = ?",
                   (state, store.now_iso(), name))
        agents = [str(r[0]) for r in tx.execute(
            "SELECT agent FROM agent_placements WHERE node = ? ORDER BY agent", (name,))]
        tx.audit("cluster.node_lost" if state == LOST else "cluster.node_left",
                 actor="cluster", detail={"node": name, "reason": reason, "agents": agents})
        return agents


def nodes(store: Store) -> list[Node]:
    return [Node(str(r[0]), frozenset(json.loads(r[1])), str(r[2]), bool(r[3]), str(r[4]))
            for r in store.query("SELECT name, capabilities, state, local, address "
                                 "FROM cluster_nodes ORDER BY name")]


def loads(store: Store) -> dict[str, int]:
    return {str(n): int(c) for n, c in store.query(
        "SELECT node, count(*) FROM agent_placements GROUP BY node")}


def place(store: Store, agent: str, node: str, *, previous: str | None,
          requires: list[str], actor: str) -> None:
    """Record (and audit) that ``agent`` now runs on ``node``."""
    with store.transaction() as tx:
        tx.execute("INSERT OR REPLACE INTO agent_placements(agent, node, placed_at) "
                   "VALUES (?,?,?)", (agent, node, store.now_iso()))
        tx.audit("agent.placed", actor=actor, agent=agent,
                 detail={"node": node, "previous": previous, "requires": requires})


def unplace(store: Store, agent: str) -> None:
    with store.transaction() as tx:
        tx.execute("DELETE FROM agent_placements WHERE agent = ?", (agent,))


def unplaceable(store: Store, agent: str, requires: list[str], reason: str,
                actor: str) -> None:
    with store.transaction() as tx:
        tx.execute("DELETE FROM agent_placements WHERE agent = ?", (agent,))
        tx.audit("agent.unplaceable", actor=actor, agent=agent,
                 detail={"requires": requires, "reason": reason})


def placements(store: Store) -> dict[str, str]:
    return {str(a): str(n) for a, n in store.query(
        "SELECT agent, node FROM agent_placements")}


def node_rows(store: Store) -> list[dict[str, Any]]:
    """The node table for ``cluster.nodes`` and status, with agent counts."""
    counts = loads(store)
    out = []
    for r in store.query(f"SELECT {_NODE_COLS} FROM cluster_nodes ORDER BY local DESC, name"):
        name, address, caps, state, local, beat, changed = r
        out.append({"name": name, "address": address, "capabilities": json.loads(caps),
                    "state": state, "local": bool(local), "last_heartbeat": beat,
                    "changed_at": changed, "agents": counts.get(name, 0)})
    return out
