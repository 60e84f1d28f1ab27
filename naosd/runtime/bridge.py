"""The ONLY asyncio <-> Thespian boundary (STYLE C.7).

``ActorSystem.ask`` blocks its thread, and one endpoint shared by several
threads scrambles replies (measured: 397 of 400 wrong). So every ask runs on a
thread of the bridge's own executor (never the loop's default one), with that
thread's own ``system.private()`` endpoint (kept for the thread's life: a
new endpoint per ask measured ~1,300 asks/s, one per thread ~2,500/s), with a
timeout, and the reply must echo the request's ``request_id``: a late reply
to an earlier ask that timed out on the same endpoint is skipped.  Thespian
failures are translated here into
``naosd.errors``: no reply -> ``ActorTimeout``, an error ``Reply`` ->
``from_wire(code, message)``, anything odd -> ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorSystemException

from actors.messages import Reply, Request
from naosd.errors import ActorGone, ActorTimeout, ShuttingDown, Unavailable, from_wire

if TYPE_CHECKING:
    from naosd.runtime.actorsys import ActorRuntime


def _stale(reply: object, msg: Request) -> bool:
    """A Reply to some other request (a late one): keep listening."""
    return isinstance(reply, Reply) and reply.request_id != msg.request_id


class Bridge:
    """Asks actors from asyncio code without blocking the event loop."""

    def __init__(self, runtime: ActorRuntime, *, timeout_s: float, max_workers: int = 8) -> None:
        self._system = runtime.system
        self._root = runtime.root
        self._timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="naos-bridge"
        )
        self._closed = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._contexts: list[Any] = []

    async def ask(self, msg: Request, *, timeout_s: float | None = None) -> Reply:
        """Ask the root supervisor; see :meth:`ask_to`."""
        return await self.ask_to(self._root, msg, timeout_s=timeout_s)

    async def ask_to(self, target: Any, msg: Request, *, timeout_s: float | None = None,
                     raw: bool = False) -> Reply:
        """Send ``msg`` to the actor at ``target`` and return its ``Reply``.

        Raises ``ActorTimeout`` when no reply comes within ``timeout_s`` (or
        the target is dead), the error a failed ``Reply`` names (unless
        ``raw``: then a failed Reply is returned as it is), and
        ``ShuttingDown`` after :meth:`close`.
        """
        if self._closed:
            raise ShuttingDown("the actor bridge is closed")
        timeout = self._timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        try:
            started = time.monotonic()
            reply = await loop.run_in_executor(
                self._executor, self._ask_blocking, target, msg, timeout)
        except RuntimeError as exc:  # executor shut down under us
            raise ShuttingDown("the actor bridge is closed") from exc
        if reply is None and time.monotonic() - started < timeout * 0.9:
            raise ActorGone(f"{type(msg).__name__}: no reply, the actor is gone")
        return self._checked(msg, reply, timeout, raw)

    async def tell_to(self, target: Any, msg: Any) -> None:
        """Send ``msg`` to the actor at ``target``; no answer is awaited."""
        if self._closed:
            raise ShuttingDown("the actor bridge is closed")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._tell_blocking, target, msg)
        except RuntimeError as exc:  # executor shut down under us
            raise ShuttingDown("the actor bridge is closed") from exc

    def _tell_blocking(self, target: Any, msg: Any) -> None:
        try:
            self._endpoint().tell(target, msg)
        except ActorSystemException as exc:
            self._local.endpoint = None
            raise Unavailable(f"actor system failed: {exc}") from exc

    def close(self) -> None:
        """Refuse new asks; running ones finish on their threads (no blocking)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _endpoint(self) -> Any:
        endpoint = getattr(self._local, "endpoint", None)
        if endpoint is None:
            context = self._system.private()
            endpoint = context.__enter__()
            self._local.endpoint = endpoint
            with self._lock:
                self._contexts.append(context)
        return endpoint

    def _ask_blocking(self, target: Any, msg: Request, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        try:
            endpoint = self._endpoint()
            reply = endpoint.ask(target, msg, timeout)
            while _stale(reply, msg) and (left := deadline - time.monotonic()) > 0:
                reply = endpoint.listen(left)  # skip a late reply to an earlier ask
        except ActorSystemException as exc:
            self._local.endpoint = None
            raise Unavailable(f"actor system failed: {exc}") from exc
        return None if _stale(reply, msg) else reply

    def _checked(self, msg: Request, reply: object, timeout: float, raw: bool = False) -> Reply:
        if reply is None:
            raise ActorTimeout(f"{type(msg).__name__} got no reply in {timeout:g}s")
        if not isinstance(reply, Reply) or reply.request_id != msg.request_id:
            raise Unavailable(f"unexpected reply {reply!r} to {msg.request_id}")
        if not reply.ok and not raw:
            raise from_wire(reply.error_code, reply.message)
        return reply
