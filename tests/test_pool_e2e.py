"""Pools against the real daemon: every merge strategy with disagreement and
failures, a reducer agent, and queue mode with scale and drain mid-flight."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import Naosd
from test_pool_crash import Effects
from test_saga_e2e import ok

pytestmark = pytest.mark.e2e

VOTER = '''
import os, time

def handle(message, ctx):
    cfg = ctx.config
    time.sleep(cfg.get("sleep", 0))
    if cfg.get("fail"):
        raise RuntimeError("this voter is broken")
    if "answer" in cfg:
        return cfg["answer"]
    if isinstance(message, dict) and "results" in message:  # the reducer
        return {"votes": len(message["results"]), "failed": sorted(message["failed"]),
                "sum": sum(r["n"] for r in message["results"])}
    return {"by": ctx.name, "pid": os.getpid(), "task": message}
'''


@pytest.fixture
def voter(base: Path) -> Path:
    path = base / "voter.py"
    path.write_text(VOTER)
    return path


def agent(d: Naosd, voter: Path, name: str, **config: object) -> None:
    ok(d, "create", name, "--source", str(voter), "--config", json.dumps(config),
       "--no-start")


@pytest.fixture
def voters(daemon: Naosd, voter: Path) -> Naosd:
    agent(daemon, voter, "va", answer={"n": 1, "x": "yes"})
    agent(daemon, voter, "vb", answer={"x": "yes", "n": 1})  # same value, other key order
    agent(daemon, voter, "vc", answer={"n": 2, "x": "no"})
    agent(daemon, voter, "vd", fail=True)
    agent(daemon, voter, "slow", answer={"n": 3, "x": "late"}, sleep=5)
    agent(daemon, voter, "reducer")
    return daemon


def run(d: Naosd, pool: str, *extra: str) -> tuple[int, dict]:
    out = d.ctl("pool", "run", pool, "--input", '{"q": 1}', *extra, "--json", timeout=120)
    assert out.stdout.strip(), out.stderr
    return out.returncode, json.loads(out.stdout)


YES = {"n": 1, "x": "yes"}


def test_all_lists_every_success_and_names_the_failure(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "va,vb,vc,vd", "--merge", "all")
    rc, r = run(voters, "p")
    assert rc == 0 and r["status"] == "partial" and r["failed"] == ["vd"]
    assert sorted(json.dumps(v, sort_keys=True) for v in r["value"]) == sorted(
        json.dumps(v, sort_keys=True) for v in [YES, YES, {"n": 2, "x": "no"}])
    assert "agent_crashed" in r["errors"]["vd"]
    ok(voters, "pool", "create", "clean", "--agents", "va,vb", "--merge", "all")
    assert run(voters, "clean")[1]["status"] == "completed"
    ok(voters, "pool", "create", "broken", "--agents", "vd", "--merge", "all")
    rc, r = run(voters, "broken")
    assert rc == 1 and r["status"] == "failed"


def test_first_takes_the_first_success_and_does_not_wait_for_the_rest(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "slow,vd,vc", "--merge", "first")
    rc, r = run(voters, "p")
    assert rc == 0 and r["value"] == {"n": 2, "x": "no"}
    assert "slow" not in [x["member"] for x in r["replies"]]  # cancelled, not waited for


def test_majority_by_canonical_equality_and_ties(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "va,vb,vc,vd", "--merge", "majority")
    rc, r = run(voters, "p")
    assert rc == 0 and r["value"] == YES and r["status"] == "partial" and r["failed"] == ["vd"]
    ok(voters, "pool", "create", "tie", "--agents", "va,vc", "--merge", "majority")
    rc, r = run(voters, "tie")
    assert rc == 1 and r["status"] == "failed" and "tie" in r["reason"]


def test_quorum_reached_and_unreachable(voters: Naosd):
    ok(voters, "pool", "create", "q2", "--agents", "va,vb,vc,vd", "--merge", "quorum:2")
    rc, r = run(voters, "q2")
    assert rc == 0 and r["value"] == YES
    ok(voters, "pool", "create", "q3", "--agents", "va,vb,vc,vd", "--merge", "quorum:3")
    rc, r = run(voters, "q3")
    assert rc == 1 and r["status"] == "failed"


def test_reducer_agent_merges(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "va,vc,vd", "--merge", "reducer",
       "--reducer", "reducer")
    rc, r = run(voters, "p")
    assert rc == 0 and r["value"] == {"votes": 2, "failed": ["vd"], "sum": 3}


def test_timeout_reports_the_silent_member(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "va,slow", "--merge", "all")
    rc, r = run(voters, "p", "--timeout", "1")
    assert rc == 0 and r["status"] == "partial" and r["failed"] == ["slow"]
    assert r["value"] == [YES]


def test_bad_pools_are_refused(voters: Naosd):
    for args, why in [(("--agents", "va", "--merge", "most"), "unknown merge strategy"),
                      (("--agents", "va", "--merge", "quorum:0"), "quorum"),
                      (("--agents", "va,nobody"), "no agent named 'nobody'"),
                      (("--agents", "va,va"), "twice"),
                      (("--agent", "va"), "size"),
                      (("--agents", "va", "--merge", "reducer"), "reducer")]:
        out = voters.ctl("pool", "create", "bad", *args)
        assert out.returncode != 0 and why in out.stderr, (args, out.stderr)
    ok(voters, "pool", "create", "fixed", "--agents", "va")
    out = voters.ctl("pool", "scale", "fixed", "3")
    assert out.returncode != 0 and "fixed member list" in out.stderr


@pytest.mark.parametrize("pick", ["round-robin", "least-busy"])
def test_queue_mode_scale_and_drain_while_tasks_run(daemon: Naosd, voter: Path, pick: str):
    agent(daemon, voter, "worker", sleep=1.0)  # 6 tasks on 2 members: ~3 s of work
    ok(daemon, "pool", "create", "w", "--agent", "worker", "--size", "2", "--pick", pick)
    ids = [ok(daemon, "pool", "submit", "w", "--input", json.dumps(i))["task_id"]
           for i in range(6)]
    scaled = ok(daemon, "pool", "scale", "w", "4")
    assert [m["name"] for m in scaled["members"]] == [f"worker-c{i}" for i in range(1, 5)]
    assert scaled["queued"] + scaled["running"] > 0  # scaled while tasks were in flight
    ids += [ok(daemon, "pool", "submit", "w", "--input", json.dumps(i))["task_id"]
            for i in range(6, 12)]
    drained = ok(daemon, "pool", "drain", "w")
    assert drained["queued"] == drained["running"] == 0 and not drained["accepting"]
    tasks = [ok(daemon, "pool", "task", "w", t) for t in ids]
    assert drained["completed"] == 12 and drained["failed"] == 0, (tasks, daemon.log()[-3000:])
    tasks = [ok(daemon, "pool", "task", "w", t) for t in ids]
    assert [t["output"]["task"] for t in tasks] == list(range(12))
    by = Counter(t["member"] for t in tasks[6:])
    assert set(by) >= {"worker-c3", "worker-c4"}  # new clones took work
    assert len({t["output"]["pid"] for t in tasks}) >= 3  # really separate processes
    refused = daemon.ctl("pool", "submit", "w", "--input", "1")
    assert refused.returncode != 0 and "drained" in refused.stderr
    status = ok(daemon, "pool", "status", "w")
    assert status["throughput_per_s"] > 0
    daemon.remember_tree()


def test_a_clone_name_taken_by_another_agent_is_refused(daemon: Naosd, voter: Path):
    agent(daemon, voter, "worker", answer=1)
    agent(daemon, voter, "worker-c2", answer=2)  # not a clone of worker
    out = daemon.ctl("pool", "create", "w", "--agent", "worker", "--size", "3")
    assert out.returncode != 0 and "'worker-c2'" in out.stderr and "taken" in out.stderr
    assert daemon.ctl("pool", "status", "w").returncode != 0  # nothing half-created


@pytest.mark.parametrize("pick", ["round-robin", "least-busy"])
def test_pick_strategies_spread_tasks(daemon: Naosd, voter: Path, pick: str):
    agent(daemon, voter, "slowpoke", sleep=0.5)
    agent(daemon, voter, "quick")
    ok(daemon, "pool", "create", "mix", "--agents", "slowpoke,quick", "--pick", pick)
    from naosctl.client import Client

    with Client(daemon.socket, timeout=30) as c:  # all queued at once: one naosctl per
        ids = [c.call("pool.submit", name="mix", input=i)["task_id"]  # task was slower
               for i in range(10)]  # than slowpoke on a loaded machine (a tie every time)
    ok(daemon, "pool", "drain", "mix")
    by = Counter(ok(daemon, "pool", "task", "mix", t)["member"] for t in ids)
    if pick == "round-robin":
        assert by == Counter({"slowpoke": 5, "quick": 5})
    else:  # the idle member takes the work while the slow one is busy
        assert by["quick"] >= 7, by


def test_first_sends_nothing_more_and_records_the_losers(voters: Naosd):
    ok(voters, "pool", "create", "p", "--agents", "vc,slow,va", "--merge", "first",
       "--concurrency", "2")
    rc, r = run(voters, "p")
    assert rc == 0 and r["value"] == {"n": 2, "x": "no"}
    assert r["cancelled"] == ["slow"] and r["not_sent"] == ["va"], r
    record = ok(voters, "pool", "run-status", r["run_id"])
    assert record["status"] == "completed"
    assert record["cancelled"] == ["slow"] and record["not_sent"] == ["va"]
    asked = [e.get("agent") for e in ok(voters, "audit", "tail", "-n", "1000")
             if e["type"] == "agent.run"
             and str(e["detail"].get("idempotency_key")).startswith(r["run_id"])]
    assert asked == ["vc"]  # the loser's reply is never used; va was never asked


def test_a_queued_task_can_be_cancelled_and_is_counted(daemon: Naosd, base: Path):
    fx = Effects(base)
    gate = fx.dir / "gate"
    gate.write_text("0")  # every task hangs after its effect until the gate opens
    ok(daemon, "create", "one", "--source", str(fx.handler), *fx.grant, "--config",
       fx.config(gate=str(gate)), "--no-start")
    ok(daemon, "pool", "create", "q", "--agents", "one")
    ids = [ok(daemon, "pool", "submit", "q", "--input", str(i))["task_id"] for i in range(3)]
    deadline = time.monotonic() + 60
    while ok(daemon, "pool", "status", "q")["tasks"]["running"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    refused = daemon.ctl("pool", "cancel", "q", ids[0])
    assert refused.returncode != 0 and "running on 'one'" in refused.stderr
    assert ok(daemon, "pool", "cancel", "q", ids[2])["status"] == "cancelled"
    again = daemon.ctl("pool", "cancel", "q", ids[2])
    assert again.returncode != 0 and "is cancelled" in again.stderr
    missing = daemon.ctl("pool", "cancel", "q", "nosuchtask")
    assert missing.returncode != 0 and "no task 'nosuchtask'" in missing.stderr
    gate.write_text("1000")
    drained = ok(daemon, "pool", "drain", "q")
    assert drained["tasks"] == {"queued": 0, "running": 0, "done": 2, "failed": 0,
                                "cancelled": 1}
    assert [ok(daemon, "pool", "task", "q", t)["status"] for t in ids] == [
        "completed", "completed", "cancelled"]
    assert sorted(int(str(i)) for (i,) in fx.rows("SELECT input FROM effects")) == [0, 1]


def test_waits_are_bounded_by_their_own_timeout_not_a_fixed_cap(daemon: Naosd, voter: Path):
    """A pool's timeout, a task's wait, a fan-out's and a drain's timeout may
    be longer than the 50 s the domain used to cap them at (a daemon default
    leaking into it); each is checked against a day, with a clear error."""
    from naosctl.client import Client
    from naosd.errors import InvalidRequest

    agent(daemon, voter, "w", answer=1)
    ok(daemon, "pool", "create", "long", "--agents", "w", "--timeout", "120")
    with Client(daemon.socket, timeout=30) as c:
        task = c.call("pool.submit", name="long", input=1)
        assert c.call("pool.task", name="long", task=task["task_id"], wait=60)["status"] == \
            "completed"
        assert c.call("pool.run", name="long", input=1, timeout=55)["status"] == "completed"
        assert c.call("pool.drain", name="long", timeout=70)["queued"] == 0
        for method, params in (("pool.task", {"task": task["task_id"], "wait": 86401}),
                               ("pool.run", {"input": 1, "timeout": 86401}),
                               ("pool.drain", {"timeout": 86401})):
            with pytest.raises(InvalidRequest, match="at most 86400 seconds"):
                c.call(method, name="long", **params)
    out = daemon.ctl("pool", "create", "longer", "--agents", "w", "--timeout", "86401")
    assert out.returncode != 0 and "at most 86400 seconds" in out.stderr
