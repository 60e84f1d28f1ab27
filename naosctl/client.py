"""The naos client library: talk to naosd over its Unix socket.

This is the public "actor message API" for programs::

    from naosctl.client import Client
    with Client("/run/user/1000/naos/naosd.sock") as c:
        print(c.call("status"))
        for row in c.stream("audit.tail", n=5, follow=True): ...

    async with AsyncClient(path) as c:
        await c.call("ping")

Both shells share one sans-I/O core (:class:`Conversation`): it builds
frames, parses what arrives and maps error frames to the exception classes
of :mod:`naosd.errors` (each carries its LSB exit code).  Every unary call
tells naosd how long the client waits (the request's ``timeout``).  A
refused client still reads why: a failed send (EPIPE, ECONNRESET) is
followed by reading what naosd sent.  Importing this module stays light:
stdlib + msgpack, no thespian, no wasmtime.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from naosd import __version__, protocol
from naosd.errors import (
    DaemonNotRunning,
    NaosError,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    from_wire,
)

if TYPE_CHECKING:
    import asyncio  # imported where used: a blocking naosctl call never needs it

DEFAULT_TIMEOUT = 60.0
CLIENT_MAX_FRAME = 1 << 30  # naosd is trusted further than its clients are
CLIENT_MAX_VALUES = 1 << 26


def not_running(path: Path | str, why: str) -> DaemonNotRunning:
    return DaemonNotRunning(
        f"naosd is not running: cannot connect to {path} ({why}). "
        "Start it with `naosd` (or `systemctl --user start naosd`), "
        "or point at another socket with --socket / $NAOS_SOCKET."
    )


def connect_error(path: Path | str, exc: OSError) -> NaosError:
    """The error to raise when connecting to ``path`` failed with ``exc``."""
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"cannot open {path}: permission denied")
    return not_running(path, exc.strerror or type(exc).__name__)


class Conversation:
    """Sans-I/O client state: request ids, handshake, frame parsing."""

    def __init__(self, timeout: float | None = None, traceparent: str | None = None) -> None:
        self._ids = itertools.count(1)
        self.timeout = timeout
        self.traceparent = traceparent  # W3C trace context every request carries
        self.decoder = protocol.FrameDecoder(max_frame=CLIENT_MAX_FRAME,
                                             max_values=CLIENT_MAX_VALUES)
        self.server: dict[str, Any] = {}
        self._ready: list[dict[str, Any]] = []

    def hello_frame(self) -> bytes:
        return protocol.encode_frame(protocol.hello("client", client=f"naosctl/{__version__}"))

    def request_frame(self, method: str, params: dict[str, Any], *,
                      stream: bool = False) -> tuple[int, bytes]:
        """A unary request carries the client's timeout (naosd then knows how
        long it is waited for); a stream does not (it is read item by item)."""
        req_id = next(self._ids)
        timeout = None if stream else _wire_timeout(self.timeout)
        return req_id, protocol.encode_frame(
            protocol.request(req_id, method, params, timeout=timeout,
                             traceparent=self.traceparent))

    def cancel_frame(self, req_id: int) -> bytes:
        return protocol.encode_frame({"type": "cancel", "id": req_id})

    def feed(self, data: bytes) -> None:
        self._ready.extend(self.decoder.feed(data))

    def received(self, data: bytes, path: str) -> None:
        """What one read returned: b"" is naosd closing the connection."""
        if not data:
            raise not_running(path, "naosd closed the connection")
        self.feed(data)

    def next_message(self) -> dict[str, Any] | None:
        return self._ready.pop(0) if self._ready else None

    def accept_hello(self, message: dict[str, Any]) -> None:
        if message["type"] == "error":
            raise from_wire(str(message.get("code")), str(message.get("message")))
        if message["type"] != "hello" or message.get("protocol") != protocol.PROTOCOL_VERSION:
            raise ProtocolError(f"unexpected handshake reply: {message!r}")
        self.server = message

    @staticmethod
    def outcome(req_id: int, message: dict[str, Any]) -> tuple[str, Any]:
        """Classify a frame for request ``req_id``: ("reply"|"event"|"end"|
        "skip", value).  Raises the mapped error for error frames."""
        if message["type"] == "error" and message.get("id") in (req_id, None):
            raise from_wire(str(message.get("code")), str(message.get("message")))
        if message.get("id") != req_id:
            return "skip", None
        kind = message["type"]
        if kind == "reply":
            return "reply", message.get("result")
        if kind == "event":
            return "event", message.get("data")
        if kind == "end":
            return "end", None
        raise ProtocolError(f"unexpected {kind!r} frame for request {req_id}")


def _wire_timeout(timeout: float | None) -> float | None:
    if timeout is None or timeout <= 0:
        return None
    return min(float(timeout), protocol.MAX_REQUEST_TIMEOUT)


class Client:
    """Blocking client.  One request at a time per instance."""

    def __init__(self, socket_path: Path | str, *, timeout: float = DEFAULT_TIMEOUT,
                 traceparent: str | None = None) -> None:
        self.path = str(socket_path)
        self.timeout = timeout
        self._conv = Conversation(timeout, traceparent)
        self._sock: socket.socket | None = None

    def connect(self) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise connect_error(self.path, exc) from None
        self._sock = sock
        try:
            self._sendall(self._conv.hello_frame())
            self._conv.accept_hello(self._receive())
        except BaseException:
            self.close()
            raise
        return self

    def _sendall(self, frame: bytes) -> None:
        """Send; when naosd already closed its side (it refused us, or it is
        stopping), what it sent before is still readable: the caller's next
        _receive raises that error, or not_running."""
        assert self._sock is not None, "not connected"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._sock.sendall(frame)

    @property
    def server(self) -> dict[str, Any]:
        return self._conv.server

    def _receive(self) -> dict[str, Any]:
        assert self._sock is not None, "not connected"
        while (message := self._conv.next_message()) is None:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise RequestTimeout(f"no answer from naosd within {self.timeout:g}s") from None
            except ConnectionError as exc:
                raise not_running(self.path, f"connection lost: {exc}") from None
            self._conv.received(data, self.path)
        return message

    def _send(self, method: str, params: dict[str, Any], *, stream: bool) -> int:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        req_id, frame = self._conv.request_frame(method, params, stream=stream)
        self._sendall(frame)
        return req_id

    def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its result; raises NaosError."""
        req_id = self._send(method, params, stream=False)
        while True:
            kind, value = self._conv.outcome(req_id, self._receive())
            if kind == "reply":
                return value
            if kind != "skip":
                raise ProtocolError(f"{method} is a stream; use stream()")

    def stream(self, method: str, **params: Any) -> Iterator[Any]:
        """Yield a streaming method's events until the server ends it."""
        req_id = self._send(method, params, stream=True)
        try:
            while True:
                kind, value = self._conv.outcome(req_id, self._receive())
                if kind in ("end", "reply"):
                    return
                if kind == "event":
                    yield value
        except GeneratorExit:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client; several calls may be in flight at once."""

    def __init__(self, socket_path: Path | str, *, timeout: float = DEFAULT_TIMEOUT,
                 traceparent: str | None = None) -> None:
        self.path = str(socket_path)
        self.timeout = timeout
        self._conv = Conversation(timeout, traceparent)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiters: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._pump: asyncio.Task[None] | None = None

    async def connect(self) -> AsyncClient:
        """Handshake on the bare socket (a stream transport would drop what
        naosd sent once our hello fails with EPIPE), then wrap it in streams."""
        import asyncio

        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                await loop.sock_connect(sock, self.path)
            except OSError as exc:
                raise connect_error(self.path, exc) from None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await loop.sock_sendall(sock, self._conv.hello_frame())
            try:
                first = await asyncio.wait_for(self._read_hello(sock), self.timeout)
            except TimeoutError:
                raise RequestTimeout(f"no hello from naosd within {self.timeout:g}s") from None
            self._conv.accept_hello(first)
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        self._pump = loop.create_task(self._route())
        return self

    async def _read_hello(self, sock: socket.socket) -> dict[str, Any]:
        import asyncio

        loop = asyncio.get_running_loop()
        while (message := self._conv.next_message()) is None:
            try:
                data = await loop.sock_recv(sock, 1 << 16)
            except ConnectionError as exc:
                raise not_running(self.path, f"connection lost: {exc}") from None
            self._conv.received(data, self.path)
        return message

    async def _read_one(self) -> dict[str, Any]:
        assert self._reader is not None
        while (message := self._conv.next_message()) is None:
            data = await self._reader.read(1 << 16)
            self._conv.received(data, self.path)
        return message

    async def _route(self) -> None:
        try:
            while True:
                message = await self._read_one()
                targets = (self._waiters.values() if message.get("id") is None
                           else [self._waiters.get(message["id"])])
                for queue in targets:
                    if queue is not None:
                        queue.put_nowait(message)
        except (NaosError, ConnectionError) as exc:
            gone = protocol.error(None, getattr(exc, "code", "not_running"), str(exc))
            for queue in self._waiters.values():
                queue.put_nowait(gone)

    async def _start(
        self, method: str, params: dict[str, Any], *, stream: bool
    ) -> tuple[int, asyncio.Queue[dict[str, Any]]]:
        import asyncio

        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        req_id, frame = self._conv.request_frame(method, params, stream=stream)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[req_id] = queue
        self._writer.write(frame)
        await self._writer.drain()
        return req_id, queue

    async def call(self, method: str, **params: Any) -> Any:
        import asyncio

        req_id, queue = await self._start(method, params, stream=False)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), self.timeout)
                except TimeoutError:
                    raise RequestTimeout(
                        f"no answer from naosd within {self.timeout:g}s") from None
                kind, value = self._conv.outcome(req_id, message)
                if kind == "reply":
                    return value
        finally:
            self._waiters.pop(req_id, None)

    async def stream(self, method: str, **params: Any) -> AsyncIterator[Any]:
        req_id, queue = await self._start(method, params, stream=True)
        try:
            while True:
                kind, value = self._conv.outcome(req_id, await queue.get())
                if kind in ("end", "reply"):
                    return
                if kind == "event":
                    yield value
        finally:
            self._waiters.pop(req_id, None)
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(self._conv.cancel_frame(req_id))

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
