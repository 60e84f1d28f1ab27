"""Agents call MCP tools: real handler processes (``python -m naos.host``) on
their channels (tests/test_agent_channel.py's world), naosd's agent API with
the MCP client's ``Tools``, a real store, the real trust gate, cost controller
and ledger, and a real MCP server (the SDK's server side, over stdio) that naos
starts (the middle layer: no actors, no daemon)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from harness import short_tempdir
from mcp_tool_servers import write_server
from test_agent_channel import World as ChannelWorld

from actors.domain.budget import BudgetPolicy
from naosd.agents.api import AgentApi
from naosd.broker.axis import AxisConfig
from naosd.broker.cost import CostController
from naosd.broker.ledger_writer import LedgerWriter
from naosd.broker.spend import Spender
from naosd.broker.tools import supervisor
from naosd.broker.tools.calls import AgentTools
from naosd.broker.tools.servers import ToolServers
from naosd.broker.trust_gate import TrustGate
from naosd.errors import InvalidRequest, RequestTimeout
from naosd.storage import ledger
from naosd.storage import trust as trust_store
from naosd.storage.db import AsyncStore

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")]

# Any error a ctx call raises comes back as data, so the test reads its code.
TOOL_USER = """
async def handle(message, ctx):
    try:
        if message["op"] == "list":
            return await ctx.tools.list()
        return await ctx.tools.call(message["tool"], message.get("args"))
    except Exception as exc:
        return {"error": getattr(exc, "code", type(exc).__name__), "message": str(exc)}
"""

# A sync handler: offers the tools to a (pretend) model and runs the call it picked.
LLM_STYLE = """
import json

def handle(message, ctx):
    specs = ctx.tools.list()
    chosen = next(s for s in specs if s["function"]["name"] == message["function"])
    result = ctx.tools.call(chosen["function"]["name"], json.loads(message["arguments"]))
    return {"offered": [s["function"]["name"] for s in specs], "text": result["text"]}
"""


class World(ChannelWorld):
    """test_agent_channel's world (real handler processes on their channels), its
    agent API given the MCP client's Tools over a real spender and trust gate."""

    def __init__(self, root: Path, db: AsyncStore) -> None:
        super().__init__(root, db)
        self.calls_file = root / "calls.jsonl"
        self.cost = CostController()
        self.spender = Spender(TrustGate(db, AxisConfig()), self.cost, LedgerWriter(db))
        self.servers = ToolServers(db, log_dir=root / "logs", environ=os.environ,
                                   private=(root / "state",))
        self.tools = AgentTools(self.servers, self.spender)
        self.api = AgentApi(channels=self.channels, runner=self.runner, states=self.states,
                            definitions=self.definitions, chat=None, broker=None,
                            budgets=None, tools=self.tools)

    async def add_server(self, name: str = "calc") -> None:
        script = write_server(self.root)
        await self.servers.add({"name": name, "transport": "stdio",
                                "command": [sys.executable, str(script)], "cwd": str(self.root),
                                "env": [f"CALLS_FILE={self.calls_file}"], "price_micro": 100,
                                "tool_prices": ["add=250"]})
        await self.servers.slot(name).ensure(time.monotonic() + 60)

    def server_calls(self) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    async def trust(self, agent: str) -> None:
        await self.db.call(lambda s: trust_store.register(s, agent, None, 800, 800))

    async def start(self, name: str, code: str) -> None:
        await self.spawn(name, code)
        await self.ready(name)

    async def audit(self, type_: str) -> list[Any]:
        return await self.db.call(lambda s: s.audit_tail(50, type=type_))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.fixture
