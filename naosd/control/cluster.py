"""Methods of cluster mode (see docs/cluster.md and docs/protocol.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import Conflict

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("cluster")
method = METHODS.method


@method("cluster.nodes", role=READ)
async def cluster_nodes(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The nodes of the convention as this node sees them (name, address,
    capabilities, state, last heartbeat, agents placed) and where each agent
    runs."""
    view = await d.daemon.cluster_view()
    if view is None:
        raise Conflict("cluster mode is off (set cluster.enabled; see docs/cluster.md)")
    agents = await d.agents.list()
    view["agents"] = [{"name": a["name"], "node": a.get("node"), "state": a["state"],
                       "requires": a.get("requires", [])} for a in agents]
    return view
