"""naosctl mcp serve: naos as an MCP server over stdio (docs/interop.md).

An MCP client (an IDE, a desktop assistant, the SDK's own CLI) starts this
command and talks MCP on its stdin/stdout.  The protocol runs here, with the
official SDK; every tool call and resource read is one control call over the
socket (``mcp.call``, ``mcp.read``, ...), so the daemon runs it exactly as it
runs a call that came over HTTP.  The SDK is imported only when the command
runs: ``import naosctl.main`` stays light.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import click

from naosctl.client import AsyncClient
from naosctl.main import Ctx, cli, handle_errors, pass_ctx
from naosd.errors import ConfigError, DaemonNotRunning

IDENTITY_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")  # an agent name (docs/interop.md)


@cli.group()
def mcp() -> None:
    """Serve naos's agents, sagas, workflows and skills to MCP clients."""


@mcp.command("serve")
@click.option("--as", "identity", metavar="NAME",
              help="the identity calls are made for (default: naosd's mcp.identity)")
@pass_ctx
@handle_errors()
def mcp_serve(c: Ctx, identity: str | None) -> None:
    """Speak MCP on stdin/stdout for one client, until it closes stdin.

    Tools: agent_NAME, saga_NAME, workflow_NAME, skill_NAME; resources:
    naos://status, naos://audit/recent.  Exits 6 when the MCP SDK is not
    installed (pip install 'naos[mcp]'), 7 when naosd is not running.
    """
    if identity is not None and not IDENTITY_RE.fullmatch(identity):
        raise click.BadParameter("an identity is an agent name: lower-case letters, digits "
                                 "and hyphens, starting with a letter", param_hint="--as")
    try:
        from mcp.server.stdio import stdio_server

        from naosd.mcp.server import build_server
    except ImportError as exc:
        raise ConfigError(f"MCP needs the official SDK, which is not installed ({exc}): "
                          "pip install 'naos[mcp]'") from None
    backend = SocketBackend(c.socket_path, c.timeout, identity)
    asyncio.run(_serve(backend, build_server, stdio_server))


async def _serve(backend: SocketBackend, build_server: Any, stdio_server: Any) -> None:
    await backend.connect()  # naosd not running: exit 7 before the client sees a server
    server = build_server(backend)
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        await backend.close()


class SocketBackend:
    """The gateway's control methods over the socket (naosd.mcp.methods).

    A call that loses the connection fails (it may have run: it is never sent
    twice); the next one connects again, so a session outlives a naosd restart.
    """

    def __init__(self, path: Path, timeout: float, identity: str | None) -> None:
        self._path = path
        self._timeout = timeout
        self._identity = identity
        self._client: AsyncClient | None = None

    async def connect(self) -> AsyncClient:
        if self._client is None:
            client = AsyncClient(self._path, timeout=self._timeout)
            await client.connect()
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def _call(self, method: str, **params: Any) -> Any:
        client = await self.connect()
        try:
            return await client.call(method, **params)
        except DaemonNotRunning:
            await self.close()
            raise

    async def tools(self) -> list[dict[str, Any]]:
        listed = await self._call("mcp.tools")
        tools: list[dict[str, Any]] = listed["tools"]
        return tools

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("mcp.call", tool=tool, arguments=arguments,
                                                  identity=self._identity)
        return result

    async def resources(self) -> list[dict[str, Any]]:
        listed = await self._call("mcp.resources")
        resources: list[dict[str, Any]] = listed["resources"]
        return resources

    async def read(self, uri: str) -> dict[str, Any]:
        contents: dict[str, Any] = await self._call("mcp.read", uri=uri)
        return contents
