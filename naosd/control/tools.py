"""Methods of the MCP client (``naosctl mcp add/list/remove/tools/restart/call``):
the tool servers naos calls for agents (naosd.broker.tools).  Named
``toolserver.*``: ``mcp.*`` are the methods of naos as an MCP server."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from actors.domain.definitions import validate_name
from actors.domain.tool_servers import MAX_PRICE_MICRO, validate_server_name
from naosd import deadline as request_deadline
from naosd.control.params import Int, Spec, Str
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import InvalidRequest

if TYPE_CHECKING:
    from naosd.broker.tools import McpClient
    from naosd.services import Services

METHODS = MethodTable("toolserver")
method = METHODS.method

NAME = Str(max_len=64)
NAME_OR_ALL = Str(None, max_len=64)
TIMEOUT = Spec((int, float), None)  # how long the caller waits (s): the call's deadline
DEFAULT_WAIT_S = 60.0


def _client(d: Services) -> McpClient:
    if d.mcp_client is None:
        raise InvalidRequest("this naosd has no MCP client")
    return d.mcp_client


@method("toolserver.add", name=NAME, command=Spec(list, None), cwd=Str(None),
        env=Spec(list, None), url=Str(None, max_len=2048), token_file=Str(None),
        token_env=Str(None, max_len=128), price_micro=Int(0, lo=0, hi=MAX_PRICE_MICRO),
        tool_prices=Spec(list, None))
async def toolserver_add(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Register an MCP server (``command``: stdio, started by naosd; ``url``:
    Streamable HTTP) and start it; audited without env values or token."""
    if (p["command"] is None) == (p["url"] is None):
        raise InvalidRequest("give either command (a stdio server naosd starts) or url "
                             "(a Streamable HTTP server)")
    transport = "stdio" if p["command"] is not None else "http"
    return await _client(d).servers.add({**p, "transport": transport})


@method("toolserver.list", role=READ, name=NAME_OR_ALL)
async def toolserver_list(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Every tool server (or one): definition (env keys only), state, pid, tools,
    crashes and the last exit."""
    name = None if p["name"] is None else validate_server_name(p["name"])
    return {"servers": _client(d).servers.status(name)}


@method("toolserver.tools", role=READ, name=NAME_OR_ALL)
async def toolserver_tools(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The tools of every server (or one), as last listed: name, function name,
    price, schema."""
    name = None if p["name"] is None else validate_server_name(p["name"])
    return {"tools": _client(d).servers.tools(name)}


@method("toolserver.refresh", deadline="timeout", name=NAME, timeout=TIMEOUT)
async def toolserver_refresh(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Ask a server for its tools now."""
    servers = _client(d).servers
    await servers.slot(validate_server_name(p["name"])).refresh(_deadline())
    return {"tools": servers.tools(p["name"])}


@method("toolserver.remove", name=NAME)
async def toolserver_remove(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop a server and forget it (audited)."""
    return await _client(d).servers.remove(p["name"])


@method("toolserver.restart", name=NAME)
async def toolserver_restart(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop a server, forget its crashes and start it again (a failed one too)."""
    return await _client(d).servers.restart(validate_server_name(p["name"]))


@method("toolserver.call", deadline="timeout", tool=Str(max_len=300),
        args=Spec(dict, None), agent=Str(None, max_len=64), timeout=TIMEOUT)
async def toolserver_call(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Call SERVER.TOOL as ``agent`` would (trust gate, price, budget, audit), or
    as the operator (no agent: the global budget only)."""
    agent = None if p["agent"] is None else validate_name(p["agent"])
    return await _client(d).calls.call(agent, p["tool"], p["args"] or {},
                                       deadline=_deadline())


def _deadline() -> float:
    """The request's deadline, less a margin so that the caller reads the
    call's own error (a timeout naming the tool), not the request's."""
    now = time.monotonic()
    deadline = request_deadline.current() or now + DEFAULT_WAIT_S
    return deadline - min(2.0, 0.1 * max(deadline - now, 0.0))
