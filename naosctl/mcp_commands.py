"""naosctl mcp: naos as an MCP server (``serve``) and as an MCP client (``add``,
``list``, ``tools``, ``call``, ``restart``, ``remove``: the tool servers agents
call); see docs/interop.md.

``serve``: an MCP client (an IDE, a desktop assistant, the SDK's own CLI) starts this
command and talks MCP on its stdin/stdout.  The protocol runs here, with the
official SDK; every tool call and resource read is one control call over the
socket (``mcp.call``, ``mcp.read``, ...), so the daemon runs it exactly as it
runs a call that came over HTTP.  The SDK is imported only when the command
runs: ``import naosctl.main`` stays light.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import click

from naosctl import mcp_render, render
from naosctl.client import AsyncClient
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx
from naosd.errors import ConfigError, DaemonNotRunning

IDENTITY_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")  # an agent name (docs/interop.md)


@cli.group()
def mcp() -> None:
    """Serve naos to MCP clients (serve); register MCP servers whose tools agents
    call (add, list, tools, call, restart, remove)."""


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


# -- naos as an MCP client: the tool servers agents call --------------------------------


@mcp.command("add")
@click.argument("name")
@click.option("--command", "command", metavar='"CMD ARGS"',
              help="a stdio server naosd starts (split like a shell would)")
@click.option("--env", "env", multiple=True, metavar="K=V",
              help="an environment variable of the stdio server (values are never shown)")
@click.option("--cwd", type=click.Path(file_okay=False), metavar="DIR",
              help="where the stdio server runs (default: the current directory)")
@click.option("--url", metavar="URL", help="a Streamable HTTP server")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="a 0600 file holding the HTTP server's bearer token")
@click.option("--token-env", metavar="VAR",
              help="naosd's environment variable holding the bearer token")
@click.option("--price-micro", type=click.IntRange(0), default=0, show_default=True,
              help="what one call costs (micro-dollars)")
@click.option("--tool-price", "tool_prices", multiple=True, metavar="TOOL=N",
              help="one tool's price, over --price-micro")
@json_option
@pass_ctx
@handle_errors()
def mcp_add(c: Ctx, name: str, command: str | None, env: tuple[str, ...], cwd: str | None,
            url: str | None, token_file: str | None, token_env: str | None, price_micro: int,
            tool_prices: tuple[str, ...], as_json: bool) -> None:
    """Register the MCP server NAME: its tools become SERVER.TOOL for agents."""
    if (command is None) == (url is None):
        raise click.UsageError("give one of --command (stdio) or --url (Streamable HTTP)")
    params: dict[str, Any] = {  # all given: naosd refuses what does not fit the transport
        "name": name, "price_micro": price_micro, "tool_prices": list(tool_prices) or None,
        "env": list(env) or None, "url": url, "token_env": token_env,
        "token_file": os.path.abspath(token_file) if token_file else None,
        "cwd": os.path.abspath(cwd) if cwd else None}
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--command") from None
        if not argv:
            raise click.BadParameter("the command is empty", param_hint="--command")
        params.update(command=argv, cwd=params["cwd"] or os.getcwd())
    _show(c.client.call("toolserver.add", **params), as_json)


@mcp.command("list")
@json_option
@pass_ctx
@handle_errors()
def mcp_list(c: Ctx, as_json: bool) -> None:
    """The tool servers: state (up, starting, down, failed), pid, tools, crashes."""
    servers = c.client.call("toolserver.list")["servers"]
    click.echo(render.to_json(servers) if as_json else mcp_render.servers(servers))


@mcp.command("tools")
@click.argument("name", required=False)
@click.option("--refresh", is_flag=True, help="ask the server for its tools now")
@json_option
@pass_ctx
@handle_errors()
def mcp_tools(c: Ctx, name: str | None, refresh: bool, as_json: bool) -> None:
    """The tools of every server (or NAME's): the name agents call, price, LLM function."""
    if refresh and name is None:
        raise click.UsageError("--refresh needs the server's NAME")
    tools = (c.client.call("toolserver.refresh", name=name, timeout=c.timeout) if refresh
             else c.client.call("toolserver.tools", name=name))["tools"]
    click.echo(render.to_json(tools) if as_json else mcp_render.tools(tools))


@mcp.command("call")
@click.argument("tool", metavar="SERVER.TOOL")
@click.option("--args", "args", default="{}", metavar="JSON", help="the tool's arguments")
@click.option("--agent", metavar="NAME",
              help="call as this agent (its trust and budget); default: as the operator")
@json_option
@pass_ctx
@handle_errors()
def mcp_call(c: Ctx, tool: str, args: str, agent: str | None, as_json: bool) -> None:
    """Call a tool as an agent would: trust-gated, priced, audited."""
    try:
        arguments = json.loads(args)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(arguments, dict):
        raise click.BadParameter("a JSON object is required", param_hint="--args")
    result = c.client.call("toolserver.call", tool=tool, args=arguments, agent=agent,
                           timeout=c.timeout)
    click.echo(render.to_json(result) if as_json else mcp_render.call(result))


@mcp.command("restart")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def mcp_restart(c: Ctx, name: str, as_json: bool) -> None:
    """Restart NAME: stop it, forget its crashes, start it again."""
    _show(c.client.call("toolserver.restart", name=name), as_json)


@mcp.command("remove")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def mcp_remove(c: Ctx, name: str, as_json: bool) -> None:
    """Stop the tool server NAME and forget it."""
    result = c.client.call("toolserver.remove", name=name)
    click.echo(render.to_json(result) if as_json else f"removed {name}")


def _show(server: dict[str, Any], as_json: bool) -> None:
    click.echo(render.to_json(server) if as_json else mcp_render.servers([server]))