async def world(short_dir: Path) -> AsyncIterator[World]:
    db = await AsyncStore.open(short_dir / "naos.db", checkpoint=short_dir / "audit.head",
                               synchronous="normal", busy_timeout_ms=1000)
    w = World(short_dir, db)
    await w.channels.start()
    try:
        yield w
    finally:
        await w.servers.aclose()  # the tool servers first: they are this test's
        await w.channels.close()
        await db.close()
        for proc in w.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_an_agent_lists_the_tools_and_calls_one_priced_and_audited(world: World) -> None:
    await world.add_server()
    await world.trust("ann")
    await world.start("ann", TOOL_USER)
    specs = await world.run("ann", {"op": "list"})
    names = {s["function"]["name"] for s in specs}
    assert {"calc__add", "calc__files_read", "calc__fail"} <= names
    add = next(s for s in specs if s["function"]["name"] == "calc__add")
    assert add["type"] == "function" and add["function"]["parameters"]["required"] == ["a", "b"]
    out = await world.run("ann", {"op": "call", "tool": "calc.add",
                                  "args": {"a": 40_213, "b": 17}})
    assert out["text"] == "40230" and out["structured"] == {"result": 40_230}
    assert out["cost_micro"] == 250 and out["tool"] == "calc.add"
    assert world.server_calls() == [{"tool": "add", "args": {"a": 40_213, "b": 17}}]
    row = (await world.audit("tool.call"))[-1]
    assert row.agent == "ann" and row.detail["handler"] == "calc.add"
    assert row.detail["cost_micro"] == 250 and row.detail["status"] == "ok"
    shown = json.dumps(row.detail)
    assert "40213" not in shown and "40230" not in shown  # neither the arguments nor the answer
    entries = await world.db.call(lambda s: ledger.ledger_entries(s, "2000-01-01"))
    assert [(e["route_kind"], e["handler"], e["cost_micro"]) for e in entries] == \
        [("tool", "calc.add", 250)]


async def test_a_model_picked_function_name_is_called(world: World) -> None:
    await world.add_server()
    await world.trust("bot")
    await world.start("bot", LLM_STYLE)
    out = await world.run("bot", {"function": "calc__files_read",
                                  "arguments": json.dumps({"path": "/etc/motd"})})
    assert out["text"] == "contents of /etc/motd" and "calc__add" in out["offered"]
    assert world.server_calls()[-1]["tool"] == "files.read"


async def test_a_denied_agent_never_reaches_the_server(world: World) -> None:
    await world.add_server()
    await world.start("stranger", TOOL_USER)  # not registered with the trust gate
    out = await world.run("stranger", {"op": "call", "tool": "calc.add",
                                       "args": {"a": 1, "b": 1}})
    assert out["error"] == "trust_denied" and "not registered" in out["message"]
    assert world.server_calls() == []
    denied = (await world.audit("tool.denied"))[-1]
    assert denied.agent == "stranger" and denied.detail["error"] == "trust_denied"
    assert [r.agent for r in await world.audit("trust.deny")] == ["stranger"]


async def test_a_spent_budget_stops_calls_before_the_server(world: World) -> None:
    await world.add_server()
    await world.trust("ann")
    world.cost.set_budget("ann", BudgetPolicy(300, "day"), datetime.now(UTC))
    await world.start("ann", TOOL_USER)
    first = await world.run("ann", {"op": "call", "tool": "calc.add", "args": {"a": 1, "b": 1}})
    assert first["cost_micro"] == 250
    second = await world.run("ann", {"op": "call", "tool": "calc.add",
                                     "args": {"a": 2, "b": 2}})
    assert second["error"] == "budget_exceeded"
    assert [c["args"] for c in world.server_calls()] == [{"a": 1, "b": 1}]
    assert world.cost.status_of("ann", datetime.now(UTC))["spent_micro"] == 250


