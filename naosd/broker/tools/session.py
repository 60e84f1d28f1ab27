"""One MCP client session to one tool server, with the official SDK's
``Client`` (the ``mcp`` extra): a stdio server naosd starts
(:mod:`naosd.broker.tools.stdio`), or a Streamable HTTP endpoint with a bearer
token.

:func:`connect` is entered and left by one task (the server's supervisor:
anyio's task groups must be); while it is open, any task may list or call
through the :class:`Connection`.  Every failure of the SDK, the transport or
the server is translated here, once: :class:`ToolServerDown` when the server
is not there (it could not start, the connection dropped, it died during a
call), :class:`ToolFailed` when it answered with a refusal.

With :mod:`naosd.broker.tools.stdio`, the only modules that import the SDK's
client side; nothing imports them unless a tool server is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from actors.domain.tool_servers import MAX_TOOLS
from naosd import __version__
from naosd.broker.tools import stdio
from naosd.errors import ToolFailed, ToolServerDown

LIST_PAGES: Final = 20  # tools/list pages followed at most
EXIT_GRACE_S: Final = 1.0
HTTP_TIMEOUT_S: Final = 30.0  # connect, write, pool; a call's own deadline bounds reads


@dataclass(frozen=True, slots=True)
class Target:
    """Where a server is: ``argv`` (stdio) or ``url`` (Streamable HTTP)."""

    name: str
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str = "/"
    log_path: Path | None = None
    url: str = ""
    token: str = field(default="", repr=False)


class Connection:
    """An open session.  ``closed`` is set when the stdio server exited;
    ``changed`` when the server said its tools changed."""

    def __init__(self, client: Client, process: stdio.ServerProcess | None) -> None:
        self.client = client
        self.process = process
        self.changed = asyncio.Event()
        self.closed = process.exited if process is not None else asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def how(self) -> str:
        """How the connection ended (the process's exit), once ``closed``."""
        return self.process.how if self.process is not None else "connection lost"

    @property
    def protocol(self) -> str:
        return self.client.protocol_version

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool, as wire dicts (pages followed up to LIST_PAGES)."""
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        async with _translated("tools/list"):
            for _ in range(LIST_PAGES):
                page = await self.client.list_tools(cursor=cursor)
                tools += [t.model_dump(by_alias=True, exclude_none=True, mode="json")
                          for t in page.tools]
                cursor = page.next_cursor
                if not cursor or len(tools) > MAX_TOOLS:  # the rest would be skipped anyway
                    break
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The CallToolResult as a wire dict (``isError`` included).

        Raises:
            ToolServerDown: the connection dropped or the server died meanwhile.
            ToolFailed: the server refused the call with a protocol error.
        """
        async with _translated(f"tool {name!r}"):
            result = await self.client.call_tool(name, arguments)
        out: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        return out


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except MCPError as exc:
        if exc.code == -32000:  # CONNECTION_CLOSED: the transport ended under the request
            raise ToolServerDown(f"the connection closed during {what}") from None
        raise ToolFailed(f"the server refused {what}: {exc.message} ({exc.code})") from None
    except (httpx2.HTTPError, anyio.ClosedResourceError, anyio.BrokenResourceError,
            ConnectionError) as exc:
        raise ToolServerDown(f"{what}: {_describe(exc)}") from None


@asynccontextmanager
async def connect(target: Target) -> AsyncIterator[Connection]:
    """Start or reach the server, do the handshake, and keep the session open
    for the block; on the way out the session ends (a stdio server is stopped).

    Raises:
        ToolServerDown: it could not be started or reached, the handshake
            failed, or (HTTP) the transport failed while the block ran.
    """
    try:
        if target.url:
            async with _http(target) as connection:
                yield connection
        else:
            async with _stdio(target) as connection:
                yield connection
    except (ToolServerDown, TimeoutError):  # said already, or the caller's deadline (both
        raise                                # are OSErrors: they must not be caught below)
    except (MCPError, httpx2.HTTPError, OSError, ValueError, anyio.BrokenResourceError,
            anyio.ClosedResourceError, ExceptionGroup) as exc:
        raise ToolServerDown(_describe(exc)) from None


@asynccontextmanager
async def _stdio(target: Target) -> AsyncIterator[Connection]:
    assert target.log_path is not None
    process = await stdio.spawn(target.argv, env=dict(target.env), cwd=target.cwd,
                                log_path=target.log_path)
    try:
        async with _client(stdio.transport(process), process) as connection:
            yield connection
    except TimeoutError:  # the caller gave up (and the transport stopped the server)
        raise
    except Exception:
        with contextlib.suppress(TimeoutError):  # a closed pipe can come before the exit
            await asyncio.wait_for(process.gone.wait(), EXIT_GRACE_S)
        if process.gone.is_set():  # it exited by itself: that is the news
            raise ToolServerDown(process.note_exit()) from None
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await stdio.stop(process)  # also when the handshake never finished


@asynccontextmanager
async def _http(target: Target) -> AsyncIterator[Connection]:
    refused: list[int] = []  # HTTP statuses of the handshake's requests

    async def remember(response: httpx2.Response) -> None:
        if response.status_code >= 400 and response.request.method == "POST":
            refused.append(response.status_code)

    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    ready = False
    try:
        async with httpx2.AsyncClient(
                headers=headers, event_hooks={"response": [remember]},
                timeout=httpx2.Timeout(HTTP_TIMEOUT_S, read=None)) as web, \
                _client(streamable_http_client(target.url, http_client=web), None) as conn:
            ready = True
            yield conn
    except Exception:
        if refused and not ready:  # the SDK says "error response": say which
            raise ToolServerDown(f"{target.url} answered HTTP {refused[-1]}") from None
        raise


@asynccontextmanager
async def _client(transport: Any, process: stdio.ServerProcess | None
                  ) -> AsyncIterator[Connection]:
    holder: list[Connection] = []

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed" and holder:
            holder[0].changed.set()  # a handshake-era server's notification

    client = Client(transport, cache=None, message_handler=on_message,
                    client_info=_client_info())
    async with client:
        connection = Connection(client, process)
        holder.append(connection)
        async with anyio.create_task_group() as tg:
            if _listens(client):
                tg.start_soon(_listen, connection)
            try:
                yield connection
            finally:
                tg.cancel_scope.cancel()


def _listens(client: Client) -> bool:
    tools = client.server_capabilities.tools
    return (client.protocol_version in MODERN_PROTOCOL_VERSIONS and tools is not None
            and bool(tools.list_changed))


async def _listen(connection: Connection) -> None:
    """2026-07-28 servers send list_changed on a ``subscriptions/listen`` stream."""
    with contextlib.suppress(Exception):  # no stream: the listing is refreshed on demand
        async with connection.client.listen(tools_list_changed=True) as events:
            async for _ in events:
                connection.changed.set()


def _client_info() -> Any:
    from mcp.types import Implementation

    return Implementation(name="naos", version=__version__)


def _describe(exc: BaseException) -> str:
    """One line for the first real cause in ``exc`` (groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message}"
    if isinstance(exc, OSError) and exc.strerror:
        name = f" {exc.filename}" if exc.filename else ""
        return f"could not run{name}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
