"""Tool calls for agents: the agent API's ``Tools`` (``ctx.tools.call``,
``ctx.tools.list``; :class:`naosd.agents.api.Tools`).

A call goes the way every charged call goes (:mod:`naosd.broker.spend`):

1. the name is resolved (``server.tool`` or the function name
   ``server__tool``); an unknown server or tool is ``unknown_tool``;
2. the arguments are checked against the tool's ``inputSchema``
   (``invalid_request``); refusals so far are audited as ``tool.denied``;
3. the trust gate decides for the agent and the tool's price is reserved on
   its budgets (``trust_denied``, ``budget_*``): a denied agent never reaches
   the server;
4. ``tools/call`` runs within the caller's deadline;
5. it is settled and recorded (ledger row, budgets, ``tool.call`` audit row:
   server, tool, cost, time; never the arguments nor the answer).

What is charged: the price when the server answered, an ``isError`` answer
included (it ran; the agent gets ``tool_failed``); nothing when the call did
not run or its outcome is unknown (the server refused it, was down, died, or
the deadline passed): the reservation is released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from actors.domain.tool_servers import (
    MAX_RESULT_BYTES,
    ToolInfo,
    result_size,
    result_text,
    split_tool,
)
from naosd.broker.spend import Charge, Charged, Spender, Spent
from naosd.broker.tools.servers import ToolServers
from naosd.broker.tools.supervisor import ServerSlot
from naosd.errors import InvalidRequest, NaosError, ToolFailed, ToolServerDown, UnknownTool
from naosd.schemas import check_arguments, preload_jsonschema

AUDIT_TYPE = "tool.call"  # its refusals: tool.denied


class AgentTools:
    def __init__(self, servers: ToolServers, spender: Spender,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._servers = servers
        self._spender = spender
        self._clock = clock
        self._schemas_ready = False

    async def list(self, agent: str) -> list[dict[str, Any]]:
        """Every tool of the servers that are up, as OpenAI-style function specs
        (for ``ctx.llm.chat(tools=...)``); tools without a function name are left
        out (see :mod:`actors.domain.tool_servers`)."""
        return [t.spec() for slot in self._servers.up() for t in slot.listing.tools
                if t.function is not None]

    async def call(self, agent: str | None, tool: str, args: dict[str, Any], *,
                   deadline: float) -> dict[str, Any]:
        """Run ``tool`` for ``agent``; see the module docstring.

        Returns ``{tool, text, content, structured, cost_micro, task_id}``.

        Raises:
            UnknownTool, InvalidRequest, TrustDenied, BudgetExceeded, Throttled,
            ToolServerDown, ToolFailed, RequestTimeout: recorded first.
        """
        charge = Charge("tool", tool[:200], 0, AUDIT_TYPE)
        try:
            slot, info = await self._resolve(tool, deadline)
            charge = Charge("tool", info.qualified, slot.definition.price_of(info.name),
                            AUDIT_TYPE, detail={"server": slot.name, "tool": info.name})
            await self._check(info, args, deadline)
        except NaosError as exc:
            await self._spender.deny(agent, charge, exc)
            raise

        async def work(granted: int) -> Spent:
            return await self._run(slot, info, args, deadline, charge.want_micro)

        spent, receipt = await self._spender.charge(agent, charge, work)
        return {**spent.result, "cost_micro": receipt.cost_micro, "task_id": receipt.task_id}

    async def _resolve(self, tool: str, deadline: float) -> tuple[ServerSlot, ToolInfo]:
        server, name, by_function = split_tool(tool)
        slot = self._servers.get(server)
        if slot is None:
            raise UnknownTool(f"no tool named {tool[:200]!r}: no tool server {server!r} is "
                              "registered")
        info = slot.find(name, by_function=by_function)
        if info is None and slot.conn is not None:  # it may have added the tool since
            await slot.refresh(deadline)
            info = slot.find(name, by_function=by_function)
        if info is None and slot.conn is None and not slot.listing.tools:
            raise ToolServerDown(slot.why_down())  # nothing to look the name up in
        if info is None:
            raise UnknownTool(f"tool server {server} has no tool {name[:128]!r} (naosctl mcp "
                              f"tools {server})")
        return slot, info

    async def _check(self, info: ToolInfo, args: dict[str, Any], deadline: float) -> None:
        """The arguments against the tool's inputSchema, in a thread: the schema is
        the server's (a ``pattern`` could backtrack for ever), never on the loop."""
        if not self._schemas_ready:
            await asyncio.to_thread(preload_jsonschema)  # its first import blocks
            self._schemas_ready = True
        checking = asyncio.to_thread(check_arguments, args, info.input_schema,
                                     f"tool {info.qualified}")
        try:
            await asyncio.wait_for(checking, max(deadline - self._clock(), 0.0))
        except TimeoutError:
            raise InvalidRequest(f"tool {info.qualified}: checking the arguments against its "
                                 "inputSchema did not end in time") from None

    async def _run(self, slot: ServerSlot, info: ToolInfo, args: dict[str, Any],
                   deadline: float, price: int) -> Spent:
        await slot.ensure(deadline)  # a restart may be under way: not part of the call's time
        started = self._clock()
        raw = await slot.call(info.name, args, deadline)
        ms = round((self._clock() - started) * 1e3, 3)
        text = result_text(raw.get("content") or [])
        result = {"tool": info.qualified, "text": text, "content": raw.get("content") or [],
                  "structured": raw.get("structuredContent")}
        if raw.get("isError"):
            raise Charged(price, ToolFailed(f"{info.qualified}: {text[:1000] or 'error'}"))
        if result_size(result) > MAX_RESULT_BYTES:
            raise Charged(price, ToolFailed(f"{info.qualified} answered more than "
                                            f"{MAX_RESULT_BYTES >> 20} MiB"))
        return Spent(result, price, detail={"ms": ms})
