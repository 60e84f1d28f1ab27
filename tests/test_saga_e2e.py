"""Durable sagas against the real daemon, real agents and real naosctl."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from harness import Naosd
from orch_agents import Lab

pytestmark = pytest.mark.e2e

STEPS = [("reserve", "inventory", "inventory-release"),
         ("charge", "payment", "payment-refund"),
         ("ship", "shipper", None)]


def ok(d: Naosd, *args: str) -> dict:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def outcome(d: Naosd, *args: str) -> tuple[int, dict]:
    out = d.ctl(*args, "--json", timeout=120)
    assert out.stdout.strip(), f"{args}: rc={out.returncode} {out.stderr}\n{d.log()[-3000:]}"
    return out.returncode, json.loads(out.stdout)


def make_agents(d: Naosd, lab: Lab) -> None:
    for _, agent, undo in STEPS:
        ok(d, "create", agent, "--source", str(lab.handler), *lab.grant, "--config", lab.config())
        if undo:
            ok(d, "create", undo, "--source", str(lab.handler), *lab.grant,
               "--config", lab.config(True))


def make_saga(d: Naosd, name: str = "order", *create: str, step_args: tuple[str, ...] = ()
              ) -> None:
    ok(d, "saga", "create", name, *create)
    for step, agent, undo in STEPS:
        extra = ["--compensate", undo] if undo else []
        ok(d, "saga", "add-step", name, step, "--agent", agent, *extra, *step_args)


@pytest.fixture
def lab(daemon: Naosd) -> Lab:
    lab = Lab(daemon.socket.parent)
    make_agents(daemon, lab)
    return lab


def test_happy_path_passes_outputs_and_keys(daemon: Naosd, lab: Lab):
    make_saga(daemon)
    rc, run = outcome(daemon, "saga", "run", "order", "--input", '{"order": 42}')
    assert rc == 0 and run["status"] == "completed"
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3
    assert lab.ledger(run["run_id"]) == [("reserve", 0), ("charge", 0), ("ship", 0)]
    msgs = [json.loads(str(p)) for (p,) in lab.rows(
        "SELECT payload FROM ledger WHERE run_id = ? ORDER BY id", (run["run_id"],))]
    assert msgs[0]["input"] == {"order": 42} and msgs[0]["outputs"] == {}
    assert msgs[2]["outputs"] == {"reserve": {"by": "inventory", "step": "reserve", "n": 0},
                                  "charge": {"by": "payment", "step": "charge", "n": 1}}
    assert msgs[1]["idempotency_key"] == f"{run['run_id']}:charge:do"
    hist = ok(daemon, "saga", "history", run["run_id"])
    types = [t["type"] for t in hist["timeline"]]
    assert types[0] == "saga.started" and types[-1] == "saga.completed"
    assert types.count("saga.step_succeeded") == 3
    audit = [r["type"] for r in ok(daemon, "audit", "tail", "-n", "500")]
    assert "saga.completed" in audit and "saga.step_started" in audit
    listed = ok(daemon, "saga", "status")
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    text = daemon.ctl("saga", "history", run["run_id"])
    assert "saga.step_succeeded" in text.stdout and "output charge" in text.stdout


@pytest.mark.parametrize(("fail_at", "undone"), [
    ("reserve", []),
    ("charge", [("reserve", 1)]),
    ("ship", [("charge", 1), ("reserve", 1)]),
])
def test_failure_at_each_position_compensates_in_reverse(daemon: Naosd, lab: Lab,
                                                         fail_at: str, undone: list):
    make_saga(daemon)
    rc, run = outcome(daemon, "saga", "run", "order", "--input",
                      json.dumps({"fail_at": fail_at}))
    assert rc == 1 and run["status"] == "compensated", run
    done = [(s, 0) for s, _, _ in STEPS[:[s for s, _, _ in STEPS].index(fail_at)]]
    assert lab.ledger(run["run_id"]) == done + undone
    assert f"step '{fail_at}' failed: declined" in run["error"]
    status = {s["name"]: s["status"] for s in run["steps"]}
    assert status[fail_at] == "failed"


def test_compensation_failure_then_retry_and_resolve(daemon: Naosd, lab: Lab):
    make_saga(daemon, "order", "--compensation-attempts", "2", "--compensation-delay", "0")
    lab.set(fail_undo=["reserve"])
    rc, run = outcome(daemon, "saga", "run", "order", "--input", '{"fail_at": "ship"}')
    rid = run["run_id"]
    assert rc == 1 and run["status"] == "compensation_failed"
    # the other compensation still ran; the broken one is not reported as done
    assert lab.ledger(rid) == [("reserve", 0), ("charge", 0), ("charge", 1)]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["reserve"]["status"] == "undo_failed" and steps["reserve"]["undo_attempt"] == 2
    # resolve needs a note; retry-compensation on a compensated run is refused
    assert daemon.ctl("saga", "resolve", rid, "--note", " ").returncode != 0
    lab.set()
    rc, fixed = outcome(daemon, "saga", "retry-compensation", rid)
    assert rc == 0 and fixed["status"] == "compensated"
    assert lab.ledger(rid)[-1] == ("reserve", 1)
    again = daemon.ctl("saga", "retry-compensation", rid)
    assert again.returncode != 0 and "compensated" in again.stderr
    # a second run that stays broken is resolved by hand
    lab.set(fail_undo=["charge"])
    rc, run2 = outcome(daemon, "saga", "run", "order", "--input", '{"fail_at": "ship"}')
    assert run2["status"] == "compensation_failed"
    resolved = ok(daemon, "saga", "resolve", run2["run_id"], "--note", "refunded by hand")
    assert resolved["status"] == "compensation_failed"
    assert resolved["resolution"] == "refunded by hand"
    types = [r["type"] for r in ok(daemon, "audit", "tail", "-n", "1000")]
    assert "saga.compensation_failed" in types and "saga.resolved" in types


def test_step_timeout_and_total_timeout(daemon: Naosd, lab: Lab):
    make_saga(daemon, "slow", "--step-timeout", "0.5")
    lab.set(sleep_do={"charge": 3})  # charge has not taken effect when it times out
    rc, run = outcome(daemon, "saga", "run", "slow", "--input", "{}")
    assert rc == 1 and run["status"] == "compensated" and "timeout" in run["error"]
    assert lab.ledger(run["run_id"])[-1] == ("reserve", 1)
    undo = lab.rows("SELECT COUNT(*) FROM calls WHERE key = ?",
                    (f"{run['run_id']}:charge:undo",))
    assert undo[0][0] == 1  # charge was in doubt: its compensation ran, found nothing
    make_saga(daemon, "total", "--timeout", "1", "--step-timeout", "30")
    rc, run = outcome(daemon, "saga", "run", "total", "--input", "{}")
    assert rc == 1 and run["status"] == "compensated" and run["error"] == "saga timed out"


@pytest.mark.parametrize("policy", ["--compensate-in-doubt", "--no-compensate-in-doubt"])
def test_a_step_that_timed_out_after_applying_is_compensated(daemon: Naosd, lab: Lab,
                                                             policy: str):
    name = policy.strip("-").replace("-", "")
    make_saga(daemon, name, "--step-timeout", "0.5", policy)
    lab.set(sleep_after={"charge": 3})  # charge takes effect, then answers too late
    rc, run = outcome(daemon, "saga", "run", name, "--input", "{}")
    assert rc == 1 and run["status"] == "compensated" and "timeout" in run["error"]
    charge = next(s for s in run["steps"] if s["name"] == "charge")
    assert charge["status"] == ("compensated" if policy == "--compensate-in-doubt"
                                else "failed")
    if policy == "--compensate-in-doubt":  # undone first, under its own undo key
        assert lab.ledger(run["run_id"]) == [("reserve", 0), ("charge", 0), ("charge", 1),
                                             ("reserve", 1)]
        payload = lab.rows("SELECT payload FROM ledger WHERE key = ?",
                           (f"{run['run_id']}:charge:undo",))
        message = json.loads(str(payload[0][0]))
        assert message["in_doubt"] and message["step_key"] == f"{run['run_id']}:charge:do"
    else:  # the operator chose not to: the applied charge stays, as documented
        assert lab.ledger(run["run_id"]) == [("reserve", 0), ("charge", 0), ("reserve", 1)]
    types = [r["detail"] for r in ok(daemon, "audit", "tail", "-n", "1000")
             if r["type"] == "saga.step_failed"]
    assert types[-1]["in_doubt"] is True


def test_retry_policy_transient_versus_business_errors(daemon: Naosd, lab: Lab):
    ok(daemon, "saga", "create", "retrying")
    ok(daemon, "saga", "add-step", "retrying", "reserve", "--agent", "inventory",
       "--compensate", "inventory-release")
    ok(daemon, "saga", "add-step", "retrying", "charge", "--agent", "payment",
       "--attempts", "3", "--retry-delay", "0", "--non-retryable", "declined")
    rc, run = outcome(daemon, "saga", "run", "retrying", "--input", '{"fail_at": "charge"}')
    assert rc == 1 and run["status"] == "compensated"
    calls = lab.rows("SELECT COUNT(*) FROM calls WHERE key = ?", (f"{run['run_id']}:charge:do",))
    assert calls == [(1,)]  # a business error is not retried


def test_bad_definitions_and_runs_are_refused(daemon: Naosd, lab: Lab):
    assert "no saga named" in daemon.ctl("saga", "run", "nope").stderr
    ok(daemon, "saga", "create", "s1")
    out = daemon.ctl("saga", "create", "s1")
    assert out.returncode != 0 and "already exists" in out.stderr
    out = daemon.ctl("saga", "run", "s1")
    assert out.returncode != 0 and "at least one step" in out.stderr
    ok(daemon, "saga", "add-step", "s1", "a", "--agent", "inventory")
    ok(daemon, "saga", "create", "ghostly")
    ok(daemon, "saga", "add-step", "ghostly", "a", "--agent", "inventory", "--compensate", "ghost")
    out = daemon.ctl("saga", "run", "ghostly")
    assert out.returncode != 0 and "step 'a': no agent named 'ghost'" in out.stderr
    out = daemon.ctl("saga", "add-step", "s1", "a", "--agent", "inventory")
    assert out.returncode != 0 and "already has a step" in out.stderr
    out = daemon.ctl("saga", "add-step", "s1", "b", "--agent", "x", "--timeout", "-1")
    assert out.returncode != 0 and "timeout" in out.stderr
    out = daemon.ctl("saga", "create", "bad/name")
    assert out.returncode != 0
    assert daemon.ctl("saga", "status", "r-nope").returncode != 0


def test_project_file_defines_sagas_workflows_and_pools(daemon: Naosd, base: Path):
    lab = Lab(base)
    (base / "naos.toml").write_text(f'''
[agents.inventory]
source = "{lab.handler.name}"
config = {{ db = "{lab.db}", control = "{lab.control}" }}
grants = ["write:{lab.dir}"]
[agents.inventory-release]
source = "{lab.handler.name}"
config = {{ db = "{lab.db}", control = "{lab.control}", undo = true }}
grants = ["write:{lab.dir}"]

[sagas.order]
step_timeout = 10
steps = [{{ name = "reserve", agent = "inventory", compensate = "inventory-release" }}]

[workflows.etl]
steps = [{{ name = "one", agent = "inventory" }}]

[pools.both]
agents = ["inventory", "inventory-release"]
merge = "all"
''')
    valid = daemon.ctl("config", "validate", str(base / "naos.toml"))
    assert valid.returncode == 0, valid.stderr
    assert "1 sagas, 1 workflows, 1 pools" in valid.stdout
    applied = ok(daemon, "apply", str(base / "naos.toml"))
    assert {"saga order", "workflow etl", "pool both"} <= set(applied["created"])
    rc, run = outcome(daemon, "saga", "run", "order", "--input", "{}")
    assert rc == 0 and lab.ledger(run["run_id"]) == [("reserve", 0)]
    again = ok(daemon, "apply", str(base / "naos.toml"))
    assert "saga order" in again["existing"]
    (base / "bad.toml").write_text('[sagas.s]\nsteps = [{ name = "a", agent = "ghost" }]\n')
    bad = daemon.ctl("config", "validate", str(base / "bad.toml"))
    assert bad.returncode == 1 and "sagas.s: no agent named 'ghost'" in bad.stderr


async def test_events_stream_carries_run_and_step_transitions(daemon: Naosd, lab: Lab):
    from naosctl.client import AsyncClient

    async with AsyncClient(daemon.socket) as c:
        stream = c.stream("events")
        first = asyncio.ensure_future(stream.__anext__())
        for i in range(100):  # audited changes until the subscription shows one
            await c.call("saga.create", name=f"probe{i}")
            done, _ = await asyncio.wait([first], timeout=0.5)
            if done:
                break
        assert first.result()["type"] == "saga.defined"
        await c.call("saga.create", name="live")
        await c.call("saga.add_step", saga="live", step="only", agent="inventory")
        run_id = (await c.call("saga.run", name="live", input={}))["run_id"]
        seen: list[tuple[str, str | None]] = []
        async with asyncio.timeout(60):
            async for row in stream:
                if row["detail"].get("run_id") == run_id:
                    seen.append((row["type"], row["detail"].get("step")))
                if row["type"] == "saga.completed":
                    break
        await stream.aclose()
    assert seen[0] == ("saga.run_created", None)
    assert ("saga.step_started", "only") in seen and ("saga.step_succeeded", "only") in seen
    assert seen[-1] == ("saga.completed", None)


def test_one_live_coordinator_per_run(daemon: Naosd, lab: Lab):
    make_saga(daemon)
    lab.set(sleep={"reserve": 2})
    run_id = ok(daemon, "saga", "run", "order", "--no-wait", "--input", "{}")["run_id"]
    status = ok(daemon, "saga", "status", run_id)
    assert status["live"] and status["status"] == "running"
    out = daemon.ctl("saga", "resume", run_id)
    assert out.returncode != 0 and "already being run" in out.stderr
    lab.set()
    rc, final = outcome(daemon, "saga", "run", "order", "--input", "{}")  # a second run
    assert rc == 0 and final["run_id"] != run_id
    final = ok(daemon, "saga", "status", run_id)
    while final["status"] == "running":
        time.sleep(0.1)
        final = ok(daemon, "saga", "status", run_id)
    assert final["status"] == "completed" and not final["live"]
    assert lab.ledger(run_id) == [("reserve", 0), ("charge", 0), ("ship", 0)]
    out = daemon.ctl("saga", "resume", run_id)
    assert out.returncode != 0 and "nothing to resume" in out.stderr


def test_a_wait_is_bounded_by_its_own_timeout(daemon: Naosd, lab: Lab):
    from naosctl.client import Client
    from naosd.errors import InvalidRequest, RequestTimeout

    make_saga(daemon)
    lab.set(sleep={"reserve": 2})
    with Client(daemon.socket, timeout=30) as c:
        run_id = c.call("saga.run", name="order", input={})["run_id"]
        with pytest.raises(RequestTimeout, match=r"still running after 0\.5s"):
            c.call("saga.wait", run=run_id, timeout=0.5)
        done = c.call("saga.wait", run=run_id, timeout=120)  # longer than the old 50 s cap
        assert done["status"] == "completed" and not done["live"]
        with pytest.raises(InvalidRequest, match="at most 86400 seconds"):
            c.call("saga.wait", run=run_id, timeout=86401)
