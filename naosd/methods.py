"""Every method naosd serves, assembled by name from each area's table (the
composition root's list: a new area is added here, never by an import's
side effect)."""

from __future__ import annotations

from naosd.control import (
    agents,
    api,
    broker,
    cluster,
    llm,
    orchestration,
    project,
    tools,
    trust,
    wasm,
)
from naosd.control.table import Method, assemble
from naosd.mcp import methods as mcp


def method_table() -> dict[str, Method]:
    return assemble(api.METHODS, agents.METHODS, broker.METHODS, cluster.METHODS,
                    llm.METHODS, orchestration.METHODS, project.METHODS, tools.METHODS,
                    trust.METHODS, wasm.METHODS, mcp.METHODS)
