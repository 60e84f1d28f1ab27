"""The agent API (``ctx``) through the real daemon: real agent processes made
with ``naosctl create NAME --source FILE``, driven with ``naosctl run``, and
naosd's LLM pointed at an OpenAI-compatible server written in the test
(tests/fake_openai.py): one that answers with tools, one that lies about
usage, one that streams, one that holds answers until many are in flight."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
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
from harness import Naosd, clean_env, reap, start_naosd, wait_for, wait_gone

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


@contextlib.contextmanager
def llm_naosd(base: Path, fake: FakeOpenAI) -> Iterator[Naosd]:
    """naosd using ``fake`` as its LLM; the test fails if a process outlives it."""
    daemon = start_naosd(base, env=daemon_env(base, fake))
    try:
        yield daemon
    finally:
        survivors = reap(daemon)
        assert not survivors, f"processes outlived naosd: {survivors}\n{daemon.log()[-3000:]}"


@pytest.fixture
def naosd(base: Path, fake: FakeOpenAI) -> Iterator[Naosd]:
    with llm_naosd(base, fake) as daemon:
        yield daemon


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
    view = dashboard(naosd, "/api/v1/cost")
    assert {"agent": "triage", "micro": cost(40, 12), "tasks": 1} in view["by_agent"]


def dashboard(d: Naosd, path: str) -> Any:
    """GET a dashboard API path with the operator's login token."""
    info = ctl(d, "dashboard")
    host, port = info["url"].split("//", 1)[1].rstrip("/").split(":")
    token = info["login_url"].split("token=", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        conn.close()


# -- a server that lies about usage ------------------------------------------------------

SPENDER = """
from naosd.errors import NaosError

async def handle(message, ctx):
    codes = []
    for _ in range(message["calls"]):
        try:
            await ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=256)
            codes.append("ok")
        except NaosError as exc:  # as docs/agents.md shows
            codes.append(exc.code)
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


def test_an_exhausted_budget_is_a_clear_error_and_the_server_is_not_asked(naosd: Naosd,
                                                                         fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "broke", "--budget", "$0.000001/day")  # 1 µ$: not one call
    create(naosd, "broke", SPENDER)
    out = run(naosd, "broke", {"calls": 2})
    assert out["codes"] == ["budget_exceeded", "budget_exceeded"]
    assert out["last"].startswith("agent 'broke': budget"), out["last"]
    assert fake.requests == []
    assert budget(naosd, "broke")["spent_micro"] == 0
    assert [r["agent"] for r in audit(naosd, "broke", "llm.denied")] == ["broke", "broke"]


# -- other agents: ask, cycles, nested chains ---------------------------------------------

ASKER = """
async def handle(message, ctx):
    try:
        return {"output": await ctx.ask(message["to"], message.get("payload"))}
    except Exception as exc:
        return {"code": getattr(exc, "code", ""), "message": str(exc)}
"""

ECHO = """
def handle(message, ctx):
    return {"echo": message, "me": ctx.name}
"""


def test_ask_runs_the_other_agent_and_returns_its_output(naosd: Naosd):
    create(naosd, "asker", ASKER)
    create(naosd, "echo", ECHO)
    out = run(naosd, "asker", {"to": "echo", "payload": {"n": 1}})
    assert out == {"output": {"echo": {"n": 1}, "me": "echo"}}
    [row] = audit(naosd, "echo", "agent.run")
    assert row["detail"]["ok"] is True
    missing = run(naosd, "asker", {"to": "nobody", "payload": 1})
    assert missing["code"] == "not_found" and "nobody" in missing["message"]


PING = """
async def handle(message, ctx):
    if message.get("back"):
        return "pong"
    try:
        return await ctx.ask(ctx.config["next"], {"back": ctx.config.get("back", False)})
    except Exception as exc:
        return {"code": getattr(exc, "code", ""), "message": str(exc)}
"""


def test_a_cycle_fails_at_once_with_call_cycle_naming_the_chain(naosd: Naosd):
    create(naosd, "ping-a", PING, "--config", '{"next": "ping-b"}')
    create(naosd, "ping-b", PING, "--config", '{"next": "ping-a"}')
    out = run(naosd, "ping-a", {})
    # ping-b's ask back to ping-a is refused; ping-b answers with the refusal
    assert out["code"] == "call_cycle", out
    assert "ping-a -> ping-b -> ping-a" in out["message"]


FAN = """
import asyncio

async def handle(message, ctx):
    replies = await asyncio.gather(*(ctx.ask(message["to"], {"i": i})
                                     for i in range(message["n"])), return_exceptions=True)
    bad = [repr(r) for r in replies if isinstance(r, BaseException)]
    return {"bad": bad[:5], "n_bad": len(bad),
            "ok": [r for r in replies if not isinstance(r, BaseException)]}
"""

LINK = """
async def handle(message, ctx):
    nxt = ctx.config.get("next")
    if nxt is None:
        return {"i": message["i"], "depth": 1}
    reply = await ctx.ask(nxt, message)
    return {"i": reply["i"], "depth": reply["depth"] + 1}
"""


@pytest.mark.timeout(600)
def test_two_hundred_concurrent_ask_chains_of_depth_three_all_complete(naosd: Naosd):
    create(naosd, "fan", FAN)
    create(naosd, "link1", LINK, "--config", '{"next": "link2"}', "--max-concurrency", "8")
    create(naosd, "link2", LINK, "--config", '{"next": "link3"}')
    create(naosd, "link3", LINK)
    out = run(naosd, "fan", {"to": "link1", "n": 200}, timeout=400)
    assert out["n_bad"] == 0, out["bad"]
    assert sorted(r["i"] for r in out["ok"]) == list(range(200))
    assert {r["depth"] for r in out["ok"]} == {3}
    runs = audit(naosd, "link3", "agent.run")
    assert len(runs) == 200 and all(r["detail"]["ok"] for r in runs)


# -- ctx.state survives kill -9 of the agent and of naosd ------------------------------------

COUNTER = """
def handle(message, ctx):
    ctx.state["seen"] = ctx.state.get("seen", 0) + 1
    return {"seen": ctx.state["seen"], "pid": __import__("os").getpid()}
"""


def test_state_survives_kill_of_the_agent_and_of_naosd(base: Path, fake: FakeOpenAI):
    daemon = start_naosd(base, env=daemon_env(base, fake))
    try:
        create(daemon, "counter", COUNTER)
        assert [run(daemon, "counter")["seen"] for _ in range(3)] == [1, 2, 3]
        handler = run(daemon, "counter")["pid"]
        killed = ctl(daemon, "kill", "counter")["pid"]
        wait_for(lambda: _running_pid(daemon, "counter", not_pid=killed), 60)
        daemon.remember_tree()
        fifth = run(daemon, "counter")
        assert fifth["seen"] == 5 and fifth["pid"] != handler
        tree = daemon.remember_tree()
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        assert wait_gone(tree, 30) == [], "agent processes outlived a SIGKILLed naosd"
    finally:
        assert not reap(daemon)
    again = start_naosd(base, env=daemon.env, state_dir=daemon.state_dir)
    try:
        assert run(again, "counter")["seen"] == 6
        again.remember_tree()
    finally:
        assert not reap(again)


def _running_pid(d: Naosd, name: str, not_pid: int) -> int | None:
    status = d.agent(name)  # exit 3 while it is not running
    good = status["state"] == "running" and status["pid"] not in (None, not_pid)
    return status["pid"] if good else None


# -- max_concurrency ---------------------------------------------------------------------

SLOW = """
inflight = peak = 0

async def handle(message, ctx):
    global inflight, peak
    inflight += 1
    peak = max(peak, inflight)
    try:
        r = await ctx.llm.chat([{"role": "user", "content": str(message)}], max_tokens=10)
    finally:
        inflight -= 1
    return {"i": message["i"], "peak": peak, "text": r.text}
"""


def test_an_async_agent_with_max_concurrency_8_serves_8_messages_at_once(naosd: Naosd,
                                                                        fake: FakeOpenAI):
    create(naosd, "fan", FAN)
    create(naosd, "slow", SLOW, "--max-concurrency", "8")
    # every answer waits until 8 requests are in flight: one at a time would time out
    fake.answer = lambda body: replace(answer("done"), until_in_flight=8)
    out = run(naosd, "fan", {"to": "slow", "n": 8}, timeout=120)
    assert out["n_bad"] == 0, out["bad"]
    assert max(r["peak"] for r in out["ok"]) == 8
    assert fake.most_in_flight == 8 and len(fake.requests) == 8
    assert ctl(naosd, "inspect", "slow")["execution"]["max_concurrency"] == 8


# -- identity ----------------------------------------------------------------------------

MALLORY = """
async def handle(message, ctx):
    out = {}
    run = ctx._scope.run
    hi = [{"role": "user", "content": "hi"}]

    async def attempt(name, method, params):
        try:
            out[name] = await ctx._call(method, {**params, "run": run})
        except Exception as exc:
            out[name] = {"code": getattr(exc, "code", ""), "message": str(exc)}

    await attempt("chat_as", "llm.chat", {"messages": hi, "agent": "victim"})
    await attempt("budget_of", "budget.get", {"agent": "victim", "scope": "victim"})
    await attempt("kv_as", "kv.set", {"agent": "victim", "key": "k", "value": "MQ=="})
    await attempt("ask_as", "agent.ask", {"agent": "victim", "input": {},
                                          "caller": "victim", "chain": []})
    await attempt("forged_run", "llm.chat", {"messages": hi, "run": 10**9})
    return out
"""

VICTIM = """
def handle(message, ctx):
    return dict(ctx.state)
"""


def test_an_agent_cannot_act_as_another_agent(naosd: Naosd, fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "mallory", "--budget", "$1/day")
    ctl(naosd, "cost", "set", "victim", "--budget", "$2/day")
    create(naosd, "mallory", MALLORY)
    create(naosd, "victim", VICTIM)
    out = run(naosd, "mallory")
    assert out["chat_as"]["code"] == "invalid_request"
    assert "unknown option(s) agent" in out["chat_as"]["message"]
    assert out["budget_of"]["scope"] == "mallory"  # its own, whatever it names
    assert out["budget_of"]["limit_micro"] == 1_000_000
    assert out["ask_as"]["output"] == {}  # ran, but as mallory's call
    assert out["forged_run"]["usage"]["prompt_tokens"] == 7  # an unknown run: its own call
    [asked] = audit(naosd, "victim", "agent.run")
    assert asked["detail"]["caller"] == "mallory"
    assert run(naosd, "victim") == {}  # the kv write went to mallory's store
    assert budget(naosd, "victim")["spent_micro"] == 0
    assert audit(naosd, "victim", "llm.chat") == []
    [charged] = audit(naosd, "mallory", "llm.chat")
    assert charged["agent"] == "mallory"
    assert budget(naosd, "mallory")["spent_micro"] == cost(7, 3)


# -- ctx.tell: one agent's flood does not silence the others --------------------------------

FLOODER = """
async def handle(message, ctx):
    sent, refused = 0, ""
    for i in range(message["n"]):
        try:
            await ctx.tell(message["to"], {"i": i})
            sent += 1
        except Exception as exc:
            refused = f"{getattr(exc, 'code', '')}: {exc}"
            break
    return {"sent": sent, "refused": refused}
"""

SINK = """
import time

def handle(message, ctx):
    time.sleep(20)  # one at a time: tells pile up in flight
    return None
"""


def test_one_agents_tells_in_flight_do_not_block_another_agents_tell(naosd: Naosd):
    create(naosd, "sink", SINK)
    create(naosd, "flooder", FLOODER)
    create(naosd, "polite", FLOODER)
    flood = run(naosd, "flooder", {"to": "sink", "n": 1001}, timeout=120)
    assert flood["sent"] == 1000, flood  # its own limit
    assert run(naosd, "polite", {"to": "sink", "n": 1}) == {"sent": 1, "refused": ""}
    assert flood["refused"].startswith("invalid_request: agent 'flooder' has too many tells")


# -- bad input: a clear error, nothing lost -------------------------------------------------

CARELESS = """
import os

async def handle(message, ctx):
    ctx.state["kept"] = ctx.state.get("kept", 0) + 1
    tries = {
        "set": lambda: ctx.ask("echo", {1, 2}),
        "bytes": lambda: ctx.ask("echo", {"b": b"raw"}),
        "nan": lambda: ctx.ask("echo", {"x": float("nan")}),
        "huge": lambda: ctx.ask("echo", "x" * (64 << 20)),
        "deep": lambda: ctx.ask("echo", eval("[" * 200 + "]" * 200)),
        "no_messages": lambda: ctx.llm.chat([]),
        "bad_timeout": lambda: ctx.ask("echo", 1, timeout=-1),
        "no_agent": lambda: ctx.ask("", 1),
    }
    out = {}
    for name, attempt in tries.items():
        try:
            await attempt()
            out[name] = "accepted"
        except Exception as exc:
            out[name] = f"{getattr(exc, 'code', type(exc).__name__)}: {str(exc)[:200]}"
    out["after"] = await ctx.ask("echo", {"still": "here"})
    out["pid"] = os.getpid()
    return out
"""


def test_bad_input_gets_a_clear_error_and_the_agent_carries_on(naosd: Naosd):
    create(naosd, "careless", CARELESS)
    create(naosd, "echo", ECHO)
    first = run(naosd, "careless", timeout=120)
    assert all(v != "accepted" for k, v in first.items() if k not in ("after", "pid")), first
    assert first["after"] == {"echo": {"still": "here"}, "me": "echo"}
    assert {k for k, v in first.items() if str(v).startswith("invalid_request: ")} == {
        "set", "bytes", "nan", "huge", "deep", "no_messages", "bad_timeout", "no_agent"}, first
    assert "serialize 'set'" in first["set"] and "params.input.b" in first["bytes"]
    assert "frame limit" in first["huge"] and "params.input.x" in first["nan"]
    second = run(naosd, "careless", timeout=120)
    assert second["pid"] == first["pid"]  # nothing crashed it
    assert [r["detail"]["ok"] for r in audit(naosd, "careless", "agent.run")] == [True, True]


# -- deadlines: what the caller gave up on is dropped, not run later -----------------------

BUSY = """
import time

def handle(message, ctx):
    time.sleep(1)  # at least a second each, one at a time
    ctx.llm.chat([{"role": "user", "content": "work"}], max_tokens=8)
    return message["i"]
"""

IMPATIENT = """
import asyncio

async def handle(message, ctx):
    replies = await asyncio.gather(*(ctx.ask("busy", {"i": i}, timeout=6)
                                     for i in range(10)), return_exceptions=True)
    return [r if isinstance(r, int) else getattr(r, "code", repr(r)) for r in replies]
"""


def test_queued_messages_of_a_caller_that_gave_up_are_dropped_and_never_charged(
        naosd: Naosd, fake: FakeOpenAI):
    ctl(naosd, "cost", "set", "busy", "--budget", "$1/day")
    create(naosd, "busy", BUSY)
    create(naosd, "impatient", IMPATIENT)
    out = run(naosd, "impatient", timeout=120)
    answered = [r for r in out if isinstance(r, int)]
    assert "timeout" in out and len(answered) <= 6, out  # 6 s of 1 s messages
    records = wait_for(lambda: len(rows := audit(naosd, "busy", "agent.run")) == 10 and rows,
                       60)
    dropped = [r for r in records if r["detail"]["error"] == "timeout"]
    assert len(dropped) >= 10 - 7, records
    charged = audit(naosd, "busy", "llm.chat")
    assert len(fake.requests) == len(charged) <= 7  # one per message that started, at most
    assert budget(naosd, "busy")["spent_micro"] == cost(7, 3) * len(charged)


# -- idempotency keys: an agent cannot claim a saga step's key --------------------------------

PAYMENT = """
def handle(message, ctx):
    key = ctx.idempotency_key
    done = ctx.state.get("done", {})
    if key and key in done:
        return done[key]  # applied once per key: a retry gets the first answer
    amount = (message.get("input") or message).get("amount")
    out = {"charged": amount, "key": key}
    if key:
        ctx.state["done"] = {**done, key: out}
    return out
"""

FORGER = """
async def handle(message, ctx):
    run_id = ctx.idempotency_key.split(":")[0]  # its own step's key names the run
    await ctx._call("agent.ask", {"agent": "payment", "input": {"amount": 0},
                                  "idempotency_key": f"{run_id}:charge:do",
                                  "run": ctx._scope.run})
    return {"reserved": True}
"""


def test_an_agent_cannot_pre_empt_a_saga_step_with_its_idempotency_key(naosd: Naosd):
    create(naosd, "forger", FORGER)
    create(naosd, "payment", PAYMENT)
    ctl(naosd, "saga", "create", "order")
    ctl(naosd, "saga", "add-step", "order", "reserve", "--agent", "forger")
    ctl(naosd, "saga", "add-step", "order", "charge", "--agent", "payment")
    out = naosd.ctl("saga", "run", "order", "--input", '{"amount": 42}', "--json",
                    timeout=120)
    result = json.loads(out.stdout)
    assert result["status"] == "completed", out.stderr
    charge = {s["name"]: s["output"] for s in result["steps"]}["charge"]
    assert charge == {"charged": 42, "key": f"{result['run_id']}:charge:do"}
    forged = [r for r in audit(naosd, "payment", "agent.run")
              if r["detail"].get("caller") == "forger"]
    assert forged[0]["detail"]["idempotency_key"] == f"forger/{result['run_id']}:charge:do"


# -- a pool's clones keep their agent's identity ------------------------------------------

CLONED = """
async def handle(message, ctx):
    asked = await ctx.ask("clone-echo", {"from": ctx.name})
    return {"me": ctx.name, "asked": asked, "budget": await ctx.budget()}
"""


def test_a_pools_clones_are_charged_and_gated_as_the_agent_they_clone(naosd: Naosd):
    """`pool create --agent A --size N` makes A-c1..cN: they must not be new
    identities with no trust registration and no budget (they were: every
    ask was refused as unregistered), but act as A."""
    create(naosd, "clone-echo", "def handle(message, ctx):\n    return message\n")
    create(naosd, "cloned", CLONED, "--no-start")
    ctl(naosd, "cost", "set", "cloned", "--budget", "$1/day")
    ctl(naosd, "pool", "create", "many", "--agent", "cloned", "--size", "2")
    out = ctl(naosd, "pool", "run", "many", "--input", "{}", timeout=120)
    assert out["status"] == "completed", out
    results = sorted(out["value"], key=lambda r: r["me"])  # merge all: every member's output
    assert [r["me"] for r in results] == ["cloned-c1", "cloned-c2"], out
    for r in results:
        assert r["asked"] == {"from": r["me"]}  # gated as "cloned": registered, allowed
        assert r["budget"]["scope"] == "cloned"  # its agent's budget, not none
    callers = [row["detail"].get("caller") for row in audit(naosd, "clone-echo", "agent.run")]
    assert callers == ["cloned", "cloned"], callers  # audited as the agent they clone
    shown = ctl(naosd, "inspect", "cloned-c1")
    assert shown["execution"]["acts_as"] == "cloned", shown
