"""The port: the one way an actor reaches naosd.

Actors never open the database, a socket or a file of naosd's.  When an
actor needs one of naosd's services (persist a run's record, append audit
rows, run an agent through naosd's gates), it sends a
:class:`~actors.messages.PortRequest` to the port's address, which its
parent handed it in its init message, and gets a
:class:`~actors.messages.PortReply` echoing the request id.

The port is a Thespian external endpoint owned by one thread of naosd that
only listens; each request is handed to the event loop, where the handler
the composition root registered for the request's type runs as its own
task (so a slow request never holds the others).  Replies leave through a
second endpoint owned by a sender thread: a Thespian endpoint is not
thread-safe, and an actor accepts a message from any endpoint.

Frames on the port are authenticated like every actor frame (the
per-daemon MAC in ``naosd.runtime.actorsys``): only actors of this daemon
can send requests.  Confined agent code holds no key and reaches naosd only
through its own channel.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from actors.messages import PortReply, PortRequest
from naosd.errors import InvalidRequest, NaosError, Unavailable

log = logging.getLogger("naosd.runtime.port")

Handler = Callable[[Any], Awaitable[Any]]
LISTEN_S = 0.25  # how often the listener looks at its stop flag
_STOP = object()


class ActorPort:
    """Serves actors' requests on naosd's event loop."""

    def __init__(self, system: Any, handlers: Mapping[type[PortRequest], Handler]) -> None:
        self._system = system
        self._handlers = dict(handlers)
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address: Any = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0

    @property
    def address(self) -> Any:
        """The ``ActorAddress`` actors send their requests to."""
        if self._address is None:
            raise Unavailable("the actor port is not started")
        return self._address

    def register(self, kind: type[PortRequest], handler: Handler) -> None:
        """Serve requests of type ``kind`` with ``handler`` (composition root)."""
        self._handlers[kind] = handler

    async def start(self, timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in ((self._listen, "naos-port-in"), (self._send, "naos-port-out")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if not await asyncio.to_thread(self._ready.wait, timeout_s):
            raise Unavailable("the actor port did not start")

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Stop listening and sending; wait (bounded) for both threads to end
        so their endpoints are closed."""
        self._closed.set()
        self._outbox.put(_STOP)
        for task in list(self._tasks):
            task.cancel()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout_s)

    # -- threads ---------------------------------------------------------------
    def _listen(self) -> None:
        with self._system.private() as endpoint:
            self._address = endpoint._systemBase.transport.myAddress
            self._ready.set()
            while not self._closed.is_set():
                try:
                    message = endpoint.listen(LISTEN_S)
                except Exception:  # keep listening: one bad frame must not end the port
                    log.exception("actor port: listen failed")
                    continue
                if isinstance(message, PortRequest) and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._spawn, message)
                elif message is not None:
                    log.warning("actor port: ignored a %s", type(message).__name__)

    def _send(self) -> None:
        with self._system.private() as endpoint:
            while True:
                item = self._outbox.get()
                if item is _STOP:
                    return
                address, reply = item
                try:
                    endpoint.tell(address, reply)
                except Exception as exc:  # noqa: BLE001 - the asker is gone: nothing to do
                    log.warning("actor port: reply %s undeliverable: %s", reply.request_id, exc)

    # -- event loop ------------------------------------------------------------
    def _spawn(self, request: PortRequest) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: PortRequest) -> None:
        handler = self._handlers.get(type(request))
        try:
            if handler is None:
                raise InvalidRequest(f"naosd serves no {type(request).__name__} on the port")
            result = await handler(request)
            reply = PortReply(request.request_id, True, result)
        except NaosError as exc:
            reply = PortReply(request.request_id, False, error_code=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("actor port: %s failed", type(request).__name__)
            reply = PortReply(request.request_id, False, error_code="internal",
                              message=f"{type(exc).__name__}: {exc}")
        self.served += 1
        if not self._closed.is_set():
            self._outbox.put((request.reply_to, reply))
