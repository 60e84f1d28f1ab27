"""The cost controller through the real daemon: pause, throttle, alert, the race, reset."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Naosd, reap, start_naosd

from naosctl.client import Client
from naosd.errors import NaosError

pytestmark = pytest.mark.e2e

CSV_TOTAL = Path(__file__).resolve().parent.parent / "examples" / "skills" / "csv-total"
TOTAL = "total these invoices: 1, 2"  # number-total: 5 micro-dollars a call


@pytest.fixture(autouse=True)
def trusted(daemon: Naosd) -> None:
    """ann and bob pass the trust gate (local scores: T5, AAA, no per-task cap)."""
    for agent in ("ann", "bob"):
        daemon.ctl("axis", "register", agent, "--t-score", "900", "--c-score", "950",
                   check=True)


def ctl_json(daemon: Naosd, *args: str) -> dict:
    out = daemon.ctl(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def audit(daemon: Naosd, type_: str) -> list[dict]:
    return json.loads(daemon.ctl("audit", "tail", "--type", type_, "--json", "-n", "1000").stdout)


def run(daemon: Naosd, agent: str | None = None, task: str = TOTAL):
    extra = ("--agent", agent) if agent else ()
    return daemon.ctl("broker", "execute", task, *extra)


def test_pause_refuses_at_the_limit_until_reset(daemon: Naosd):
    status = ctl_json(daemon, "cost", "set", "ann", "--budget", "$0.00001/day",
                      "--alert-at", "50,100", "--action", "pause")
    assert (status["limit_micro"], status["period"], status["action"]) == (10, "day", "pause")
    assert run(daemon, "ann").returncode == 0
    assert run(daemon, "ann").returncode == 0
    refused = run(daemon, "ann")
    assert refused.returncode == 1 and "budget exceeded" in refused.stderr
    assert run(daemon, "bob").returncode == 0  # another agent has no budget
    [ann] = ctl_json(daemon, "cost", "status", "ann")["budgets"]
    assert (ann["spent_micro"], ann["reserved_micro"], ann["remaining_micro"]) == (10, 0, 0)
    assert ann["alerted"] == [50, 100]
    alerts = audit(daemon, "cost.alert")
    assert [(a["agent"], a["detail"]["percent"]) for a in alerts] == [("ann", 50), ("ann", 100)]
    denied = audit(daemon, "broker.denied")
    assert denied[-1]["detail"]["error"] == "budget_exceeded"
    assert "reached 50%" in daemon.log() and "reached 100%" in daemon.log()
    reset = ctl_json(daemon, "cost", "reset", "ann")
    assert (reset["spent_micro"], reset["alerted"], reset["paused"]) == (0, [], False)
    assert run(daemon, "ann").returncode == 0
    assert audit(daemon, "cost.period")[-1]["detail"]["reason"] == "reset"


def test_throttle_lets_a_burst_through_then_refuses(daemon: Naosd):
    ctl_json(daemon, "cost", "set", "ann", "--budget", "$0.00001/day", "--action", "throttle",
             "--throttle-rate", "0.0001", "--throttle-burst", "2")
    results = [run(daemon, "ann") for _ in range(5)]
    assert [r.returncode for r in results] == [0, 0, 0, 0, 1]
    assert "throttled" in results[-1].stderr and "retry in" in results[-1].stderr
    [ann] = ctl_json(daemon, "cost", "status", "ann")["budgets"]
    assert ann["throttled"] and ann["spent_micro"] == 20  # throttling slows, it does not cap
    assert len(audit(daemon, "cost.throttled")) == 1  # once per period
    assert audit(daemon, "broker.denied")[-1]["detail"]["error"] == "budget_throttled"


def test_alert_action_continues_past_the_limit_alerting_once_per_level(daemon: Naosd):
    ctl_json(daemon, "cost", "set", "--global", "--budget", "$0.00001/day", "--action", "alert",
             "--alert-at", "50,80,100")
    assert all(run(daemon).returncode == 0 for _ in range(4))
    [glob] = ctl_json(daemon, "cost", "status", "--global")["budgets"]
    assert glob["spent_micro"] == 20 and not glob["paused"]
    levels = [a["detail"]["percent"] for a in audit(daemon, "cost.alert")]
    assert sorted(levels) == [50, 80, 100]


def test_concurrent_tasks_never_overspend(daemon: Naosd):
    """Many tasks at once against a small pausing budget: what is settled stays within it."""
    assert daemon.ctl("skill", "install", str(CSV_TOTAL)).returncode == 0
    ctl_json(daemon, "cost", "set", "--global", "--budget", "$0.0005/day", "--action", "pause")
    ctl_json(daemon, "cost", "set", "ann", "--budget", "$0.00004/day", "--action", "pause")
    tasks = [("ann" if i % 2 else None, TOTAL if i % 3 else "csv total: 1,2") for i in range(60)]

    def one(job: tuple[str | None, str]) -> str:
        agent, task = job
        params = {"task": task, **({"agent": agent} if agent else {})}
        with Client(daemon.socket, timeout=60) as client:
            try:
                client.call("broker.execute", **params)
                return "ok"
            except NaosError as exc:
                return exc.code

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(one, tasks))
    assert set(outcomes) <= {"ok", "budget_exceeded"}, outcomes
    assert outcomes.count("ok") >= 8 and "budget_exceeded" in outcomes
    budgets = {b["scope"]: b for b in ctl_json(daemon, "cost", "status")["budgets"]}
    history = ctl_json(daemon, "cost", "history", "--limit", "1000")
    ledger = history["entries"]
    assert len(ledger) == outcomes.count("ok")
    spent_all = sum(e["cost_micro"] for e in ledger)
    spent_ann = sum(e["cost_micro"] for e in ledger if e["agent"] == "ann")
    assert spent_all == budgets["*"]["spent_micro"] <= 500
    assert spent_ann == budgets["ann"]["spent_micro"] <= 40
    assert budgets["*"]["reserved_micro"] == budgets["ann"]["reserved_micro"] == 0


def test_budgets_and_spending_survive_a_restart(daemon: Naosd, base: Path):
    ctl_json(daemon, "cost", "set", "ann", "--budget", "$1/week", "--alert-at", "50")
    assert run(daemon, "ann").returncode == 0
    assert daemon.stop() == 0
    again = start_naosd(base, env=daemon.env)
    try:
        [ann] = ctl_json(again, "cost", "status", "ann")["budgets"]
        assert (ann["limit_micro"], ann["period"], ann["spent_micro"]) == (1_000_000, "week", 5)
        assert ctl_json(again, "cost", "history")["total_micro"] == 5
    finally:
        assert not reap(again)


def test_bad_budget_input_is_refused_clearly(daemon: Naosd):
    cases = [
        (("cost", "set", "ann", "--budget", "ten dollars"), "invalid budget"),
        (("cost", "set", "ann", "--budget", "$10/fortnight"), "unknown period"),
        (("cost", "set", "ann", "--budget", "$0.0000001/day"), "micro-dollars"),
        (("cost", "set", "ann", "--budget", "$1/day", "--alert-at", "0,150"), "alert levels"),
        (("cost", "set", "ann", "--budget", "$1/day", "--alert-at", "x"), "whole percents"),
        (("cost", "set", "--budget", "$1/day"), "AGENT or pass --global"),
        (("cost", "set", "Bad!", "--budget", "$1/day"), "invalid agent name"),
        (("cost", "reset", "nobody"), "no budget for agent 'nobody'"),
    ]
    for args, message in cases:
        out = daemon.ctl(*args)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
    assert ctl_json(daemon, "cost", "status")["budgets"] == []
