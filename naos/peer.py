"""One end of an agent channel: requests both ways over one connection.

The channel speaks the control protocol's frames (``naosd.protocol``:
length-prefixed msgpack maps typed ``request``, ``reply``, ``error``,
``event``, ``end``, ``cancel``), but both ends may send requests: naosd asks
the handler to ``run`` a message, the handler asks naosd for ``llm.chat``,
``agent.ask`` and the rest of the agent API.  Each side numbers its own
requests; a reply, error, event or end frame always answers a request of
the side that receives it, and a cancel frame always names a request of the
side that receives it, so the two id spaces never meet.

:class:`Peer` is that end on asyncio: :meth:`call` and :meth:`stream` send a
request and wait for its answer; incoming requests are served by the
``methods`` table, each in its own task (so a slow one never blocks the
others), cancelled when the other side sends ``cancel`` or goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from naosd import protocol
from naosd.errors import InvalidRequest, MethodNotFound, NaosError, ProtocolError, from_wire
from naosd.errors.agents import Cancelled, ChannelClosed
from naosd.values import check_values

log = logging.getLogger("naos.peer")

READ_CHUNK = 1 << 16
MAX_IN_FLIGHT = 1024  # requests of the other side served at once on one channel


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request the other side sent: what a served method learns about it."""

    id: int
    method: str
    params: dict[str, Any]


