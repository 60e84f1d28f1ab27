"""The asyncio Unix-socket server: frames in -> dispatch -> frames out.

One ``Connection`` per client.  At accept, once, the client gets its role
(operator or reader, see ``naosd.control.roles``) from the credentials the
kernel captured at its ``connect()`` (``SO_PEERCRED``, ``SO_PEERGROUPS``),
or is refused: a process of this naosd (an agent's handler), a uid with no
role, or one connection too many (``naosd.control.admission``).  It must
then send its ``hello`` (one small frame) within the handshake timeout, and
may pipeline requests; each runs in its own task, so a slow request or a
long stream never blocks the others.  A request for a method the role may
not call gets ``permission_denied`` and the connection goes on.
A request with bad contents (its id, method, params, timeout or any value
JSON cannot hold) gets an error frame and the connection goes on; a frame
that cannot be decoded gets an error frame and the connection is closed
once the client could read it.  The server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from naosd import protocol, telemetry
from naosd.control.admission import Limits
from naosd.control.peers import Peer, no_agent_handler, peer_credentials, process_refusal
from naosd.control.roles import OPERATE, denial, may_call
from naosd.errors import (
    ConfigError,
    InvalidRequest,
    MethodNotFound,
    NaosError,
    PermissionDenied,
    ProtocolError,
    ShuttingDown,
)
from naosd.values import check_values

log = logging.getLogger("naosd.control.server")

MAX_IN_FLIGHT = 128  # concurrent requests per connection, streams included
READ_CHUNK = 1 << 16
LINGER_S = 2.0  # a refused client has this long to read why before the close
LINGER_BYTES = 1 << 20  # ... and may send this much meanwhile (read and dropped)
MAX_LINGERING = 64  # refused connections held at once; past this, closed at once
MAX_PER_UID = 32  # daemon.max_connections_per_uid's default
NO_TRACE: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler learns about the request it serves."""

    method: str
    params: dict[str, Any]
    peer: Peer
    # time.monotonic() after which the client no longer waits (from the
    # request's ``timeout``); None when the client did not say.
    deadline: float | None = None
    # The caller's trace context ({"traceparent": ...} from the request's
    # ``traceparent``): the request's span continues the caller's trace.
    trace: Mapping[str, str] = field(default_factory=lambda: NO_TRACE)


@dataclass(frozen=True, slots=True)
class InFlight:
    task: asyncio.Task[None]
    stream: bool


Unary = Callable[[Call], Awaitable[Any]]
Streaming = Callable[[Call], AsyncIterator[Any]]


class Dispatcher:
    """Where the server sends each request (implemented by naosd.control.api)."""

    def lookup(self, method: str) -> tuple[Unary | None, Streaming | None]:
        raise NotImplementedError

    def role_of(self, method: str) -> str | None:
        """What ``method`` needs (``read`` or ``operate``); None: no such method."""
        return OPERATE


class Refusals:
    """Told of every refused connection and denied call (naosd audits them,
    in aggregate: naosd.control.refusals); closed with the server."""

    def refused(self, peer: Peer, reason: str) -> None:
        log.warning("refused client pid %d uid %d: %s", peer.pid, peer.uid, reason)

    def denied(self, peer: Peer, method: str, need: str, role: str) -> None:
        log.warning("denied %s to uid %d (%s)", method, peer.uid, role)

    async def close(self) -> None:
        return None


