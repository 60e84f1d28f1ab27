"""The agent side of naosd, put together: the agent socket, the agent API it
serves and the run path, from the services they use (the composition root
calls :func:`build_agent_hosting` and hands the result to the agents service).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from naosd.agents.api import AgentApi, ChatService, TaskBroker, Tools
from naosd.agents.channels import AgentChannels, Channel
from naosd.agents.runs import AgentRuns, TrustCheck
from naosd.errors import NotFound
from naosd.storage import agent_runs
from naosd.storage import definitions as defs_store
from naosd.storage.group_commit import GroupCommit

if TYPE_CHECKING:
    from naosd.agents.service import Agents
    from naosd.runtime.hosting import Hosting
    from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.agents.hosting")


class AgentStore:
    """The agent API's state, key/value and definition reads over the store."""

    def __init__(self, db: AsyncStore) -> None:
        self._db = db

    async def load_state(self, agent: str) -> dict[str, Any]:
        return await self._db.call(functools.partial(agent_runs.load_state, agent=agent))

    async def kv_get(self, agent: str, key: str) -> bytes | None:
        def get(store: Any) -> bytes | None:
            try:
                return bytes(store.kv_get(agent, key))
            except NotFound:
                return None

        return await self._db.call(get)

    async def kv_set(self, agent: str, key: str, value: bytes) -> None:
        await self._db.call(lambda s: s.kv_set(agent, key, value))

    async def handler_spec(self, agent: str) -> dict[str, Any]:
        d = await self._db.call(functools.partial(defs_store.get_agent, name=agent))
        return {"kind": d.source_kind, "source": d.source, "config": d.config,
                "max_concurrency": d.max_concurrency, "grants": d.wasm_grants}

    async def acts_as(self, agent: str) -> str:
        """Whom ``agent``'s calls are charged and gated as: itself, or for a
        pool's clone the pool's agent."""
        try:
            d = await self._db.call(functools.partial(defs_store.get_agent, name=agent))
        except NotFound:
            return agent
        return str(d.execution.get("acts_as") or agent)

    async def concurrency(self, agent: str) -> int | None:
        """None for an agent that is not defined (its channel is refused)."""
        try:
            d = await self._db.call(functools.partial(defs_store.get_agent, name=agent))
        except NotFound:
            return None
        return d.max_concurrency


class CostStatus(Protocol):
    """:class:`naosd.broker.cost.CostController`, as far as ``ctx.budget()`` reads it."""

    def has(self, scope: str) -> bool: ...

    def status_of(self, scope: str, now: datetime) -> dict[str, Any]: ...


class AgentBudgets:
    """``ctx.budget()``: this agent's budget, or the global one if it has none."""

    def __init__(self, cost: CostStatus) -> None:
        self._cost = cost

    def remaining(self, agent: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        if self._cost.has(agent):
            return self._cost.status_of(agent, now)
        if self._cost.has("*"):
            return {**self._cost.status_of("*", now), "scope": "*"}
        raise NotFound(f"agent {agent!r} has no budget and no global budget is set")


@dataclass(frozen=True, slots=True)
class AgentHosting:
    channels: AgentChannels
    api: AgentApi
    runs: AgentRuns


def build_agent_hosting(hosting: Hosting, db: AsyncStore, agents: Agents, *,
                        gate: TrustCheck, chat: ChatService | None, broker: TaskBroker | None,
                        cost: CostStatus | None, tools: Tools | None) -> AgentHosting:
    store = AgentStore(db)
    holder: list[AgentApi] = []

    def methods_for(channel: Channel) -> Any:
        return holder[0].methods_for(channel)

    channels = AgentChannels(hosting.agent_socket, hosting.key, methods_for,
                             known=store.concurrency, acts_as=store.acts_as,
                             on_gone=lambda ch: agents.handler_gone(ch.agent, ch.actor_pid))
    runs = AgentRuns(channels, agents.activate_for, GroupCommit(db, agent_runs.commit), gate)
    api = AgentApi(channels=channels, runner=runs, states=store, definitions=store, chat=chat,
                   broker=broker, budgets=AgentBudgets(cost) if cost is not None else None,
                   tools=tools)
    holder.append(api)
    agents.runs, agents.channels = runs, channels
    return AgentHosting(channels, api, runs)
