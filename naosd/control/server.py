"""The asyncio Unix-socket server: frames in -> dispatch -> frames out.

One ``Connection`` per client.  A client must be allowed by its peer
credentials (``SO_PEERCRED``), must send its ``hello`` within the handshake
timeout, and may then pipeline requests; each runs in its own task, so a slow
request or a long stream never blocks the others.  Any malformed frame gets
an error frame and the connection is closed; the server keeps serving
everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naosd import protocol
from naosd.errors import (
    InvalidRequest,
    MethodNotFound,
    NaosError,
    ProtocolError,
    ShuttingDown,
)

log = logging.getLogger("naosd.control.server")

MAX_IN_FLIGHT = 128  # concurrent requests per connection
READ_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler learns about the request it serves."""

    method: str
    params: dict[str, Any]
    peer: Peer


Unary = Callable[[Call], Awaitable[Any]]
Streaming = Callable[[Call], AsyncIterator[Any]]


class Dispatcher:
    """Where the server sends each request (implemented by naosd.control.api)."""

    def lookup(self, method: str) -> tuple[Unary | None, Streaming | None]:
        raise NotImplementedError


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class ControlServer:
    def __init__(
        self,
        path: Path,
        dispatcher: Dispatcher,
        *,
        authorize: Callable[[Peer], str | None],
        on_refused: Callable[[Peer, str], None],
        max_frame: int,
        max_connections: int,
        handshake_timeout: float,
        server_info: dict[str, Any],
        socket_mode: int = 0o600,
        socket_gid: int | None = None,
    ) -> None:
        self.path = path
        self.dispatcher = dispatcher
        self._authorize = authorize
        self._on_refused = on_refused
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.server_info = server_info
        self._socket_mode = socket_mode
        self._socket_gid = socket_gid
        self._server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.requests_served = 0
        self.closing = False

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
            os.chown(self.path, -1, self._socket_gid)
        os.chmod(self.path, self._socket_mode)

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
        self.decoder = protocol.FrameDecoder(max_frame=server.max_frame)
        self.tasks: dict[asyncio.Task[None], int] = {}
        self._streams: dict[int, asyncio.Task[None]] = {}
        self.peer = Peer(-1, -1, -1)
        self._backlog: list[dict[str, Any]] = []

    # -- lifecycle -------------------------------------------------------
    async def serve(self) -> None:
        sock = self.writer.get_extra_info("socket")
        self.peer = peer_credentials(sock)
        reason = self.server._authorize(self.peer)
        if reason is None and len(self.server.connections) > self.server.max_connections:
            reason = f"too many connections (limit {self.server.max_connections})"
        if reason is not None:
            self.server._on_refused(self.peer, reason)
            await self.send(protocol.error(None, "permission_denied", reason))
            return
        try:
            if not await self._handshake():
                return
            await self._read_loop()
        except ProtocolError as exc:
            await self.send(protocol.error(None, exc.code, exc.message))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def _handshake(self) -> bool:
        try:
            first = await asyncio.wait_for(self._next_message(), self.server.handshake_timeout)
        except TimeoutError:
            await self.send(protocol.error(
                None, "protocol_error",
                f"no hello within {self.server.handshake_timeout:g}s"))
            return False
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
        await self.send(protocol.hello("server", **self.server.server_info,
                                       max_frame=self.server.max_frame))
        return True

    async def _next_message(self) -> dict[str, Any] | None:
        while not self._backlog:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                return None
            self._backlog.extend(self.decoder.feed(data))
        return self._backlog.pop(0)

    async def _read_loop(self) -> None:
        while (message := await self._next_message()) is not None:
            if self.server.closing:
                await self._refuse_while_closing(message)
                continue
            await self._handle(message)

    async def _refuse_while_closing(self, message: dict[str, Any]) -> None:
        if message.get("type") == "request":
            await self.send(protocol.error(
                _id_of(message), ShuttingDown.code, "naosd is shutting down"))

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "cancel":
            task = self._streams.get(_id_of(message) or -1)
            if task is not None:
                task.cancel()
            return
        if kind != "request":
            raise ProtocolError(f"clients may not send {kind!r} frames")
        req_id = _id_of(message)
        if req_id is None:
            raise ProtocolError("a request needs an integer 'id'")
        try:
            method, params = _check_request(req_id, message)
        except InvalidRequest as exc:
            await self.send(protocol.error(req_id, exc.code, exc.message))
            return
        if len(self.tasks) >= MAX_IN_FLIGHT:
            await self.send(protocol.error(
                req_id, "invalid_request",
                f"too many requests in flight (limit {MAX_IN_FLIGHT})"))
            return
        self._spawn(req_id, method, params)

    def _spawn(self, req_id: int, method: str, params: dict[str, Any]) -> None:
        unary, streaming = self.server.dispatcher.lookup(method)
        call = Call(method, params, self.peer)
        if streaming is not None:
            coro = self._run_stream(req_id, streaming, call)
        else:
            coro = self._run_unary(req_id, unary, call)
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks[task] = req_id
        if streaming is not None:
            self._streams[req_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        req_id = self.tasks.pop(task, None)
        if req_id is not None and self._streams.get(req_id) is task:
            del self._streams[req_id]

    # -- running requests --------------------------------------------------
    async def _run_unary(self, req_id: int, fn: Unary | None, call: Call) -> None:
        try:
            if fn is None:
                raise MethodNotFound(f"unknown method {call.method!r}")
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
        await self._write(frame)

    async def _run_stream(self, req_id: int, fn: Streaming, call: Call) -> None:
        try:
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
        for task in list(self._streams.values()):
            task.cancel()

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
        if self.writer.is_closing():
            raise ConnectionResetError("client went away")
        self.writer.write(frame)
        await self.writer.drain()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _id_of(message: dict[str, Any]) -> int | None:
    value = message.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_request(req_id: int, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest(f"request {req_id}: 'method' must be a non-empty string")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise InvalidRequest(f"request {req_id}: 'params' must be a map with string keys")
    return method, params
