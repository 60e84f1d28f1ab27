"""``ctx.llm.chat`` and ``ctx.llm.stream`` end to end in process: real handler
processes (``python -m naos.host``) on a real agent socket, naosd's agent API
with the real ChatService, spender, trust gate, cost controller, ledger
writer and SQLite store, and the real LLM service talking HTTP to an
OpenAI-compatible server written in the test (tests/fake_openai.py): one
that lies about usage, one that streams, one that is slow, one that invents
tools.  The local LLM path runs the stand-in server process
(tests/local_llm_stand_in.py) as the embedded server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Step, answer, serve_fake_openai, streamed, tool_call
from test_agent_channel import World

from actors.domain.budget import BudgetPolicy
from naosd.agents.api import AgentApi
from naosd.broker.axis import AxisConfig
from naosd.broker.chat import ChatService
from naosd.broker.cost import CostController
from naosd.broker.ledger_writer import LedgerWriter
from naosd.broker.llm.chat_request import check_chat, prompt_token_bound
from naosd.broker.llm.service import LlmService
from naosd.broker.spend import Spender
from naosd.broker.trust_gate import TrustGate
from naosd.config import load
from naosd.dashboard.queries import spend_by_agent
from naosd.storage import ledger, trust
from naosd.storage.db import AsyncStore

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")]

STAND_IN = Path(__file__).with_name("local_llm_stand_in.py")
PRICE_IN, PRICE_OUT = 1_000, 20_000  # micro-dollars per 1K tokens
SECRET = "the-secret-prompt-text"
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "find a ticket",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


class LlmWorld:
    """The agent world of test_agent_channel, with an LLM behind the gates."""

    def __init__(self, world: World, fake: FakeOpenAI, llm: LlmService) -> None:
        self.world = world
        self.fake = fake
        self.llm = llm
        self.gate = TrustGate(world.db, AxisConfig())
        self.cost = CostController()
        self.spender = Spender(self.gate, self.cost, LedgerWriter(world.db))
        self.chat = ChatService(self.spender, llm, models=("fake-2",))
        world.api = AgentApi(channels=world.channels, runner=world.runner,
                             states=world.states, definitions=world.definitions,
                             chat=self.chat, broker=None, budgets=None)

    @property
    def db(self) -> AsyncStore:
        return self.world.db

    async def agent(self, name: str, code: str, *, register: bool = True,
                    budget: int | None = None, concurrency: int = 1) -> None:
        if register:
            await self.db.call(lambda s: trust.register(s, name, None, 650, 800))
        if budget is not None:
            self.cost.set_budget(name, BudgetPolicy(budget, "day"), datetime.now(UTC))
        await self.world.spawn(name, code, concurrency=concurrency)
        await self.world.ready(name)

    async def ledger(self, agent: str) -> list[dict[str, Any]]:
        rows = await self.db.call(lambda s: ledger.ledger_entries(s, "2000-01-01"))
        return [r for r in rows if r["agent"] == agent]

    async def audit(self, agent: str, *types: str) -> list[Any]:
        return await self.db.call(lambda s: s.audit_tail(500, agent=agent, type=types or None))

    async def wait_for_ledger(self, agent: str, n: int = 1) -> list[dict[str, Any]]:
        """The agent's ledger rows once there are ``n`` (a stream left midway
        is settled by its own task, after the agent's reply)."""
        until = time.monotonic() + 30
        rows = await self.ledger(agent)
        while len(rows) < n and time.monotonic() < until:
            await asyncio.sleep(0.05)  # the rows are in SQLite: nothing to wait on
            rows = await self.ledger(agent)
        return rows


def llm_config(base: Path, **env: str) -> Any:
    environ = {"XDG_STATE_HOME": str(base / "state"), "XDG_CONFIG_HOME": str(base / "cfg"),
               "XDG_RUNTIME_DIR": str(base), "NAOS_LLM_BACKOFF": "0.01", **env}
    return load(environ=environ, uid=1000, home=base)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="naos-llm-", dir="/tmp") as d:
        yield Path(d)