Unary = Callable[[Incoming], Awaitable[Any]]
Streaming = Callable[[Incoming], AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    """A method one side serves: ``fn`` returns its result, or yields its
    events when ``stream``."""

    fn: Callable[[Incoming], Any]
    stream: bool = False


class Peer:
    """Requests out, requests in, on one reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 methods: Mapping[str, Method], *,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME) -> None:
        self._reader = reader
        self._writer = writer
        self.methods = methods
        self._max_frame = max_frame
        self._decoder = protocol.FrameDecoder(max_frame=max_frame)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._write_lock = asyncio.Lock()
        self._closed: BaseException | None = None
        self.done = asyncio.Event()

    # -- the read loop ---------------------------------------------------------
    async def run(self) -> None:
        """Read and route frames until the other side goes away (then every
        call waiting here fails with :class:`ChannelClosed`)."""
        reason: BaseException = ChannelClosed("the channel was closed")
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                for message in self._decoder.feed(data):
                    await self._route(message)
        except ProtocolError as exc:
            reason = ChannelClosed(f"the channel broke: {exc.message}")
            with contextlib.suppress(ConnectionError, RuntimeError, ProtocolError):
                await self._send(protocol.error(None, exc.code, exc.message))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._shut(reason)

    def _shut(self, reason: BaseException) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        for queue in self._waiting.values():
            queue.put_nowait({"type": "_closed"})
        for task in list(self._serving.values()):
            task.cancel()
        self._writer.close()
        self.done.set()

    def close(self) -> None:
        """Close the connection; calls in flight fail with ChannelClosed."""
        self._shut(ChannelClosed("the channel was closed"))

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def _route(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        try:
            check_values(message)  # JSON values only, bounded depth: as on the control socket
        except InvalidRequest as exc:
            if kind == "request" and _id(message) is not None:
                await self._send(protocol.error(_id(message), exc.code, exc.message))
                return
            raise ProtocolError(exc.message) from None
        if kind == "request":
            await self._serve(message)
        elif kind == "cancel":
            task = self._serving.get(_id(message) or 0)
            if task is not None:
                task.cancel()
        elif kind in ("reply", "error", "event", "end"):
            queue = self._waiting.get(_id(message) or 0)
            if queue is not None:
                queue.put_nowait(message)
            elif kind == "error" and message.get("id") is None:
                self._shut(ChannelClosed(f"the other side refused: {message.get('message')}"))
        else:
            raise ProtocolError(f"unexpected {kind!r} frame on an agent channel")

    # -- serving the other side's requests -----------------------------------
    async def _serve(self, message: dict[str, Any]) -> None:
        req_id = _id(message)
        method = message.get("method")
        params = message.get("params") or {}
        if req_id is None or not isinstance(method, str) or not isinstance(params, dict):
            raise ProtocolError("a request needs an integer id, a method and a params map")
        if req_id in self._serving:
            await self._send(protocol.error(req_id, "invalid_request",
                                            f"request id {req_id} is already in flight"))
            return
        if len(self._serving) >= MAX_IN_FLIGHT:
            await self._send(protocol.error(req_id, "invalid_request",
                                            f"too many requests in flight ({MAX_IN_FLIGHT})"))
            return
        entry = self.methods.get(method)
        call = Incoming(req_id, method, params)
        coro = self._one(entry, call) if entry is None or not entry.stream \
            else self._many(entry, call)
        task = asyncio.get_running_loop().create_task(coro)
        self._serving[req_id] = task
        task.add_done_callback(functools.partial(self._served, req_id))

    def _served(self, req_id: int, task: asyncio.Task[None]) -> None:
        if self._serving.get(req_id) is task:
            del self._serving[req_id]

    async def _one(self, entry: Method | None, call: Incoming) -> None:
        try:
            if entry is None:
                raise MethodNotFound(f"unknown method {call.method!r}")
            result = await entry.fn(call)
        except asyncio.CancelledError:
            await self._quietly(protocol.error(call.id, Cancelled.code, f"{call.method} cancelled"))
            raise
        except NaosError as exc:
            await self._quietly(protocol.error(call.id, exc.code, exc.message))
            return
        except Exception as exc:
            log.exception("%s failed", call.method)
            await self._quietly(protocol.error(
                call.id, "internal", f"{call.method} failed: {type(exc).__name__}: {exc}"))
            return
        try:
            await self._send(protocol.reply(call.id, result))
        except ProtocolError as exc:
            await self._quietly(protocol.error(
                call.id, "invalid_request", f"{call.method}: the result cannot be sent: "
                f"{exc.message}"))

    async def _many(self, entry: Method, call: Incoming) -> None:
        try:
            async for item in entry.fn(call):
                await self._send(protocol.event(call.id, item))
            await self._send(protocol.end(call.id))
        except asyncio.CancelledError:
            await self._quietly(protocol.end(call.id))
            raise
        except NaosError as exc:
            await self._quietly(protocol.error(call.id, exc.code, exc.message))
        except Exception as exc:
            log.exception("%s failed", call.method)
            await self._quietly(protocol.error(
                call.id, "internal", f"{call.method} failed: {type(exc).__name__}: {exc}"))

    # -- our requests -----------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and return its result; raises the error it got
        (rebuilt from its wire code) or ChannelClosed.  Cancelling the
        awaiting task cancels the request on the other side."""
        req_id, queue = await self._start(method, params)
        try:
            message = await queue.get()
        except asyncio.CancelledError:
            await self._quietly({"type": "cancel", "id": req_id})
            raise
        finally:
            self._waiting.pop(req_id, None)
        return self._result(method, message)

    async def stream(self, method: str, params: dict[str, Any] | None = None
                     ) -> AsyncIterator[Any]:
        """Send a streaming request; yield its events until its end."""
        req_id, queue = await self._start(method, params)
        finished = False
        try:
            while True:
                message = await queue.get()
                if message["type"] == "event":
                    yield message.get("data")
                    continue
                finished = True
                if message["type"] == "end":
                    return
                self._result(method, message)
        finally:
            self._waiting.pop(req_id, None)
            if not finished:
                await self._quietly({"type": "cancel", "id": req_id})

    async def _start(self, method: str, params: dict[str, Any] | None
                     ) -> tuple[int, asyncio.Queue[dict[str, Any]]]:
        if self._closed is not None:
            raise ChannelClosed(str(self._closed))
        req_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiting[req_id] = queue
        try:
            frame = protocol.encode_frame(protocol.request(req_id, method, params or {}),
                                          max_frame=self._max_frame)
        except ProtocolError as exc:  # the caller's values (a set, 64 MiB): its bad input
            self._waiting.pop(req_id, None)
            raise InvalidRequest(f"{method}: {exc.message}") from None
        try:
            await self._write(frame)
        except BaseException:
            self._waiting.pop(req_id, None)
            raise
        return req_id, queue

    def _result(self, method: str, message: dict[str, Any]) -> Any:
        kind = message["type"]
        if kind == "reply":
            return message.get("result")
        if kind == "error":
            raise from_wire(str(message.get("code")), str(message.get("message")))
        if kind == "_closed":
            raise ChannelClosed(f"{method}: {self._closed}")
        raise ProtocolError(f"{method}: unexpected {kind!r} frame")

    # -- writing ------------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> None:
        await self._write(protocol.encode_frame(message, max_frame=self._max_frame))

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            if self._writer.is_closing():
                raise ChannelClosed("the channel is closed")
            self._writer.write(frame)
            await self._writer.drain()

    async def _quietly(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, ProtocolError):
            await self._send(message)


def _id(message: dict[str, Any]) -> int | None:
    value = message.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
