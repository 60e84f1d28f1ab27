"""examples/triage applied with ``naosctl apply`` to the real daemon, its LLM
being an OpenAI-compatible server written in the test: a ticket is voted on
by the pool, then run end to end by the saga (LLM with a tool answered by
another agent, durable queues, a compensation when the customer is unknown)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Step, answer, fake_openai_in_thread, tool_call
from harness import Naosd
from test_agent_api_e2e import audit, ctl, llm_naosd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "triage"
CALLERS = ("clf-support", "clf-finance", "clf-engineer", "intake", "unqueue")
SUMMARY = "Ann Lee was charged twice for her pro plan."


def llm(body: dict[str, Any]) -> Step:
    """What the model says: classifiers vote billing 2:1; intake looks the
    customer up with its tool, then summarises."""
    messages = body["messages"]
    system = messages[0]["content"]
    if "Reply with one word" in system:
        return answer("bug" if "engineer" in system else "Billing.", usage=(60, 2))
    if any(m["role"] == "tool" for m in messages):
        return answer(SUMMARY, usage=(120, 14))
    found = re.search(r"From (\S+):", messages[1]["content"])
    assert found and body["tools"][0]["function"]["name"] == "lookup_customer"
    return answer(None, tool_calls=[tool_call("lookup_customer", {"email": found[1]})],
                  usage=(90, 9), finish_reason="tool_calls")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai_in_thread() as server:
        server.answer = llm
        yield server


@pytest.fixture
def naosd(base: Path, fake: FakeOpenAI) -> Iterator[Naosd]:
    with llm_naosd(base, fake) as daemon:
        yield daemon


def apply_example(d: Naosd) -> dict[str, Any]:
    for agent in CALLERS:  # their LLM calls and asks pass the trust gate as themselves
        ctl(d, "axis", "register", agent, "--t-score", "650", "--c-score", "800")
    ctl(d, "cost", "set", "--global", "--budget", "$1/day")
    applied: dict[str, Any] = ctl(d, "apply", str(EXAMPLE / "naos.toml"), timeout=180)
    d.remember_tree()
    return applied


def saga(d: Naosd, ticket: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    out = d.ctl("saga", "run", "ticket", "--input", json.dumps(ticket), "--json", timeout=180)
    assert out.stdout.strip(), f"rc={out.returncode} {out.stderr}\n{d.log()[-3000:]}"
    return out.returncode, json.loads(out.stdout)


def test_a_ticket_runs_end_to_end(naosd: Naosd, fake: FakeOpenAI):
    applied = apply_example(naosd)
    assert {"saga ticket", "pool vote"} <= set(applied["created"])
    ticket = {"id": 7, "email": "ann@example.com", "text": "I was charged twice"}
    vote = ctl(naosd, "pool", "run", "vote", "--input", json.dumps(ticket), timeout=120)
    assert vote["value"] == "billing", vote

    rc, run = saga(naosd, {**ticket, "kind": vote["value"]})
    assert rc == 0 and run["status"] == "completed", run
    queues = ctl(naosd, "run", "queue", "--input", '{"op": "list"}')["output"]
    assert queues == {"billing": [{"id": 7, "summary": SUMMARY, "customer": "Ann Lee"}]}
    outbox = [r for r in audit(naosd, "notify", "agent.run") if r["detail"]["ok"]]
    assert len(outbox) == 1

    tool_round = [b for b in fake.requests if any(m["role"] == "tool" for m in b["messages"])]
    [answered] = tool_round
    assert json.loads(answered["messages"][-1]["content"])["name"] == "Ann Lee"
    charged = audit(naosd, "intake", "llm.chat")
    assert len(charged) == 2 and all(r["agent"] == "intake" for r in charged)
    assert len(audit(naosd, "clf-engineer", "llm.chat")) == 1
    [glob] = ctl(naosd, "cost", "status", "--global")["budgets"]
    assert glob["spent_micro"] == sum(r["detail"]["cost_micro"] for r in ctl(
        naosd, "audit", "tail", "-n", "1000", "--type", "llm.chat"))


def test_an_unknown_customer_is_compensated_and_nothing_stays_filed(naosd: Naosd):
    apply_example(naosd)
    ticket = {"id": 8, "email": "eve@example.com", "text": "refund me", "kind": "billing"}
    rc, run = saga(naosd, ticket)
    assert rc != 0 and run["status"] == "compensated", run
    queues = ctl(naosd, "run", "queue", "--input", '{"op": "list"}')["output"]
    assert queues == {"billing": []}
    [undo] = audit(naosd, "unqueue", "agent.run")
    assert undo["detail"]["ok"] is True
    [asked] = [r for r in audit(naosd, "queue", "agent.run")
               if r["detail"].get("caller") == "unqueue"]
    assert asked["detail"]["ok"] is True