async def open_world(base: Path, fake: FakeOpenAI, **env: str
                     ) -> tuple[LlmWorld, AsyncStore]:
    db = await AsyncStore.open(base / "naos.db", checkpoint=base / "audit.head",
                               synchronous="normal", busy_timeout_ms=1000)
    defaults = {"NAOS_LLM_BASE_URL": fake.url, "NAOS_LLM_MODEL": "fake-1",
                "NAOS_LLM_PRICE_INPUT_PER_1K": str(PRICE_IN),
                "NAOS_LLM_PRICE_OUTPUT_PER_1K": str(PRICE_OUT)}
    config = llm_config(base, **{**defaults, **env})
    config.state_dir.mkdir(parents=True, exist_ok=True)  # naosd makes it at start
    llm = LlmService(config, db)
    w = LlmWorld(World(base, db), fake, llm)
    await w.world.channels.start()
    return w, db


async def close_world(w: LlmWorld, db: AsyncStore) -> None:
    try:
        await w.world.channels.close()
        await w.chat.aclose()
        await w.llm.aclose()
        await w.gate.aclose()
    finally:
        await db.close()
        for proc in w.world.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@pytest.fixture
async def lw(short_dir: Path) -> AsyncIterator[LlmWorld]:
    async with serve_fake_openai() as fake:
        w, db = await open_world(short_dir, fake)
        try:
            yield w
        finally:
            await close_world(w, db)


