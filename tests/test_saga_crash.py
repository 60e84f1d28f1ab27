"""kill -9 of naosd at random points during 20 saga runs: after the restart
every run ends completed or compensated and no side effect was applied twice."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import Naosd, kill_all, reap, start_naosd, wait_gone
from orch_agents import Lab
from test_saga_e2e import STEPS, make_agents, ok

pytestmark = pytest.mark.e2e
RUNS = 20
FINAL = {"completed", "compensated", "compensation_failed"}


def stop_all(d: Naosd, daemons: list[Naosd]) -> None:
    """Stop the last daemon; nothing any of them started may be left."""
    d.stop()
    survivors = []
    for one in daemons:
        survivors += reap(one)
    assert not survivors


def order_saga(d: Naosd, *create: str, attempts: str) -> None:
    ok(d, "saga", "create", "order", "--compensation-delay", "0.1", *create)
    for step, agent, undo in STEPS:
        extra = ["--compensate", undo] if undo else []
        ok(d, "saga", "add-step", "order", step, "--agent", agent, *extra,
           "--attempts", attempts, "--retry-delay", "0.2")


def wait_final(d: Naosd, runs: dict[str, dict], limit_s: float = 90) -> dict[str, dict]:
    """Every run as listed once all are final (or the time is up)."""
    deadline = time.monotonic() + limit_s
    while True:
        listed = {r["run_id"]: r for r in ok(d, "saga", "status")}
        if all(listed[r]["status"] in FINAL for r in runs) or time.monotonic() > deadline:
            return listed
        time.sleep(0.2)


def kill9(d: Naosd) -> None:
    """SIGKILL naosd alone; its children die with it (parent-death signal)."""
    pids = d.remember_tree()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    left = wait_gone(pids, timeout=20)
    kill_all(left)
    assert not left, f"processes outlived a kill -9 of naosd: {left}"


@pytest.mark.parametrize("recovery", ["forward", "compensate"])
def test_kill9_during_20_runs(base: Path, recovery: str):
    rng = random.Random(f"naos-saga-crash-{recovery}")
    lab = Lab(base)
    lab.set(sleep={"reserve": 0.05, "charge": 0.15, "ship": 0.05})
    daemons: list[Naosd] = []
    d = start_naosd(base)
    daemons.append(d)
    try:
        make_agents(d, lab)
        order_saga(d, "--recovery", recovery, "--compensation-attempts", "5", attempts="5")
        kill_after = set(rng.sample(range(2, RUNS), 4))
        runs: dict[str, dict] = {}
        for i in range(RUNS):
            run_input = {"i": i, "fail_at": "ship"} if i % 3 == 0 else {"i": i}
            started = ok(d, "saga", "run", "order", "--no-wait", "--input",
                         json.dumps(run_input))
            runs[started["run_id"]] = run_input
            if i in kill_after:
                time.sleep(rng.uniform(0.0, 0.4))
                kill9(d)
                d = start_naosd(base, state_dir=d.state_dir)
                daemons.append(d)
        listed = wait_final(d, runs)
        assert set(listed) == set(runs)
        statuses = Counter(listed[r]["status"] for r in runs)
        assert set(statuses) <= {"completed", "compensated"}, (statuses, d.log()[-3000:])
        for run_id, run_input in runs.items():
            ledger = lab.ledger(run_id)
            assert not [k for k, n in Counter(ledger).items() if n > 1], (run_id, ledger)
            done = {s for s, u in ledger if not u}
            undone = {s for s, u in ledger if u}
            if listed[run_id]["status"] == "completed":
                assert done == {"reserve", "charge", "ship"} and not undone, (run_id, ledger)
                assert "fail_at" not in run_input
            else:
                # every applied step that has a compensation was compensated, once
                assert undone == done - {"ship"}, (run_id, ledger)
                if recovery == "forward":
                    assert run_input.get("fail_at") == "ship"
        types = [r["type"] for r in ok(d, "audit", "tail", "-n", "100000")]
        assert types.count("daemon.start") == 5
        assert "saga.recovered" in types  # the kills did land in the middle of runs
        calls = lab.rows("SELECT COUNT(*) FROM calls")[0][0]
        applied = lab.rows("SELECT COUNT(*) FROM ledger")[0][0]
        assert calls >= applied  # in-doubt steps were re-sent, not re-applied
    finally:
        stop_all(d, daemons)


def coordinators(d: Naosd) -> dict[str, dict]:
    """The orchestration supervisor's children in the tree ``status`` shows."""
    from naosctl.client import Client

    with Client(d.socket, timeout=30) as c:
        tree = c.call("status")["actors"]
    orch = next(c for c in tree["children"] if c["name"] == "orchestration")
    assert orch["kind"] == "orchestration" and orch["pid"]
    return {c["name"]: c for c in orch["children"]}


