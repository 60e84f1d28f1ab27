"""The agent API (``ctx``) through the real daemon: real agent processes made
with ``naosctl create NAME --source FILE``, driven with ``naosctl run``, and
naosd's LLM pointed at an OpenAI-compatible server written in the test
(tests/fake_openai.py): one that answers with tools, one that lies about
usage, one that streams, one that holds answers until many are in flight."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import (
    FakeOpenAI,
    answer,
    fake_openai_in_thread,
    streamed,
    tool_call,
)
from harness import Naosd, clean_env, reap, start_naosd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")]

PRICE_IN, PRICE_OUT = 1_000, 20_000  # micro-dollars per 1K tokens
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "find a ticket",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def cost(tokens_in: int, tokens_out: int) -> int:
    return -(-(tokens_in * PRICE_IN + tokens_out * PRICE_OUT) // 1000)


def daemon_env(base: Path, fake: FakeOpenAI) -> dict[str, str]:
    return clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                     XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_BASE_URL=fake.url,
                     NAOS_LLM_MODEL="fake-1", NAOS_LLM_PRICE_INPUT_PER_1K=str(PRICE_IN),
                     NAOS_LLM_PRICE_OUTPUT_PER_1K=str(PRICE_OUT), NAOS_LLM_MAX_RETRIES="0")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai_in_thread() as server:
        yield server


@pytest.fixture
def naosd(base: Path, fake: FakeOpenAI) -> Iterator[Naosd]:
    daemon = start_naosd(base, env=daemon_env(base, fake))
    try:
        yield daemon
    finally:
        survivors = reap(daemon)
        assert not survivors, f"processes outlived naosd: {survivors}\n{daemon.log()[-3000:]}"


def ctl(d: Naosd, *args: str, timeout: float = 60) -> Any:
    out = d.ctl(*args, "--json", timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def create(d: Naosd, name: str, code: str, *extra: str) -> dict[str, Any]:
    """Register NAME with the trust gate (its calls pass it) and create it from ``code``."""
    ctl(d, "axis", "register", name, "--t-score", "650", "--c-score", "800")
    source = d.socket.parent / f"{name}.py"
    source.write_text(textwrap.dedent(code))
    made = ctl(d, "create", name, "--source", str(source), *extra)
    d.remember_tree()
    return made  # type: ignore[no-any-return]


def run(d: Naosd, name: str, message: Any = None, timeout: float = 60) -> Any:
    reply = ctl(d, "run", name, "--input", json.dumps(message), "--timeout", str(timeout),
                timeout=timeout + 30)
    return reply["output"]


def audit(d: Naosd, agent: str, type_: str | None = None) -> list[dict[str, Any]]:
    args = ["audit", "tail", "-n", "1000", "--agent", agent]
    rows: list[dict[str, Any]] = ctl(d, *args, *(["--type", type_] if type_ else []))
    return rows


def budget(d: Naosd, agent: str) -> dict[str, Any]:
    [status] = ctl(d, "cost", "status", agent)["budgets"]
    return status  # type: ignore[no-any-return]


# -- ctx.llm.chat: tools, usage, cost, audit ---------------------------------------------

TRIAGE = f"""
async def handle(message, ctx):
    r = await ctx.llm.chat(
        [{{"role": "system", "content": "Classify the ticket."}},
         {{"role": "user", "content": message["text"]}}],
        tools={TOOLS!r}, tool_choice="auto", max_tokens=200)
    return {{"tool_calls": r.tool_calls, "usage": r.usage, "cost": r.cost_micro_usd,
            "finish": r.finish_reason, "left": (await ctx.budget())["remaining_micro"]}}
"""


def test_chat_with_tools_is_charged_its_usage_and_audited_as_the_agent(naosd: Naosd,
                                                                     fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "triage", "--budget", "$1/day")
    create(naosd, "triage", TRIAGE)
    fake.script.append(answer(None, tool_calls=[tool_call("lookup", {"q": "T-7"})],
                              usage=(40, 12), finish_reason="tool_calls"))
    out = run(naosd, "triage", {"text": "I was charged twice"})
    assert [c["function"]["name"] for c in out["tool_calls"]] == ["lookup"]
    assert json.loads(out["tool_calls"][0]["function"]["arguments"]) == {"q": "T-7"}
    assert out["usage"]["prompt_tokens"] == 40 and out["usage"]["completion_tokens"] == 12
    assert out["cost"] == cost(40, 12) and out["finish"] == "tool_calls"
    assert out["left"] == 1_000_000 - cost(40, 12)
    [sent] = fake.requests
    assert sent["tools"] == TOOLS and sent["max_tokens"] == 200
    assert budget(naosd, "triage")["spent_micro"] == cost(40, 12)
    [row] = audit(naosd, "triage", "llm.chat")
    assert row["agent"] == "triage" and row["detail"]["cost_micro"] == cost(40, 12)
    assert "charged twice" not in json.dumps(row)  # never the messages


# -- a server that lies about usage ------------------------------------------------------

SPENDER = """
async def handle(message, ctx):
    codes = []
    for _ in range(message["calls"]):
        try:
            await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=256)
            codes.append("ok")
        except Exception as exc:
            codes.append(getattr(exc, "code", type(exc).__name__))
            last = str(exc)
    return {"codes": codes, "last": last if codes[-1] != "ok" else ""}
"""


def test_a_server_lying_about_usage_never_takes_spend_past_the_budget(naosd: Naosd,
                                                                     fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "liar-victim", "--budget", "$0.05/day")  # 50,000 µ$
    create(naosd, "liar-victim", SPENDER)
    fake.answer = lambda body: answer("x", usage=(100, 100_000))
    out = run(naosd, "liar-victim", {"calls": 40})
    assert "ok" in out["codes"] and out["codes"][-1] == "budget_exceeded", out
    assert "liar-victim" in out["last"], out["last"]  # the error names whose budget
    status = budget(naosd, "liar-victim")
    assert 0 < status["spent_micro"] <= 50_000, status
    overruns = audit(naosd, "liar-victim", "llm.usage_overrun")
    assert len(overruns) == out["codes"].count("ok")
    asked = len(fake.requests)
    again = run(naosd, "liar-victim", {"calls": 1})
    assert again["codes"] == ["budget_exceeded"]
    assert len(fake.requests) == asked  # refused before the server was asked


# -- streaming ---------------------------------------------------------------------------

STREAMER = """
async def handle(message, ctx):
    return [piece async for piece in ctx.llm.stream([{"role": "user", "content": "go"}],
                                                     max_tokens=50)]
"""


def test_stream_deltas_arrive_in_order_and_are_charged_once(naosd: Naosd, fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "streamer", "--budget", "$1/day")
    create(naosd, "streamer", STREAMER)
    fake.script.append(streamed(["The ", "sea, ", "the ", "sea"], usage=(9, 4)))
    assert run(naosd, "streamer") == ["The ", "sea, ", "the ", "sea"]
    assert fake.requests[-1]["stream"] is True
    assert budget(naosd, "streamer")["spent_micro"] == cost(9, 4)
    assert len(audit(naosd, "streamer", "llm.chat")) == 1
