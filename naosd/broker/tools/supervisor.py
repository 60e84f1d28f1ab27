"""One registered tool server, kept connected: started (stdio) or reached
(HTTP), its tools listed, watched, restarted after a crash.

The rules are the embedded LLM's (:mod:`naosd.broker.llm.health`, pure): an
exit naosd did not ask for is a crash; the next start waits 1 s, 2 s, 4 s ...
(at most 30 s); a stdio server that crashes 3 times within 10 minutes is
*failed* and left alone until ``naosctl mcp restart``.  An HTTP server is not
naosd's process: an endpoint that cannot be reached is *down* and tried again
after the same backoff, for as long as it is registered.

Why a task and not an actor: the server is a subprocess (or an HTTP peer)
that naosd's event loop talks to, through the SDK's asyncio client; an actor
would add a process and a hop per call and could not hold the session.  The
supervision is the same as an agent's (restart with backoff, give up on a
crash loop, audited), applied by this task.

Nothing here imports the MCP SDK: the session comes from ``open_session``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from actors.domain.tool_servers import Listing, ServerDef, ToolInfo, listing
from naosd.broker.llm import health as hl
from naosd.broker.llm.health import CrashPolicy, Phase
from naosd.errors import NaosError, RequestTimeout, ToolServerDown

log = logging.getLogger("naosd.tools")

STDIO_POLICY: Final = CrashPolicy()  # as the local LLM's: 3 crashes in 10 min, failed
HTTP_POLICY: Final = CrashPolicy(max_crashes=sys.maxsize)  # never failed: retried, down
CONNECT_TIMEOUT_S: Final = 60.0  # start (or reach) + handshake + first tools/list
LIST_TIMEOUT_S: Final = 30.0
DIED_GRACE_S: Final = 1.0  # a connection cut by an exit can come before the exit is seen
STATES: Final = {Phase.READY: "up", Phase.BACKOFF: "down", Phase.CRASHED: "failed"}

Opener = Callable[[ServerDef], AbstractAsyncContextManager[Any]]  # -> session.Connection
Audit = Callable[..., Awaitable[Any]]  # AsyncStore.audit(type, actor=, agent=, **detail)


class ServerSlot:
    def __init__(self, definition: ServerDef, open_session: Opener, audit: Audit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.definition = definition
        self.policy = STDIO_POLICY if definition.transport == "stdio" else HTTP_POLICY
        self._open = open_session
        self._audit = audit
        self._clock = clock
        self.health = hl.Health(since=clock())
        self.listing = Listing()
        self.conn: Any = None  # the session.Connection while up
        self._changed = asyncio.Event()  # replaced at every change of phase
        self._listing_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._supervise(), name=f"tool-server-{self.name}")

    async def stop(self) -> None:
        """Stop the server (or the wait for its next start); its listing stays."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._set(hl.exited(self.health, "stopped by naosd", self._clock(), self.policy,
                            asked=True) if self.health.phase is not Phase.CRASHED
                  else self.health)

    async def restart(self) -> None:
        """``naosctl mcp restart``: stop it, forget its crashes, start it again."""
        await self.stop()
        self._set(hl.reset(self.health, self._clock()))
        self.start()

    async def _supervise(self) -> None:
        while True:
            if self.health.phase is Phase.CRASHED:
                return  # until restart()
            wait = hl.wait_s(self.health, self._clock())
            if wait > 0:
                await asyncio.sleep(wait)
            await self._incarnation()

    async def _incarnation(self) -> None:
        self._set(hl.start(self.health, self._clock()))
        ready_by = asyncio.timeout(CONNECT_TIMEOUT_S)
        late = f"not ready within {CONNECT_TIMEOUT_S:g} s (start, handshake, tools/list)"
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with ready_by:
                    conn = await stack.enter_async_context(self._open(self.definition))
                    await self._list(conn)
                await self._up(conn)
                how = await self._serve(conn)
        except ToolServerDown as exc:  # the session's unwinding may wrap our own timeout
            how = late if ready_by.expired() else exc.message
        except TimeoutError:
            how = late
        finally:
            self.conn = None
        await self._crashed(how)

    async def _up(self, conn: Any) -> None:
        self.conn = conn
        self._set(hl.ready(self.health, self._clock()))
        log.info("tool server %s up: %s, %d tools", self.name,
                 f"pid {conn.pid}" if conn.pid else self.definition.url, len(self.listing.tools))
        await self._record("toolserver.started", pid=conn.pid, starts=self.health.starts,
                           tools=len(self.listing.tools), protocol=conn.protocol)

    async def _serve(self, conn: Any) -> str:
        """Until the connection ends: how it ended.  Refreshes the listing when
        the server says its tools changed."""
        while True:
            await _first(conn.closed, conn.changed)
            if conn.closed.is_set():
                return str(conn.how)
            conn.changed.clear()
            with contextlib.suppress(ToolServerDown, TimeoutError):
                await self._list(conn)

    async def _crashed(self, how: str) -> None:
        was_up = self.health.phase is Phase.READY or self.health.starts == 1
        self._set(hl.exited(self.health, how, self._clock(), self.policy, asked=False))
        h = self.health
        if h.phase is Phase.CRASHED:
            log.error("tool server %s failed (%s; %d crashes within %g s): not restarted until "
                      "`naosctl mcp restart %s`", self.name, how, len(h.crash_times),
                      self.policy.window_s, self.name)
            await self._record("toolserver.failed", how=how, crashes=len(h.crash_times),
                               window_s=self.policy.window_s)
            return
        retry = hl.wait_s(h, self._clock())
        if not was_up and self.policy is HTTP_POLICY:  # still down: said when it went down
            log.info("tool server %s still down (%s): next try in %.0f s", self.name, how, retry)
            return
        log.warning("tool server %s down (%s): next try in %.0f s", self.name, how, retry)
        await self._record("toolserver.crashed", how=how, crashes=len(h.crash_times),
                           retry_in_s=round(retry, 1))

    async def _record(self, type_: str, **detail: Any) -> None:
        try:
            await self._audit(type_, actor="mcp", server=self.name, **detail)
        except NaosError as exc:  # supervision goes on without the row
            log.warning("tool server %s: audit %s failed: %s", self.name, type_, exc.message)

    def _set(self, health: hl.Health) -> None:
        self.health = health
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the tools -----------------------------------------------------------------------

    async def _list(self, conn: Any) -> None:
        async with self._listing_lock, asyncio.timeout(LIST_TIMEOUT_S):
            self.listing = listing(self.name, await conn.list_tools())
        for problem in self.listing.skipped:
            log.warning("tool server %s: skipped %s", self.name, problem)

    async def refresh(self, deadline: float) -> Listing:
        """List the tools again now (on demand)."""
        conn = await self.ensure(deadline)
        try:
            await self._list(conn)
        except TimeoutError:
            raise RequestTimeout(f"tool server {self.name} did not list its tools within "
                                 f"{LIST_TIMEOUT_S:g} s") from None
        return self.listing

    def find(self, name: str, *, by_function: bool) -> ToolInfo | None:
        return self.listing.by_function(name) if by_function else self.listing.find(name)

    async def ensure(self, deadline: float) -> Any:
        """The connection once up, waiting until ``deadline`` (a clock time)
        while it starts or waits out a backoff that ends before then.

        Raises:
            ToolServerDown: failed, stopped, or not up by the deadline.
        """
        while True:
            conn = self.conn
            if conn is not None and self.health.phase is Phase.READY and not conn.closed.is_set():
                return conn
            h, now = self.health, self._clock()
            gone = h.phase is Phase.CRASHED or self._task is None
            late = h.phase is Phase.BACKOFF and h.retry_at >= deadline
            if gone or late or now >= deadline:
                raise ToolServerDown(self.why_down())
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - now)

    def why_down(self) -> str:
        h, name = self.health, self.name
        if h.phase is Phase.CRASHED:
            return (f"tool server {name} failed ({h.last_exit}; {len(h.crash_times)} crashes "
                    f"within {self.policy.window_s:g} s): `naosctl mcp restart {name}`")
        if h.phase is Phase.BACKOFF:
            return (f"tool server {name} is down ({h.last_exit}); next try in "
                    f"{hl.wait_s(h, self._clock()):.0f} s")
        if self._task is None:
            return f"tool server {name} is stopped"
        return f"tool server {name} is still starting"

    async def call(self, tool: str, arguments: dict[str, Any], deadline: float
                   ) -> dict[str, Any]:
        """``tools/call`` within ``deadline``: the result as a wire dict.

        Raises:
            ToolServerDown: not up, or died during the call (naming how).
            RequestTimeout: no answer by the deadline.
            ToolFailed: the server refused the call.
        """
        conn = await self.ensure(deadline)
        try:
            async with asyncio.timeout(max(deadline - self._clock(), 0.0)):
                result: dict[str, Any] = await conn.call_tool(tool, arguments)
                return result
        except TimeoutError:
            raise RequestTimeout(f"tool {self.name}.{tool} did not answer in time") from None
        except ToolServerDown as exc:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.closed.wait(), DIED_GRACE_S)
            if conn.closed.is_set():
                raise ToolServerDown(f"tool server {self.name} exited during the call "
                                     f"({conn.how}); it is restarted") from None
            raise ToolServerDown(f"tool server {self.name}: {exc.message}") from None

    def describe(self) -> dict[str, Any]:
        h, now = self.health, self._clock()
        conn = self.conn
        running = self._task is not None and not self._task.done()
        state = "starting" if running and h.phase is Phase.STOPPED else \
            STATES.get(h.phase, h.phase.value)
        return {**self.definition.public(), "state": state,
                "pid": conn.pid if conn is not None else None,
                "protocol": conn.protocol if conn is not None else None,
                "tools": len(self.listing.tools), "skipped": list(self.listing.skipped),
                **{k: v for k, v in hl.to_dict(h, now, self.policy).items() if k != "state"},
                **({} if self.policy is STDIO_POLICY else {"max_crashes": None})}


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
