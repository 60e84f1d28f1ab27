"""naosd's side of a step's or a pool task's agent call.

The agent is asked through the Agents service, the same path as
``agent.run`` (activation of on-demand agents, the run's audit row).  What
comes back is either what the AGENT did (its output, or its error: it
crashed, timed out, does not exist) or a failure of NAOSD's own (it is
shutting down, its storage failed, the agents supervisor is not up): the
latter is raised, never reported as the agent's, so a pool task is queued
again and a coordinator restarts from its record instead of failing a step.

The agents supervisor not running yet (naosd starting, or restarting it)
is a reason to wait, not to fail: the call waits for it to register,
within the call's own time.  A call under an idempotency key that is
already running is not sent twice: the second caller (a coordinator that
restarted and re-sent its in-doubt step) gets the first call's answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any, Protocol

from actors.domain.definitions import IMPLICIT_SUPERVISOR
from naosd.errors import (
    ActorTimeout,
    AuditError,
    Conflict,
    NaosError,
    RequestTimeout,
    SandboxCrashed,
    StorageError,
    Unavailable,
)

TREE_WAIT_S = 30.0


class AgentCalls(Protocol):
    """What this needs of naosd's Agents service."""

    async def run(self, name: str, payload: Any, *, wait_s: float, key: str
                  ) -> dict[str, Any]: ...

    async def resolve(self, name: str, *, wait_s: float = 0.0, stale: int = 0
                      ) -> dict[str, Any] | None: ...


def naosd_made(exc: NaosError) -> bool:
    """A failure of naosd's own, not of the agent (a timeout is the agent's)."""
    if isinstance(exc, ActorTimeout | RequestTimeout | SandboxCrashed):
        return False
    return isinstance(exc, Unavailable | StorageError | AuditError)


class StepCalls:
    def __init__(self, agents: AgentCalls, *, tree_wait_s: float = TREE_WAIT_S) -> None:
        self._agents = agents
        self._tree_wait_s = tree_wait_s
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def tree_ready(self, wait_s: float | None = None) -> None:
        """Return once the agents supervisor is registered (Unavailable after ``wait_s``)."""
        wait = self._tree_wait_s if wait_s is None else wait_s
        if await self._agents.resolve(IMPLICIT_SUPERVISOR, wait_s=wait) is None:
            raise Unavailable(f"the agents supervisor did not start within {wait:g}s")

    async def run(self, agent: str, message: Any, *, key: str, wait_s: float
                  ) -> dict[str, Any]:
        """``{"ok": True, "output"}`` or ``{"ok": False, "code", "message"}``;
        raises a failure of naosd's own."""
        call = self._running.get(key) if key else None
        if call is None:
            call = asyncio.get_running_loop().create_task(self._call(agent, message, key, wait_s))
            if key:
                self._running[key] = call
                call.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(call)  # one caller gone does not cancel the others'

    def _forget(self, key: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left to await it

    async def _call(self, agent: str, message: Any, key: str, wait_s: float
                    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                reply = await self._agents.run(agent, message, wait_s=wait_s, key=key)
            except Conflict as exc:  # the agents supervisor may not be up yet
                if await self._agents.resolve(IMPLICIT_SUPERVISOR) is not None:
                    return _agents_error(exc)
                await self.tree_ready(max(0.0, deadline - loop.time()))
                continue
            except NaosError as exc:
                if naosd_made(exc):
                    raise
                return _agents_error(exc)
            return {"ok": True, "output": reply.get("output")}

    async def aclose(self) -> None:
        calls = list(self._running.values())
        for call in calls:
            call.cancel()
        for call in calls:
            with contextlib.suppress(BaseException):
                await call


def _agents_error(exc: NaosError) -> dict[str, Any]:
    return {"ok": False, "code": exc.code, "message": str(exc)}
