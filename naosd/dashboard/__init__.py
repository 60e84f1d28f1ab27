"""The dashboard served by naosd itself (aiohttp, bound to 127.0.0.1).

Every data route needs the daemon's token: ``/?token=T`` exchanges it for an
HttpOnly, SameSite=Strict cookie and redirects so the token leaves the
address bar; scripts may send ``Authorization: Bearer T`` instead.  The Host
header must name this server (DNS-rebinding defence) and any state-changing
request must carry a matching Origin and the CSRF header.
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from naosd import telemetry
from naosd.dashboard.mcp import MCP_PATH, add_mcp, check_access

COOKIE = "naos_session"
CSRF_HEADER = "X-Naos-CSRF"
if TYPE_CHECKING:
    from naosd.services import Services

STATUS = web.AppKey("status", Any)
TOKEN = web.AppKey("token", str)
HOSTS = web.AppKey("hosts", set)


class StatusSource(Protocol):
    async def status(self) -> dict[str, Any]: ...


def csrf_token(token: str) -> str:
    """What a state-changing request must send in :data:`CSRF_HEADER`: derived
    from the session token, handed to the page by ``/api/v1/session``.  A
    cross-site form cannot set a custom header, and a script on another origin
    cannot read the value (defence in depth behind SameSite=Strict and the
    Origin check)."""
    return hmac.new(token.encode(), b"naos dashboard csrf", "sha256").hexdigest()


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN]
    given = request.cookies.get(COOKIE, "")
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given = auth[7:]
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    hosts = request.app[HOSTS]
    if hosts and request.host not in hosts:
        raise web.HTTPForbidden(text=f"unexpected Host header {request.host!r}\n")
    if request.path == MCP_PATH:  # MCP clients: bearer token only, no cookie, no CSRF header
        check_access(request, request.app[TOKEN], hosts)
        served: web.StreamResponse = await handler(request)
        return served
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin", "")
        if origin.split("://", 1)[-1] not in hosts:
            raise web.HTTPForbidden(text="cross-origin request refused\n")
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), csrf_token(request.app[TOKEN]).encode()):
            raise web.HTTPForbidden(text=f"missing or wrong {CSRF_HEADER} header\n")
    if request.path == "/healthz":
        return await handler(request)
    if request.path == "/" and "token" in request.query:
        return _login(request)
    if not _authorized(request):
        if request.path.startswith("/api/"):
            raise web.HTTPUnauthorized(
                text='{"error":"unauthorized","message":"token required"}\n',
                content_type="application/json")
        raise web.HTTPUnauthorized(
            text="naos dashboard: log in with the link `naosctl dashboard` prints.\n")
    return await handler(request)


@web.middleware
async def trace_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request's W3C ``traceparent`` header: the methods it runs join that
    trace (a malformed one is ignored, as W3C Trace Context asks of HTTP)."""
    given = request.headers.get("traceparent")
    with telemetry.attached({"traceparent": given} if given else {}):
        served: web.StreamResponse = await handler(request)
        return served


def _login(request: web.Request) -> web.StreamResponse:
    given = request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), request.app[TOKEN].encode()):
        raise web.HTTPForbidden(text="wrong token\n")
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE, given, httponly=True, samesite="Strict", path="/")
    return response


async def index(request: web.Request) -> web.StreamResponse:
    html = resources.files("naosd.dashboard").joinpath("static/index.html").read_text()
    return web.Response(text=html, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; "
                                 "script-src 'self' 'unsafe-inline'; "
                                 "style-src 'self' 'unsafe-inline'"})


async def api_status(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[STATUS].status())


async def session(request: web.Request) -> web.StreamResponse:
    return web.json_response({"csrf_header": CSRF_HEADER,
                              "csrf_token": csrf_token(request.app[TOKEN])})


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def make_app(services: Services, token: str, hosts: set[str]) -> web.Application:
    app = web.Application(middlewares=[guard, trace_context])
    app[STATUS] = services.daemon
    app[TOKEN] = token
    app[HOSTS] = hosts
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/status", api_status)
    app.router.add_get("/api/v1/session", session)
    from naosd.dashboard.api import SERVICES, add_routes

    app[SERVICES] = services
    add_routes(app)
    from naosd.mcp.methods import gateway_for

    add_mcp(app, lambda: gateway_for(services))  # the control methods, in process
    return app


class DashboardServer:
    def __init__(self, services: Services, token: str) -> None:
        self._services = services
        self.token = token
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._hosts: set[str] = set()

    async def start(self, host: str, port: int) -> None:
        app = make_app(self._services, self.token, self._hosts)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            from naosd.errors import ConfigError

            raise ConfigError(
                f"dashboard.port: cannot listen on {host}:{port}: {exc.strerror} "
                "(set dashboard.port, NAOS_DASHBOARD_PORT or --dashboard-port)"
            ) from None
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        real_port = bound[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{real_port}/"
        self._hosts.update({f"{shown}:{real_port}", f"localhost:{real_port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