async def test_unknown_tools_bad_arguments_and_tool_errors(world: World) -> None:
    await world.add_server()
    await world.trust("ann")
    await world.start("ann", TOOL_USER)

    async def call(tool: str, args: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await world.run("ann", {"op": "call", "tool": tool, "args": args})
        return out

    assert (await call("ghost.add", {}))["error"] == "unknown_tool"
    assert (await call("calc.nothing", {}))["error"] == "unknown_tool"
    assert (await call("plain", {}))["error"] == "unknown_tool"
    bad = await call("calc.add", {"a": "two", "b": 1})
    assert bad["error"] == "invalid_request" and "input_schema at a" in bad["message"]
    assert world.server_calls() == []  # none of these reached the server
    failed = await call("calc.fail", {"why": "no reason"})
    assert failed["error"] == "tool_failed" and "refused: no reason" in failed["message"]
    row = (await world.audit("tool.call"))[-1]
    assert row.detail["status"] == "failed" and row.detail["cost_micro"] == 100  # it ran
    assert {r.detail["error"] for r in await world.audit("tool.denied")} == \
        {"unknown_tool", "invalid_request"}


async def test_a_server_that_grows_a_tool_is_listed_again(world: World) -> None:
    await world.add_server()
    await world.trust("ann")
    await world.start("ann", TOOL_USER)
    assert (await world.run("ann", {"op": "call", "tool": "calc.grow"}))["text"] == "grown"
    deadline = time.monotonic() + 30
    while world.servers.slot("calc").listing.find("mul") is None:
        assert time.monotonic() < deadline, "tools/list_changed did not refresh the listing"
        await asyncio.sleep(0.05)
    out = await world.run("ann", {"op": "call", "tool": "calc__mul", "args": {"a": 6, "b": 7}})
    assert out["text"] == "42"


async def test_a_call_past_its_deadline_times_out_uncharged_and_the_server_goes_on(
        world: World) -> None:
    await world.add_server()
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match=r"calc\.slow did not answer in time"):
        await world.tools.call(None, "calc.slow", {"seconds": 30},
                               deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 20  # at the deadline, not at the tool's end
    row = (await world.audit("tool.call"))[-1]
    assert (row.detail["status"], row.detail["error"], row.detail["cost_micro"]) == \
        ("failed", "timeout", 0)
    out = await world.tools.call(None, "calc.add", {"a": 1, "b": 2},
                                 deadline=time.monotonic() + 30)
    assert out["text"] == "3"


async def test_a_backtracking_schema_is_checked_off_the_loop_within_the_deadline(
        world: World) -> None:
    """The inputSchema is the server's: ``^(a+)+$`` against 26 a's and a ``!``
    backtracks for seconds in Python's re; the check gives up at the deadline
    and the event loop never waits for it."""
    await world.add_server()
    await world.tools.list(None)  # the listing is fetched: only the check meets the deadline
    with pytest.raises(InvalidRequest, match="did not end in time"):
        await world.tools.call(None, "calc.shaped", {"s": "a" * 28 + "!"},
                               deadline=time.monotonic() + 1.0)
    assert world.server_calls() == []
    assert (await world.audit("tool.denied"))[-1].detail["error"] == "invalid_request"


SLOW_LISTER = """
import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


async def list_tools(ctx, params):
    await anyio.sleep(600)  # answers the handshake, never tools/list
    return types.ListToolsResult(tools=[])


async def main():
    server = Server("slow", on_list_tools=list_tools)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


async def test_a_server_that_never_lists_its_tools_is_down_naming_the_wait(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "CONNECT_TIMEOUT_S", 3.0)
    script = world.root / "slow_lister.py"
    script.write_text(SLOW_LISTER)
    await world.servers.add({"name": "slow", "transport": "stdio",
                             "command": [sys.executable, str(script)], "cwd": str(world.root)})
    slot = world.servers.slot("slow")
    deadline = time.monotonic() + 60
    while not slot.health.last_exit:
        assert time.monotonic() < deadline, "the start was never given up"
        await asyncio.sleep(0.05)
    assert slot.health.last_exit == ("not ready within 3 s (start, handshake, tools/list)")
    assert slot.describe()["state"] in ("down", "starting")