def cost(tokens_in: int, tokens_out: int) -> int:
    return -(-(tokens_in * PRICE_IN + tokens_out * PRICE_OUT) // 1000)


# -- chat with tools ---------------------------------------------------------------

TRIAGE = f"""
async def handle(message, ctx):
    r = await ctx.llm.chat(
        [{{"role": "system", "content": "Classify the ticket. {SECRET}"}},
         {{"role": "user", "content": message["text"]}}],
        tools={TOOLS!r}, tool_choice="auto", max_tokens=200, temperature=0.2, seed=7)
    return {{"message": r.message, "tool_calls": r.tool_calls, "usage": r.usage,
            "cost": r.cost_micro_usd, "finish": r.finish_reason, "invalid": r.invalid_tool_calls}}
"""


async def test_an_agent_chats_with_tools_charged_its_usage_and_audited(lw: LlmWorld) -> None:
    call = tool_call("lookup", {"q": "charged twice"})
    lw.fake.script = [answer(None, tool_calls=[call], usage=(120, 30),
                             finish_reason="tool_calls")]
    await lw.agent("triage", TRIAGE, budget=1_000_000)
    out = await lw.world.run("triage", {"text": "I was charged twice"})
    assert out["tool_calls"] == [call] and out["message"]["tool_calls"] == [call]
    assert out["finish"] == "tool_calls" and out["invalid"] == []
    assert out["usage"]["prompt_tokens"] == 120 and out["usage"]["estimated"] is False
    assert out["cost"] == cost(120, 30)
    sent = lw.fake.requests[0]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"
    assert (sent["max_tokens"], sent["temperature"], sent["seed"]) == (200, 0.2, 7)
    assert sent["model"] == "fake-1" and "stream" not in sent
    [row] = await lw.ledger("triage")
    assert (row["route_kind"], row["cost_micro"], row["status"]) == ("llm", out["cost"], "ok")
    audit = await lw.audit("triage")  # what `naosctl audit tail --agent triage` reads
    types = [r.type for r in audit]
    assert "trust.allow" in types and "llm.chat" in types
    chat_row = next(r for r in audit if r.type == "llm.chat")
    assert chat_row.detail["input_tokens"] == 120 and chat_row.detail["tool_calls"] == 1
    assert all(SECRET not in json.dumps(r.detail) for r in audit)  # never the prompt
    today = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00.000000Z")
    by_agent = await lw.db.call(lambda s: spend_by_agent(s, today))  # the cost view's rows
    assert {"agent": "triage", "micro": out["cost"], "tasks": 1} in by_agent


INVENTOR = f"""
async def handle(message, ctx):
    r = await ctx.llm.chat([{{"role": "user", "content": "go"}}], tools={TOOLS!r})
    return {{"tool_calls": r.tool_calls, "invalid": r.invalid_tool_calls}}
"""


async def test_a_tool_the_model_invents_is_reported_not_passed_on(lw: LlmWorld) -> None:
    good = tool_call("lookup", {"q": "x"})
    lw.fake.script = [answer(None, tool_calls=[good, tool_call("rm_rf", {"path": "/"},
                                                               "call_2")])]
    await lw.agent("inventor", INVENTOR)
    out = await lw.world.run("inventor", {})
    assert out["tool_calls"] == [good]
    [bad] = out["invalid"]
    assert bad["name"] == "rm_rf" and bad["id"] == "call_2"
    assert "not a tool it was offered (lookup)" in bad["reason"]


# -- spending never passes a limit -----------------------------------------------------

SPENDER = """
async def handle(message, ctx):
    calls = []
    while True:
        try:
            r = await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=256)
        except Exception as exc:
            return {"calls": calls, "stopped": getattr(exc, "code", repr(exc))}
        calls.append([r.cost_micro_usd, r.raw["reserved_micro_usd"], r.raw["max_tokens"],
                      r.usage["completion_tokens"]])
"""


async def test_a_server_lying_about_usage_never_takes_a_budget_past_its_limit(lw) -> None:
    """The issue's case: 100,000 output tokens reported for a 256-token request
    against a 50,000 µ$ budget (it was charged 290x over before)."""
    lw.fake.answer = lambda body: answer("ok", usage=(10, 100_000))
    await lw.agent("liar", SPENDER, budget=50_000)
    out = await lw.world.run("liar", {}, wait_s=60)
    assert out["stopped"] == "budget_exceeded"
    calls = out["calls"]
    assert all(charged == reserved for charged, reserved, _, _ in calls)  # the grant, no more
    assert all(reported == 100_000 for *_, reported in calls)
    status = lw.cost.status_of("liar", datetime.now(UTC))
    spent = sum(c[0] for c in calls)
    assert status["spent_micro"] == spent <= 50_000
    assert status["paused"]
    asked = [c[2] for c in calls]
    assert asked[:-1] == [256] * (len(calls) - 1) and asked[-1] < 256  # the end shrank
    assert [r["max_tokens"] for r in lw.fake.requests] == asked
    rows = await lw.ledger("liar")
    assert sum(r["cost_micro"] for r in rows) == spent
    assert all(r["llm_estimate_micro"] == r["cost_micro"] for r in rows)  # not the claim
    overruns = await lw.audit("liar", "llm.usage_overrun")
    assert len(overruns) == len(calls)
    assert overruns[0].detail["output_tokens"] == 100_000
    assert overruns[0].detail["charged_micro"] == calls[0][0]


CROWD = """
import asyncio

async def handle(message, ctx):
    async def one():
        try:
            r = await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=100)
            return [r.cost_micro_usd, r.raw["max_tokens"]]
        except Exception as exc:
            return getattr(exc, "code", repr(exc))
    return await asyncio.gather(*(one() for _ in range(50)))
"""


async def test_fifty_concurrent_calls_shrink_at_the_end_of_a_budget_and_never_pass_it(
        short_dir: Path) -> None:
    """Output at 1 µ$ a token, 100 tokens asked a call (input free, so every call
    spends exactly its grant): 20 full calls fit in 2,050 µ$, the 21st gets the
    last 50 (above the 16-token floor) instead of a refusal, the rest are refused."""
    async with serve_fake_openai() as fake:
        w, db = await open_world(short_dir, fake, NAOS_LLM_PRICE_INPUT_PER_1K="0",
                                 NAOS_LLM_PRICE_OUTPUT_PER_1K="1000")
        try:
            fake.answer = lambda body: Step(delay_s=0.2, body=answer(
                "x", usage=(5, body["max_tokens"])).body)
            await w.agent("crowd", CROWD, budget=2_050)
            out = await w.world.run("crowd", {}, wait_s=90)
            ok = [r for r in out if isinstance(r, list)]
            refused = [r for r in out if not isinstance(r, list)]
            assert sorted(ok, reverse=True) == [[100, 100]] * 20 + [[50, 50]]
            assert refused == ["budget_exceeded"] * 29
            status = w.cost.status_of("crowd", datetime.now(UTC))
            assert status["spent_micro"] == 2_050 == status["limit_micro"]
            assert sorted(r["max_tokens"] for r in fake.requests) == [50] + [100] * 20
            assert fake.most_in_flight > 1  # they really overlapped
        finally:
            await close_world(w, db)


async def test_an_exhausted_budget_refuses_before_the_server_is_asked(lw: LlmWorld) -> None:
    await lw.agent("broke", SPENDER, budget=100)  # less than the floor of any call
    out = await lw.world.run("broke", {})
    assert out == {"calls": [], "stopped": "budget_exceeded"}
    assert lw.fake.requests == []
    assert [r.type for r in await lw.audit("broke", "llm.denied")] == ["llm.denied"]


# -- trust -------------------------------------------------------------------------

async def test_a_denied_agent_never_reaches_the_server(lw: LlmWorld) -> None:
    await lw.agent("stranger", SPENDER, register=False)
    out = await lw.world.run("stranger", {})
    assert out == {"calls": [], "stopped": "trust_denied"}
    assert lw.fake.requests == []
    types = [r.type for r in await lw.audit("stranger")]
    assert "trust.deny" in types and "llm.denied" in types
    assert await lw.ledger("stranger") == []


# -- streaming -----------------------------------------------------------------------

STREAMER = """
async def handle(message, ctx):
    return [d async for d in ctx.llm.stream([{"role": "user", "content": "count"}],
                                            max_tokens=50)]
"""


async def test_a_stream_yields_its_deltas_in_order_and_settles_once(lw: LlmWorld) -> None:
    lw.fake.script = [streamed(["one, ", "two, ", "three"], usage=(9, 4), chunk_delay_s=0.02)]
    await lw.agent("streamer", STREAMER, budget=1_000_000)
    assert await lw.world.run("streamer", {}) == ["one, ", "two, ", "three"]
    sent = lw.fake.requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    [row] = await lw.ledger("streamer")
    assert row["cost_micro"] == cost(9, 4) and not row["estimated"]
    [chat] = await lw.audit("streamer", "llm.chat")
    assert chat.detail["stream"] is True and chat.detail["output_tokens"] == 4


async def test_the_final_event_carries_usage_cost_and_assembled_tool_calls(lw) -> None:
    """Tool-call fragments come together; without a usage chunk the bounds are
    charged, marked estimated."""
    fragments = [{"index": 0, "id": "call_9", "type": "function",
                  "function": {"name": "lookup", "arguments": ""}},
                 {"index": 0, "function": {"arguments": '{"q": '}},
                 {"index": 0, "function": {"arguments": '"x"}'}}]
    lw.fake.script = [streamed(["Let me look"], tool_fragments=fragments)]
    await lw.db.call(lambda s: trust.register(s, "direct", None, 650, 800))
    request = {"messages": [{"role": "user", "content": "find x"}], "tools": TOOLS,
               "max_tokens": 300}
    events = [e async for e in lw.chat.stream("direct", request,
                                              deadline=time.monotonic() + 20)]
    assert events[0] == {"delta": "Let me look"}
    done = events[-1]
    assert done["done"] is True and len(events) == 2
    assert done["tool_calls"] == [{"id": "call_9", "type": "function", "function": {
        "name": "lookup", "arguments": '{"q": "x"}'}}]
    assert done["finish_reason"] == "tool_calls"
    usage = done["usage"]
    bound = prompt_token_bound(check_chat(request))
    out_bytes = len("Let me look") + len(json.dumps([{"id": "call_9", "type": "function",
                                                      "function": {"name": "lookup",
                                                                   "arguments": '{"q": "x"}'}}]))
    assert usage == {"prompt_tokens": bound, "completion_tokens": out_bytes + 1,
                     "total_tokens": bound + out_bytes + 1, "estimated": True}
    assert done["cost_micro_usd"] == cost(bound, out_bytes + 1)
    [row] = await lw.ledger("direct")
    assert row["estimated"] and row["cost_micro"] == done["cost_micro_usd"]


QUITTER = """
async def handle(message, ctx):
    got = []
    async for piece in ctx.llm.stream([{"role": "user", "content": "go on"}], max_tokens=200):
        got.append(piece)
        if len(got) == 2:
            break
    return got
"""


async def test_a_consumer_that_leaves_midway_is_charged_what_streamed(lw: LlmWorld) -> None:
    hold = asyncio.Event()
    lw.fake.script = [streamed(["a" * 10, "b" * 10, "c" * 10, "d" * 10], usage=(5, 100),
                               hold=hold, hold_after=2)]
    await lw.agent("quitter", QUITTER, budget=1_000_000)
    try:
        assert await lw.world.run("quitter", {}) == ["a" * 10, "b" * 10]
        [row] = await lw.wait_for_ledger("quitter")
    finally:
        hold.set()
    bound = prompt_token_bound(check_chat({"messages": [{"role": "user", "content": "go on"}],
                                           "max_tokens": 200}))
    assert row["cost_micro"] == cost(bound, 21) and row["estimated"]  # 20 bytes + 1
    assert row["cost_micro"] <= row["reserved_micro"]
    [chat] = await lw.audit("quitter", "llm.chat")
    assert chat.detail["cancelled"] is True and chat.detail["output_tokens"] == 21
    await asyncio.sleep(0.2)
    assert len(await lw.ledger("quitter")) == 1  # settled once


IMPATIENT = """
import asyncio

async def handle(message, ctx):
    try:
        await asyncio.wait_for(ctx.llm.chat([{"role": "user", "content": "hi"}]), 0.3)
    except asyncio.TimeoutError:
        return "gave up"
"""


async def test_a_call_its_agent_abandons_is_still_charged_what_the_server_used(lw) -> None:
    """Cancelling a call once it is sent must not make the LLM work for free:
    it runs on and is settled at the usage the server reports."""
    lw.fake.script = [Step(delay_s=1.0, body=answer("late", usage=(5, 50)).body)]
    await lw.agent("impatient", IMPATIENT, budget=1_000_000)
    assert await lw.world.run("impatient", {}) == "gave up"
    [row] = await lw.wait_for_ledger("impatient")
    assert (row["status"], row["cost_micro"], row["estimated"]) == ("ok", cost(5, 50), False)
    assert lw.cost.status_of("impatient", datetime.now(UTC))["reserved_micro"] == 0


# -- deadlines, models, bad input --------------------------------------------------------

SLOW_CALL = """
async def handle(message, ctx):
    try:
        await ctx.llm.chat([{"role": "user", "content": "hi"}])
    except Exception as exc:
        return [exc.code, ctx.deadline]
"""


async def test_a_slow_server_fails_within_the_callers_deadline_and_costs_nothing(lw) -> None:
    lw.fake.script = [Step(delay_s=4.0, body=answer().body)]
    await lw.agent("hasty", SLOW_CALL, budget=1_000_000)
    started = time.monotonic()
    code, left = await lw.world.run("hasty", {}, wait_s=2.0)
    assert code == "llm_timeout" and left > 0  # our error, before the message's deadline
    assert time.monotonic() - started < 4.0
    [row] = await lw.ledger("hasty")
    assert (row["status"], row["cost_micro"]) == ("failed", 0)
    assert lw.cost.status_of("hasty", datetime.now(UTC))["reserved_micro"] == 0


MODELS = """
async def handle(message, ctx):
    out = []
    for model in ("fake-2", "gpt-9"):
        try:
            r = await ctx.llm.chat([{"role": "user", "content": "hi"}], model=model)
            out.append(r.model)
        except Exception as exc:
            out.append(exc.code + ": " + str(exc))
    return out
"""


async def test_only_the_models_offered_may_be_named(lw: LlmWorld) -> None:
    lw.fake.answer = lambda body: answer(model=body["model"])
    await lw.agent("picky", MODELS)
    first, second = await lw.world.run("picky", {})
    assert first == "fake-2" and [r["model"] for r in lw.fake.requests] == ["fake-2"]
    assert second.startswith("invalid_request: model: 'gpt-9' is not offered to agents "
                             "(naosd uses 'fake-1'")


BAD = """
async def handle(message, ctx):
    hi = [{"role": "user", "content": "hi"}]
    calls = [
        ([], {}),
        ([{"role": "user", "content": "x" * (2 << 20)}], {}),
        (hi, {"frequency_penalty": 1}),
        ([{"role": "robot", "content": "beep"}], {}),
        (hi, {"temperature": 5}),
        (hi, {"max_tokens": 0}),
        ([{"role": "user", "content": b"raw bytes"}], {}),
        (hi, {"tool_choice": {"type": "function", "function": {"name": "nope"}},
              "tools": message["tools"]}),
        (hi, {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], {}),
    ]
    out = []
    for messages, options in calls:
        try:
            await ctx.llm.chat(messages, **options)
            out.append("accepted")
        except Exception as exc:
            out.append(f"{exc.code}: {exc}")
    return out
"""


async def test_bad_input_is_refused_by_name_and_costs_nothing(lw: LlmWorld) -> None:
    await lw.agent("sloppy", BAD, budget=1_000_000)
    out = await lw.world.run("sloppy", {"tools": TOOLS}, wait_s=60)
    expected = [
        "messages: a non-empty list",
        "bytes of JSON (limit 1048576)",
        "unknown option(s) frequency_penalty",
        "messages[0].role: one of system, user, assistant, tool is required, got 'robot'",
        "temperature: a number from 0 to 2 is required, got 5",
        "max_tokens: a whole number from 1 to 1000000 is required, got 0",
        "binary values are not allowed",
        "tool_choice: names 'nope', which is not among the tools offered",
        "tools[0].function.name: 1 to 64 letters",
        "messages[0].content[0]: only {type: text, text} parts are accepted",
    ]
    assert len(out) == len(expected)
    for got, want in zip(out, expected, strict=True):
        assert got.startswith("invalid_request: ") and want in got, (got, want)
    assert lw.fake.requests == [] and await lw.ledger("sloppy") == []
    assert lw.cost.status_of("sloppy", datetime.now(UTC))["spent_micro"] == 0


# -- the local LLM -------------------------------------------------------------------------

LOCAL = """
async def handle(message, ctx):
    long = "tell me about the weather " * 80
    r = await ctx.llm.chat([{"role": "user", "content": long}], max_tokens=300)
    pieces = [p async for p in ctx.llm.stream([{"role": "user", "content": long}])]
    return {"usage": r.usage, "cost": r.cost_micro_usd, "max_tokens": r.raw["max_tokens"],
            "text": r.text, "pieces": pieces}
"""


async def test_the_local_llm_is_charged_on_the_usage_it_reports(short_dir: Path) -> None:
    """The stand-in server plays the embedded one (zero prices): tokens come from
    its usage (11 in, 5 out), not from byte bounds (~2,100 for this prompt), and
    with nothing to pay for, nothing shrinks on a 1 µ$ budget."""
    folder = short_dir / "llm"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"not a model")
    async with serve_fake_openai() as fake:
        w, db = await open_world(short_dir, fake, NAOS_LLM_BASE_URL="",
                                 NAOS_LLM_LOCAL_COMMAND=f"{sys.executable} {STAND_IN}",
                                 NAOS_LLM_LOCAL_MODEL=str(folder / "model.gguf"),
                                 NAOS_LLM_PRICE_INPUT_PER_1K="0",
                                 NAOS_LLM_PRICE_OUTPUT_PER_1K="0")
        try:
            assert w.llm.local is not None
            await w.agent("local", LOCAL, budget=1)
            out = await w.world.run("local", {}, wait_s=90)
            assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 5,
                                    "total_tokens": 16, "estimated": False}
            assert (out["cost"], out["max_tokens"]) == (0, 300)
            assert out["text"] == "stand-in says hi" and out["pieces"] == ["stand-in says hi"]
            rows = await w.audit("local", "llm.chat")
            assert [(r.detail["input_tokens"], r.detail["estimated"]) for r in rows] == [
                (11, False), (11, False)]
            assert fake.requests == []  # the remote fake was never involved
        finally:
            await close_world(w, db)