class ControlServer:
    def __init__(
        self,
        path: Path,
        dispatcher: Dispatcher,
        *,
        authorize: Callable[[Peer], str],
        max_frame: int,
        max_connections: int,
        handshake_timeout: float,
        server_info: dict[str, Any],
        refusals: Refusals | None = None,
        max_connections_per_uid: int = MAX_PER_UID,
        socket_mode: int = 0o600,
        socket_gid: int | None = None,
        is_agent_handler: Callable[[int], bool] = no_agent_handler,
    ) -> None:
        """``authorize(peer)`` is the peer's role, or raises PermissionDenied
        saying why not; ``is_agent_handler(pid)`` is true for the handler
        processes of agents (refused even though they share naosd's uid)."""
        self.path = path
        self.dispatcher = dispatcher
        self._authorize = authorize
        self.refusals = refusals or Refusals()
        self._is_agent_handler = is_agent_handler
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid
        self.owner_uid = os.getuid()
        self.held: Counter[int] = Counter()  # uid -> connections served (refused ones aside)
        self.handshake_timeout = handshake_timeout
        self.server_info = server_info
        self._socket_mode = socket_mode
        self._socket_gid = socket_gid
        self._server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.requests_served = 0
        self.closing = False
        self.lingering = 0  # refused connections waiting for their client to read why

    async def start(self) -> None:
        """Bind and listen.  The socket gets its mode before anyone can
        connect: it is created under a umask that grants nothing else."""
        old = os.umask(0o177 if self._socket_mode == 0o600 else 0o117)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, path=str(self.path), limit=READ_CHUNK
            )
        finally:
            os.umask(old)
        if self._socket_gid is not None:
            try:
                os.chown(self.path, -1, self._socket_gid)
            except PermissionError:
                raise ConfigError(
                    f"cannot give {self.path} to gid {self._socket_gid}: naosd's user "
                    "must be a member of the group that may reach the socket") from None
        os.chmod(self.path, self._socket_mode)

    def admit(self, conn: Connection, sock: socket.socket) -> str:
        """The new connection's role; raises PermissionDenied saying why not."""
        peer = conn.peer
        reason = process_refusal(sock, peer, self._is_agent_handler)
        if reason is not None:
            raise PermissionDenied(reason)
        role = self._authorize(peer)
        limits = Limits(self.max_connections, self.max_connections_per_uid, self.owner_uid)
        reason = limits.refusal(peer.uid, self.held)
        if reason is not None:
            raise PermissionDenied(reason)
        self.held[peer.uid] += 1
        conn.admitted = True
        return role

    def release(self, conn: Connection) -> None:
        if conn.admitted:
            conn.admitted = False
            self.held[conn.peer.uid] -= 1
            if self.held[conn.peer.uid] <= 0:
                del self.held[conn.peer.uid]

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to
        ``drain_timeout`` seconds, then fail the rest with ShuttingDown."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.end_streams()
        pending = [t for c in self.connections for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
        for conn in list(self.connections):
            await conn.abort()
            conn.writer.close()  # the reader sees EOF and the handler returns
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.connections and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        await self.refusals.close()

    async def _on_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.serve()
        except asyncio.CancelledError:
            pass  # shutting down: the connection is closed below
        finally:
            self.connections.discard(conn)
            self.release(conn)
            await conn.close()


class Connection:
    def __init__(
        self,
        server: ControlServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.decoder = protocol.FrameDecoder(max_frame=protocol.HELLO_MAX_FRAME)
        self.decoder.limit_note = " before the hello"
        self._in_flight: dict[int, InFlight] = {}
        self._finished = False  # the last frame (a refusal) is sent: nothing may follow
        self.peer = Peer(-1, -1, -1)
        self.role = ""  # decided at accept (naosd.control.roles)
        self.admitted = False  # holds one of its uid's slots

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The tasks of every request in flight (unary and streams)."""
        return [f.task for f in self._in_flight.values()]

    # -- lifecycle -------------------------------------------------------
    async def serve(self) -> None:
        sock = self.writer.get_extra_info("socket")
        self.peer = peer_credentials(sock)
        try:
            self.role = self.server.admit(self, sock)
        except PermissionDenied as exc:
            self.server.refusals.refused(self.peer, exc.message)
            await self._refuse(protocol.error(None, exc.code, exc.message))
            return
        try:
            if await self._handshake():
                await self._read_loop()
        except ProtocolError as exc:
            await self._refuse(protocol.error(None, exc.code, exc.message))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def _handshake(self) -> bool:
        try:
            first = await asyncio.wait_for(self._next_message(), self.server.handshake_timeout)
        except TimeoutError:
            raise ProtocolError(
                f"no hello within {self.server.handshake_timeout:g}s") from None
        if first is None:
            return False
        if first.get("type") != "hello":
            raise ProtocolError("the first frame must be a hello")
        version = first.get("protocol")
        if version != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {version!r}; "
                f"this naosd speaks {protocol.PROTOCOL_VERSION}"
            )
        try:
            check_values(first)
        except InvalidRequest as exc:
            raise ProtocolError(f"hello: {exc.message}") from None
        self.decoder.max_frame, self.decoder.limit_note = self.server.max_frame, ""
        await self.send(protocol.hello("server", **self.server.server_info,
                                       max_frame=self.server.max_frame))
        return True

    async def _next_message(self) -> dict[str, Any] | None:
        """The next frame; reads only when none is buffered, so at most one
        chunk is buffered past a frame whose length is refused."""
        while (message := self.decoder.next()) is None:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                return None
            self.decoder.push(data)
        return message

    async def _refuse(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` (the last) and let the client read it: shut down our
        side, then read and drop what the client still sends (its hello, the
        rest of a refused frame) until it closes, for at most LINGER_S.
        Closing at once would make the client's own send fail (EPIPE) before
        it read why."""
        for entry in self._in_flight.values():
            entry.task.cancel()  # what they still send is dropped (_finished)
        if not self._finished and not self.writer.is_closing():
            self.writer.write(protocol.encode_frame(frame, max_frame=self.server.max_frame))
            if self.writer.can_write_eof():
                self.writer.write_eof()
        self._finished = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()
        if self.server.lingering >= MAX_LINGERING:
            return  # a flood of refused clients: do not hold their sockets
        self.server.lingering += 1
        try:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(self._drop_input(LINGER_BYTES), LINGER_S)
        finally:
            self.server.lingering -= 1

    async def _drop_input(self, limit: int) -> None:
        while limit > 0 and (data := await self.reader.read(min(READ_CHUNK, limit))):
            limit -= len(data)

    async def _read_loop(self) -> None:
        while (message := await self._next_message()) is not None:
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("request", "cancel"):
            raise ProtocolError(f"clients may not send {kind!r} frames")
        try:
            req_id = _id_of(message)
        except InvalidRequest as exc:
            await self.send(protocol.error(None, exc.code, exc.message))
            return
        if kind == "cancel":
            self._cancel(req_id)
        elif self.server.closing:
            await self.send(protocol.error(req_id, ShuttingDown.code, "naosd is shutting down"))
        else:
            await self._request(req_id, message)

    def _cancel(self, req_id: int) -> None:
        """Cancel a stream in flight.  A unary request, a finished or an
        unknown id: nothing to do (its answer, if any, is sent as usual)."""
        entry = self._in_flight.get(req_id)
        if entry is not None and entry.stream:
            entry.task.cancel()

    async def _request(self, req_id: int, message: dict[str, Any]) -> None:
        try:
            if req_id in self._in_flight:
                raise InvalidRequest(
                    f"request {req_id}: id {req_id} is already in flight on this "
                    "connection (the first request goes on)")
            method, params, timeout, trace = _check_request(req_id, message)
            self._check_role(method)
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                raise InvalidRequest(f"request {req_id}: too many requests in flight "
                                     f"(limit {MAX_IN_FLIGHT}, streams included)")
        except (InvalidRequest, PermissionDenied) as exc:
            await self.send(protocol.error(req_id, exc.code, exc.message))
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self._spawn(req_id, Call(method, params, self.peer, deadline, trace))

    def _check_role(self, method: str) -> None:
        need = self.server.dispatcher.role_of(method)
        if need is not None and not may_call(self.role, need):
            self.server.refusals.denied(self.peer, method, need, self.role)
            raise PermissionDenied(denial(method, need, self.role))

    def _spawn(self, req_id: int, call: Call) -> None:
        unary, streaming = self.server.dispatcher.lookup(call.method)
        if streaming is not None:
            coro = self._run_stream(req_id, streaming, call)
        else:
            coro = self._run_unary(req_id, unary, call)
        task = asyncio.get_running_loop().create_task(self._tracked(req_id, coro))
        self._in_flight[req_id] = InFlight(task, streaming is not None)

    async def _tracked(self, req_id: int, coro: Coroutine[Any, Any, None]) -> None:
        """Run one request; its id is free again as soon as its last frame is
        written (in the same step, before the client can reuse it)."""
        try:
            await coro
        finally:
            self._in_flight.pop(req_id, None)

    # -- running requests --------------------------------------------------
    async def _run_unary(self, req_id: int, fn: Unary | None, call: Call) -> None:
        try:
            if fn is None:
                raise MethodNotFound(f"unknown method {call.method!r}")
            with telemetry.attached(call.trace), self._span(call):
                result = await fn(call)
        except asyncio.CancelledError:
            await self._send_quietly(protocol.error(
                req_id, ShuttingDown.code,
                "naosd is shutting down; the request was cancelled"))
            raise
        except NaosError as exc:
            await self._send_quietly(protocol.error(req_id, exc.code, exc.message))
            return
        except Exception as exc:
            log.exception("method %s failed", call.method)
            await self._send_quietly(protocol.error(
                req_id, "internal", f"{call.method} failed: {type(exc).__name__}: {exc}"))
            return
        self.server.requests_served += 1
        await self._send_result(req_id, result, call.method)

    async def _send_result(self, req_id: int, result: Any, method: str) -> None:
        try:
            frame = protocol.encode_frame(protocol.reply(req_id, result),
                                          max_frame=self.server.max_frame)
        except ProtocolError as exc:
            frame = protocol.encode_frame(protocol.error(
                req_id, "internal", f"{method}: reply cannot be sent: {exc.message}"))
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            await self._write(frame)

    def _span(self, call: Call) -> telemetry.OpenSpan:
        """The request's span (OpenTelemetry's RPC conventions: a server span)."""
        span = telemetry.span(call.method, "server")
        if span.recording:
            span.update({"rpc.system": "naos", "rpc.method": call.method,
                         "naos.peer.uid": self.peer.uid, "naos.peer.role": self.role,
                         "naos.transport": "socket"})
        return span

    async def _run_stream(self, req_id: int, fn: Streaming, call: Call) -> None:
        try:
            with telemetry.attached(call.trace), self._span(call):
                async for item in fn(call):
                    await self.send(protocol.event(req_id, item))
            await self.send(protocol.end(req_id))
        except asyncio.CancelledError:
            await self._send_quietly(protocol.end(req_id))
        except NaosError as exc:
            await self._send_quietly(protocol.error(req_id, exc.code, exc.message))
        except (ConnectionError, RuntimeError):
            pass
        except Exception as exc:
            log.exception("stream %s failed", call.method)
            await self._send_quietly(protocol.error(
                req_id, "internal", f"{call.method} failed: {type(exc).__name__}: {exc}"))
        self.server.requests_served += 1

    def end_streams(self) -> None:
        """Finish every open stream (they send their ``end`` frame)."""
        for entry in list(self._in_flight.values()):
            if entry.stream:
                entry.task.cancel()

    async def abort(self) -> None:
        """Cancel every request in flight; each sends its own shutting_down
        error frame (see _run_unary) or the end of its stream."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)

    # -- writing -------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        await self._write(protocol.encode_frame(message, max_frame=self.server.max_frame))

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(message)

    async def _write(self, frame: bytes) -> None:
        if self._finished or self.writer.is_closing():
            raise ConnectionResetError("client went away, or was refused")
        self.writer.write(frame)
        await self.writer.drain()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _id_of(message: dict[str, Any]) -> int:
    """A request's or cancel's id: any integer, 0 and negatives included."""
    kind = message["type"]
    if "id" not in message:
        raise InvalidRequest(f"{kind}: 'id' is missing (an integer is required)")
    value = message["id"]
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " (send ids as msgpack integers)" if isinstance(value, float) else ""
        raise InvalidRequest(f"{kind}: 'id' must be an integer, got {_shown(value)}{hint}")
    return value


def _check_request(
    req_id: int, message: dict[str, Any]
) -> tuple[str, dict[str, Any], float | None, Mapping[str, str]]:
    """Method, params, timeout and trace context of a request, every value checked."""
    try:
        check_values(message, binary_at="params")
    except InvalidRequest as exc:
        raise InvalidRequest(f"request {req_id}: {exc.message}") from None
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest(f"request {req_id}: 'method' must be a non-empty string")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"request {req_id}: 'params' must be a map with string keys")
    timeout = message.get("timeout")
    if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not 0 < timeout <= protocol.MAX_REQUEST_TIMEOUT):
        raise InvalidRequest(
            f"request {req_id}: 'timeout' must be a number of seconds above 0 and at most "
            f"{protocol.MAX_REQUEST_TIMEOUT:g}, got {_shown(timeout)}")
    return method, params, None if timeout is None else float(timeout), _trace_of(
        req_id, message)


def _trace_of(req_id: int, message: dict[str, Any]) -> Mapping[str, str]:
    """The request's ``traceparent`` as a carrier (checked even when tracing
    is off: a client learns of a malformed one at once)."""
    raw = message.get("traceparent")
    if raw is None:
        return NO_TRACE
    try:
        return {"traceparent": telemetry.check_traceparent(raw, "'traceparent'")}
    except ValueError as exc:
        raise InvalidRequest(f"request {req_id}: {exc}") from None


def _shown(value: Any) -> str:
    name = "nil" if value is None else type(value).__name__
    return name if value is None else f"{name} {repr(value)[:40]}"