def kill_while_charging(d: Naosd, lab: Lab, runs: set[str]) -> dict[str, int]:
    """SIGKILL each run's coordinator once, while the run's charge step runs."""
    killed: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while not runs <= set(coordinators(d)):  # one per running saga, in the tree
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while len(killed) < len(runs):
        assert time.monotonic() < deadline, (killed, d.log()[-3000:])
        tree = coordinators(d)
        for run_id in runs - set(killed):
            node = tree.get(run_id)
            charging = lab.rows("SELECT 1 FROM calls WHERE key = ?", (f"{run_id}:charge:do",))
            if node and node["pid"] and node["state"] == "running" and charging:
                assert node["kind"] == "saga"
                os.kill(node["pid"], signal.SIGKILL)
                killed[run_id] = node["pid"]
        time.sleep(0.05)
    return killed


def check_recovered_run(d: Naosd, lab: Lab, run_id: str, status: str) -> None:
    ledger = lab.ledger(run_id)
    if status == "completed":
        assert ledger == [("reserve", 0), ("charge", 0), ("ship", 0)], (run_id, ledger)
    else:
        assert ledger == [("reserve", 0), ("charge", 0), ("charge", 1), ("reserve", 1)], ledger
    history = ok(d, "saga", "history", run_id)
    recovered = [t for t in history["timeline"] if t["type"] == "saga.recovered"]
    assert recovered, history
    doubt = recovered[0]["detail"]["in_doubt"]  # charge, unless it ended as the kill came
    if doubt == ["charge"]:  # re-sent while the first call still ran: it shared that call
        charges = lab.rows("SELECT COUNT(*) FROM calls WHERE key = ?", (f"{run_id}:charge:do",))
        assert charges == [(1,)], (run_id, charges)


def test_kill9_of_coordinators_mid_run(base: Path):
    """Each run's coordinator is its own process in the tree; SIGKILLed while
    its charge step runs, it is restarted from the run's record and the run
    completes or compensates, every side effect applied once."""
    lab = Lab(base)
    lab.set(sleep_do={"charge": 1.5})
    daemons: list[Naosd] = []
    d = start_naosd(base)
    daemons.append(d)
    try:
        make_agents(d, lab)
        order_saga(d, attempts="3")
        runs = {}
        for i in range(4):
            run_input = {"i": i, "fail_at": "ship"} if i % 2 == 0 else {"i": i}
            started = ok(d, "saga", "run", "order", "--no-wait", "--input", json.dumps(run_input))
            runs[started["run_id"]] = run_input
        killed = kill_while_charging(d, lab, set(runs))
        listed = wait_final(d, runs)
        deadline = time.monotonic() + 30
        for run_id, run_input in runs.items():
            want = "compensated" if "fail_at" in run_input else "completed"
            assert listed[run_id]["status"] == want, (run_id, listed[run_id], d.log()[-3000:])
            check_recovered_run(d, lab, run_id, want)
        while set(coordinators(d)) & set(runs):  # finished runs' coordinators exit
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert wait_gone(list(killed.values()), timeout=5) == []
    finally:
        stop_all(d, daemons)
