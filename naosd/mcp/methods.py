"""The MCP gateway as control methods, for ``naosctl mcp serve`` (stdio): the
MCP protocol runs in naosctl, the tools run here, so a call over stdio and one
over ``/mcp`` take the same path.  See docs/protocol.md.

Nothing here imports the MCP SDK: these methods work on any naosd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from naosd.control.api import invoke
from naosd.control.params import Spec, Str, check
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.mcp.gateway import Gateway, Settings

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("mcp")
method = METHODS.method


class InProcessApi:
    """The method table of one daemon, called in process: the same handlers and
    parameter checks as over the socket (the dashboard's ``/mcp`` uses this)."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def call(self, method_name: str, /, **params: Any) -> Any:
        return await invoke(self._services, method_name, params)

    async def stream(self, method_name: str, /, **params: Any) -> AsyncIterator[Any]:
        entry = self._services.methods[method_name]
        items: AsyncIterator[Any] = entry.handler(
            self._services, check(method_name, entry.params, params))
        async for item in items:
            yield item


def gateway_for(services: Services) -> Gateway:
    """The gateway over ``services``; settings are read from the current configuration."""
    def settings() -> Settings:
        c = services.config
        return Settings(c.mcp_identity, c.mcp_tools, c.mcp_run_wait)

    return Gateway(InProcessApi(services), settings, services.db.audit)


IDENTITY = Str(None, max_len=64, doc="act as this identity instead of mcp.identity")


@method("mcp.tools", role=READ)
async def mcp_tools(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The tools MCP clients see (one per agent, saga, workflow and skill) and the
    identity they act as."""
    return {"tools": await gateway_for(d).tools(), "identity": d.config.mcp_identity}


@method("mcp.call", tool=Str(max_len=200), arguments=Spec(dict, None), identity=IDENTITY)
async def mcp_call(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Call an MCP tool for an identity: its CallToolResult (``isError`` when the run
    failed); not_found when there is no such tool."""
    return await gateway_for(d).call(p["tool"], p["arguments"], identity=p["identity"],
                                     transport="stdio")


@method("mcp.resources", role=READ)
async def mcp_resources(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The resources MCP clients can read."""
    return {"resources": Gateway.resources()}


@method("mcp.read", role=READ, uri=Str(max_len=200))
async def mcp_read(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """A resource's contents (naos://status, naos://audit/recent)."""
    return await gateway_for(d).read(p["uri"])
