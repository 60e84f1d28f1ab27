"""WASM agents call the agent API through the ``naos`` channel functions, through
the real daemon: real agent processes, the real broker, trust gate and cost
controller, and an OpenAI-compatible server written in the test
(tests/fake_openai.py) for ``llm_chat``.  The guest is tests/wasm_modules.py's
``channel_guest_wat``: its message ``[D, REQUEST]`` picks the call (or a
hostile variant of it) and it prints the reply."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from fake_openai import FakeOpenAI, ok
from harness import Naosd
from test_broker_llm_e2e import ctl_json, fake, llm_daemon  # noqa: F401 - fixtures
from wasm_modules import channel_guest_wat

from naosctl.client import Client
from naosd.errors import NaosError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HI = [{"role": "user", "content": "hi"}]
ECHO = """
import time

def handle(message, ctx):
    ctx.log("got", message)
    if message == "sleep":
        time.sleep(30)
    return {"echo": message}
"""


def guest(base: Path, name: str, functions: list[str]) -> str:
    path = base / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(channel_guest_wat(functions)))
    return str(path)


def create(daemon: Naosd, name: str, source: str, **params: Any) -> dict[str, Any]:
    with Client(daemon.socket) as c:
        result: dict[str, Any] = c.call("agent.create", name=name, source=source, start=True,
                                        timeout=60, **params)
        return result


def run(daemon: Naosd, name: str, mode: int, request: Any) -> Any:
    with Client(daemon.socket) as c:
        return c.call("agent.run", name=name, input=[mode, request], timeout=60)["output"]


def trusted(daemon: Naosd, *agents: str) -> None:
    for agent in agents:
        daemon.ctl("axis", "register", agent, "--t-score", "900", "--c-score", "950",
                   check=True)


def test_llm_chat_is_gated_charged_and_audited_as_the_agent(llm_daemon: Naosd,  # noqa: F811
                                                            fake: FakeOpenAI,  # noqa: F811
                                                            base: Path):
    create(llm_daemon, "chat", guest(base, "chat", ["llm_chat"]), grants=["llm_chat"])
    denied = run(llm_daemon, "chat", 0, {"messages": HI})
    assert denied["error"]["code"] == "trust_denied", denied
    assert "not registered" in denied["error"]["message"] and fake.requests == []

    trusted(llm_daemon, "chat")
    ctl_json(llm_daemon, "cost", "set", "chat", "--budget", "$1/day")
    fake.script = [ok("hello from the model", prompt_tokens=12, completion_tokens=4)]
    reply = run(llm_daemon, "chat", 0, {"messages": HI, "max_tokens": 30, "run": 999})
    assert reply["ok"]["message"]["content"] == "hello from the model"
    assert reply["ok"]["usage"]["prompt_tokens"] == 12 and reply["ok"]["cost_micro_usd"] > 0
    assert fake.requests[-1]["messages"] == HI and fake.requests[-1]["max_tokens"] <= 30
    [budget] = ctl_json(llm_daemon, "cost", "status", "chat")["budgets"]
    assert budget["spent_micro"] == reply["ok"]["cost_micro_usd"]
    rows = ctl_json(llm_daemon, "audit", "tail", "--agent", "chat", "-n", "100")
    assert {"trust.allow", "llm.chat"} <= {r["type"] for r in rows}

    bad_option = run(llm_daemon, "chat", 0, {"messages": HI, "stream": True})
    assert bad_option["error"]["code"] == "invalid_request"
    assert "stream" in bad_option["error"]["message"]
    asked = len(fake.requests)
    # a hostile guest: each bad call is refused with its code, nothing reaches the LLM
    assert run(llm_daemon, "chat", 6, {"messages": HI}) == {"rc": -2}  # bad request pointer
    assert run(llm_daemon, "chat", 7, {"messages": HI}) == {"rc": -3}  # 2 GiB request
    assert run(llm_daemon, "chat", 8, {"messages": HI}) == {"rc": -2}  # buffer past memory
    assert run(llm_daemon, "chat", 0, "not an object") == {"rc": -4}
    assert len(fake.requests) == asked
    held = run(llm_daemon, "chat", 9, {"messages": HI})  # 4-byte buffer, then naos.reply
    assert held["ok"]["message"]["content"] == "hello"
    assert len(fake.requests) == asked + 1

    [before] = ctl_json(llm_daemon, "cost", "status", "chat")["budgets"]
    ctl_json(llm_daemon, "cost", "set", "chat", "--budget", "$0.000001/day")  # below spent
    broke = run(llm_daemon, "chat", 0, {"messages": HI})
    assert broke["error"]["code"] == "budget_exceeded", broke
    [after] = ctl_json(llm_daemon, "cost", "status", "chat")["budgets"]
    assert after["spent_micro"] == before["spent_micro"] and len(fake.requests) == asked + 1
    assert llm_daemon.agent("chat")["state"] == "running"


def test_ask_tell_and_execute_act_as_the_calling_agent(daemon: Naosd, base: Path):
    (base / "echo.py").write_text(ECHO)
    create(daemon, "echo", str(base / "echo.py"))
    functions = ["agent_ask", "agent_tell", "execute"]
    create(daemon, "caller", guest(base, "caller", functions), grants=functions)
    route = {"task": "sha256 of: x", "route": "skill:sha256"}
    for mode, request in ((0, {"agent": "echo", "input": 1}), (2, route)):
        gated = run(daemon, "caller", mode, request)  # the caller's own gate, not the operator's
        assert gated["error"]["code"] == "trust_denied", gated
        assert "'caller' is not registered" in gated["error"]["message"]
    trusted(daemon, "caller")

    assert run(daemon, "caller", 0, {"agent": "echo", "input": {"x": 1}}) == {
        "ok": {"echo": {"x": 1}}}
    told = run(daemon, "caller", 1, {"agent": "echo", "input": "by tell"})
    assert told == {"ok": {"queued": True, "agent": "echo"}}
    deadline = time.monotonic() + 30
    while "by tell" not in daemon.ctl("logs", "echo").stdout:
        assert time.monotonic() < deadline, daemon.ctl("logs", "echo").stdout
        time.sleep(0.1)
    cycle = run(daemon, "caller", 0, {"agent": "caller", "input": {}})
    assert cycle["error"]["code"] == "call_cycle"
    assert "caller -> caller" in cycle["error"]["message"]
    unknown = run(daemon, "caller", 0, {"agent": "nobody", "input": {}})
    assert unknown["error"]["code"] == "not_found" and "nobody" in unknown["error"]["message"]
    late = run(daemon, "caller", 0, {"agent": "echo", "input": "sleep", "timeout": 1})
    assert late["error"]["code"] == "timeout", late  # the caller's deadline, not the callee's
    extra = run(daemon, "caller", 0, {"agent": "echo", "input": 1, "as": "root"})
    assert extra["error"]["code"] == "invalid_request" and "as" in extra["error"]["message"]

    executed = run(daemon, "caller", 2, route)["ok"]
    assert executed["route"] == "skill" and executed["handler"] == "sha256"
    rows = ctl_json(daemon, "audit", "tail", "--agent", "caller", "-n", "100")
    assert "broker.execute" in {r["type"] for r in rows}


def test_state_is_committed_with_the_reply_and_survives_a_kill(daemon: Naosd, base: Path):
    made = daemon.ctl("create", "keeper", "--source", guest(base, "keeper", ["state_set",
                                                                          "state_get"]),
                      "--grant", "state_set", "--grant", "state_get")
    assert made.returncode == 0, made.stderr
    missing = run(daemon, "keeper", 1, {"key": "n"})
    assert missing["error"]["code"] == "not_found"
    assert run(daemon, "keeper", 0, {"key": "n", "value": {"count": 5}}) == {"ok": None}
    assert run(daemon, "keeper", 1, {"key": "n"}) == {"ok": {"count": 5}}
    with pytest.raises(NaosError, match="trap"):  # sets, then traps: nothing is committed
        run(daemon, "keeper", 5, {"key": "n", "value": "lost"})
    assert run(daemon, "keeper", 1, {"key": "n"}) == {"ok": {"count": 5}}
    no_value = run(daemon, "keeper", 0, {"key": "n"})
    assert no_value["error"]["code"] == "invalid_request"

    pid = daemon.agent("keeper")["pid"]
    assert daemon.ctl("kill", "keeper").returncode == 0
    deadline = time.monotonic() + 30
    while True:
        now = daemon.agent("keeper")
        if now["state"] == "running" and now["pid"] not in (pid, None):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert run(daemon, "keeper", 1, {"key": "n"}) == {"ok": {"count": 5}}
    assert run(daemon, "keeper", 0, {"key": "n", "delete": True}) == {"ok": None}
    assert run(daemon, "keeper", 1, {"key": "n"})["error"]["code"] == "not_found"


def test_ungranted_or_misplaced_grants_are_refused_at_create(daemon: Naosd, base: Path):
    both = guest(base, "both", ["llm_chat", "agent_ask"])
    with pytest.raises(NaosError, match=r"naos\.agent_ask: host function not granted"):
        create(daemon, "half", both, grants=["llm_chat"])
    refused = daemon.ctl("create", "none", "--source", both)  # as naosctl shows it
    assert refused.returncode == 2 and "naos.llm_chat: host function not granted" in (
        refused.stderr), refused.stderr
    with pytest.raises(NaosError, match="grant them in the agent's execution grants"):
        create(daemon, "legacy", both, config={"grants": ["llm_chat", "agent_ask"]})
    with pytest.raises(NaosError, match="grants must be a list of"):
        create(daemon, "replyer", both, grants=["llm_chat", "agent_ask", "reply"])
    (base / "py.py").write_text(ECHO)
    with pytest.raises(NaosError, match="are WASM host functions"):
        create(daemon, "py", str(base / "py.py"), grants=["llm_chat"])
    with Client(daemon.socket) as c, pytest.raises(NaosError, match=r"not wasm\.run"):
        c.call("wasm.run", module=Path(both).read_bytes(), grants=["llm_chat", "agent_ask"])
    with Client(daemon.socket) as c:
        agents = {a["name"] for a in c.call("agent.list")}
    assert not agents & {"half", "none", "legacy", "replyer", "py"}
