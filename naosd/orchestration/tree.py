"""naosd's handle on the orchestration subtree: the supervisor (found through
the root, by its logical name) and the pool actors (found through the
supervisor).  Addresses change when an actor restarts: a request that finds
its actor gone is sent once more to the current one.  Every ask is short;
nothing here waits for a run's outcome (naosd learns that from the run's
records, see ``lanes.Watchers``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from actors.messages import Reply, Request, WhereIs
from actors.orch_messages import PoolAddress
from naosd.errors import ActorGone, ActorTimeout, Conflict, NotFound, Unavailable

SUPERVISOR = "orchestration"
FIND_S = 10.0  # how long a restarting supervisor may take to be found
ASK_S = 10.0


def rid() -> str:
    return uuid.uuid4().hex


class Asks(Protocol):
    """What this needs of naosd's bridge."""

    async def ask(self, msg: Request, *, timeout_s: float | None = None) -> Reply: ...

    async def ask_to(self, target: Any, msg: Request, *, timeout_s: float | None = None,
                     raw: bool = False) -> Reply: ...


class OrchTree:
    def __init__(self, bridge: Asks) -> None:
        self._bridge = bridge
        self._supervisor: Any = None
        self._pools: dict[str, Any] = {}

    async def ask(self, msg: Request) -> Any:
        """Ask the orchestration supervisor; its result."""
        return await self._twice(self._find, msg, self._lost_supervisor)

    async def ask_pool(self, pool: str, msg: Request) -> Any:
        """Ask pool ``pool``'s actor (started if needed); its result."""
        return await self._twice(lambda: self._pool(pool), msg,
                                 lambda: self._pools.pop(pool, None))

    async def _twice(self, where: Callable[[], Any], msg: Request,
                     lost: Callable[[], Any]) -> Any:
        for attempt in (1, 2):
            target = await where()
            try:
                reply = await self._bridge.ask_to(target, msg, timeout_s=ASK_S)
            except (ActorGone, ActorTimeout):
                lost()
                if attempt == 2:
                    raise
                continue
            return reply.result
        raise AssertionError("unreachable")

    def _lost_supervisor(self) -> None:
        self._supervisor = None
        self._pools.clear()  # the pool actors were its children

    async def _find(self) -> Any:
        """The supervisor's address; waits (bounded) while it restarts."""
        deadline = time.monotonic() + FIND_S
        while self._supervisor is None:
            try:
                self._supervisor = (await self._bridge.ask(WhereIs(rid(), SUPERVISOR))).result
            except (Conflict, NotFound) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the orchestration supervisor is not running: {exc}"
                                      ) from None
                await asyncio.sleep(0.05)
        return self._supervisor

    async def _pool(self, pool: str) -> Any:
        if pool not in self._pools:
            self._pools[pool] = await self.ask(PoolAddress(rid(), pool))
        return self._pools[pool]
