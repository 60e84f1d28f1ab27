"""The MCP protocol, from the official SDK (``mcp``, the ``mcp`` extra): one
low-level ``Server`` whose handlers ask a :class:`Backend` for plain MCP wire
data and validate it into the SDK's types.  The stdio transport (naosctl, a
backend over the control socket) and the Streamable HTTP one (the dashboard,
the gateway in process) share it.

The only module that imports ``mcp``; import it only where MCP is served.

Errors: an unknown tool or resource (``not_found``, the only error the gateway
raises for a call) is a protocol error (INVALID_PARAMS); any other naos error
(naosd gone, shutting down) is an INTERNAL_ERROR naming its code; a run that
failed is not an error here at all but a tool result with ``isError`` (the
gateway makes it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from naosd import __version__
from naosd.errors import NaosError, NotFound

T = TypeVar("T")

INSTRUCTIONS = (
    "naos runs AI agents under supervision. Each tool runs one naos definition: "
    "agent_NAME sends the arguments to an agent and returns its reply; saga_NAME and "
    "workflow_NAME run a durable multi-step run and return its outcome; skill_NAME runs a "
    "broker skill on {\"task\": \"...\"}. Calls are audited and made as this client's "
    "identity. Resources: naos://status, naos://audit/recent."
)


class Backend(Protocol):
    """Where the tools run: the gateway, in naosd or over the control socket."""

    async def tools(self) -> list[dict[str, Any]]: ...

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]: ...

    async def resources(self) -> list[dict[str, Any]]: ...

    async def read(self, uri: str) -> dict[str, Any]: ...


def build_server(backend: Backend) -> Server[Any]:
    """An SDK server serving ``backend``'s tools and resources."""

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult.model_validate({"tools": await _mapped(backend.tools())})

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await _mapped(backend.call(params.name, params.arguments or {}))
        return types.CallToolResult.model_validate(result)

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        listed = await _mapped(backend.resources())
        return types.ListResourcesResult.model_validate({"resources": listed})

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams
                            ) -> types.ReadResourceResult:
        return types.ReadResourceResult.model_validate(
            await _mapped(backend.read(str(params.uri))))

    return Server("naos", version=__version__, title="naos", instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool,
                  on_list_resources=list_resources, on_read_resource=read_resource)


async def _mapped(pending: Awaitable[T]) -> T:
    """Await ``pending``; naos errors become the protocol's."""
    try:
        return await pending
    except NotFound as exc:  # the gateway's one raised error: no such tool or resource
        raise MCPError(types.INVALID_PARAMS, exc.message) from None
    except NaosError as exc:
        raise MCPError(types.INTERNAL_ERROR, f"{exc.code}: {exc.message}") from None
