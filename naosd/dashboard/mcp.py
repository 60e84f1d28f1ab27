"""MCP over Streamable HTTP at ``/mcp`` on the dashboard's listener (docs/interop.md).

The transport is the official SDK's (``StreamableHTTPSessionManager``,
stateless, JSON responses), mounted in this aiohttp app through a small ASGI
bridge.  Why a bridge: the SDK's Streamable HTTP exists only as an ASGI
application (starlette requests and responses inside); reimplementing it
against the SDK's types would mean owning the part that changes with every
protocol revision (sessions, protocol-version headers, the 2025 handshake era
and the 2026-07-28 per-request era, SSE), more than 1,500 lines in the SDK.
The bridge speaks ASGI's HTTP subset (one scope, ``http.request``,
``http.response.start``/``body``, ``http.disconnect``), a stable, versioned
spec, in some sixty lines; aiohttp-asgi would do the same as one more
dependency.

Stateless JSON mode keeps nothing per client in naosd: no session table to
grow, no stream to end when the dashboard stops; the tools need no
server-to-client requests.

Guard: the dashboard's Host check applies; then a bearer token (the
dashboard's, never the cookie: a browser must not be able to drive ``/mcp``
with its ambient credentials) and, when a browser sends one, an Origin naming
this server.  Calls act as ``mcp.identity``.  Without the SDK installed,
``/mcp`` answers 404 saying how to install it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from naosd.mcp.gateway import Gateway

log = logging.getLogger("naosd.dashboard.mcp")

MCP_PATH = "/mcp"
STOP_S = 5.0


def check_access(request: web.Request, token: str, hosts: set[str]) -> None:
    """Raise unless the request may use ``/mcp`` (the Host was checked before)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] not in hosts:
        raise _json_error(web.HTTPForbidden, "forbidden", "cross-origin request refused")
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise _json_error(web.HTTPUnauthorized, "unauthorized",
                          "send the dashboard token as Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="naos"'})


def _json_error(cls: type[web.HTTPException], code: str, message: str,
                headers: dict[str, str] | None = None) -> web.HTTPException:
    return cls(text=json.dumps({"error": code, "message": message}) + "\n",
               content_type="application/json", headers=headers)


class GatewayBackend:
    """The gateway in process, for HTTP clients: they act as ``mcp.identity``."""

    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self._gateway = gateway

    async def tools(self) -> list[dict[str, Any]]:
        return await self._gateway().tools()

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self._gateway().call(tool, arguments, transport="http")

    async def resources(self) -> list[dict[str, Any]]:
        return Gateway.resources()

    async def read(self, uri: str) -> dict[str, Any]:
        return await self._gateway().read(uri)


class Transport:
    """The SDK's session manager, run in a task of its own: its anyio task group
    must be entered and left by one task."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        started = asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.get_running_loop().create_task(run())
        waiter = asyncio.ensure_future(started.wait())
        await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # it failed to start: raise why

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_S)  # cancelled past it
            except TimeoutError:
                log.warning("the MCP transport did not stop within %gs", STOP_S)


def add_mcp(app: web.Application, gateway: Callable[[], Gateway]) -> None:
    """Serve MCP at :data:`MCP_PATH` (404 when the SDK is not installed)."""
    app[MCP] = Mount(gateway)
    app.cleanup_ctx.append(_lifetime)
    app.router.add_route("*", MCP_PATH, handle)


class Mount:
    """Starts the transport on the first ``/mcp`` request: importing the SDK
    costs naosd 1.4-1.8 s and ~38 MiB here, which a daemon that never serves
    MCP should not pay (nor its start-up wait for)."""

    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self._gateway = gateway
        self._lock = asyncio.Lock()
        self.transport: Transport | None = None
        self.missing = ""  # why MCP cannot be served, once known

    async def get(self) -> Transport | None:
        async with self._lock:
            if self.transport is None and not self.missing:
                self.transport = await self._start()
            return self.transport

    async def stop(self) -> None:
        async with self._lock:
            if self.transport is not None:
                await self.transport.stop()
            self.transport, self.missing = None, "the dashboard has stopped"

    async def _start(self) -> Transport | None:
        try:  # in a thread: the import takes seconds and the event loop serves everyone
            manager_cls, security_cls, build_server = await asyncio.to_thread(_load_sdk)
        except ImportError as exc:
            self.missing = f"the MCP SDK is not installed ({exc})"
            return None
        manager = manager_cls(
            build_server(GatewayBackend(self._gateway)), stateless=True, json_response=True,
            # Host and Origin are checked by the dashboard's guard (one place, the
            # bound address); the SDK's own list would have to repeat them.
            security_settings=security_cls(enable_dns_rebinding_protection=False))
        transport = Transport(manager)
        await transport.start()
        log.info("serving MCP at %s", MCP_PATH)
        return transport


MCP = web.AppKey("mcp", Mount)


def _load_sdk() -> tuple[Any, Any, Any]:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    from naosd.mcp.server import build_server

    return StreamableHTTPSessionManager, TransportSecuritySettings, build_server


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[MCP].stop()


async def handle(request: web.Request) -> web.StreamResponse:
    mount = request.app[MCP]
    transport = await mount.get()
    if transport is None:
        raise _json_error(web.HTTPNotFound, "mcp_unavailable",
                          f"this naosd does not serve MCP: {mount.missing}. "
                          "Install it with pip install 'naos[mcp]' and restart naosd.")
    return await serve_asgi(request, transport.manager.handle_request)


# -- the ASGI bridge -----------------------------------------------------------------


async def serve_asgi(request: web.Request, app: Callable[..., Any]) -> web.StreamResponse:
    """Run one HTTP request through the ASGI application ``app``.

    The body is read whole first (aiohttp's ``client_max_size`` bounds it: 413
    past it).  After the body, ``receive`` reports a disconnect only once the
    application has answered: aiohttp does not signal a client that went away
    before that (the answer then fails to write, and is dropped).
    """
    body = await request.read()
    answered = asyncio.Event()
    delivered = False
    response: web.StreamResponse | None = None

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal response
        if message["type"] == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", []):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        elif message["type"] == "http.response.body" and response is not None:
            if not response.prepared:
                await response.prepare(request)
            await response.write(message.get("body", b""))
            if not message.get("more_body", False):
                await response.write_eof()

    try:
        await app(_scope(request), receive, send)
    finally:
        answered.set()
    if response is None:
        raise _json_error(web.HTTPInternalServerError, "internal", "MCP sent no response")
    if not response.prepared:  # a start without a body
        await response.prepare(request)
        await response.write_eof()
    return response


def _scope(request: web.Request) -> dict[str, Any]:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    local = transport.get_extra_info("sockname") if transport else None
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method, "scheme": request.scheme, "path": request.path,
        "raw_path": request.rel_url.raw_path.encode("latin-1"),
        "query_string": request.rel_url.raw_query_string.encode("latin-1"),
        "root_path": "", "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": tuple(peer[:2]) if peer else None,
        "server": tuple(local[:2]) if local else None,
        "state": {},
    }
