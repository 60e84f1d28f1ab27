"""Operator verbs through the real daemon and the real naosctl: update an
agent's code, list and delete resources (with refusals while something
depends on them), LSB exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import Naosd, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

V1 = '''
def handle(message, ctx):
    return {"version": 1, "greeting": ctx.config.get("greeting", "hi")}
'''
V2 = '''
def handle(message, ctx):
    return {"version": 2, "greeting": ctx.config.get("greeting", "hi")}
'''
BROKEN = '''
import no_such_module_anywhere
def handle(message, ctx):
    return 0
'''


def ok(d: Naosd, *args: str) -> Any:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def fails(d: Naosd, code: int, *args: str) -> str:
    out = d.ctl(*args)
    assert out.returncode == code, f"{args}: exit {out.returncode}\n{out.stdout}{out.stderr}"
    return out.stderr


def audit(d: Naosd, type_: str) -> list[dict[str, Any]]:
    return [r for r in ok(d, "audit", "tail", "-n", "1000") if r["type"] == type_]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_update_rolls_out_new_code_and_config(daemon: Naosd, base: Path) -> None:
    src = write(base / "greeter.py", V1)
    created = ok(daemon, "create", "greeter", "--source", str(src))
    old_digest = created["execution"]["digest"]
    old_pid = created["pid"]
    assert ok(daemon, "run", "greeter")["output"] == {"version": 1, "greeting": "hi"}

    new_src = write(base / "greeter2.py", V2)
    updated = ok(daemon, "update", "greeter", "--source", str(new_src),
                 "--config", '{"greeting": "hello"}')
    assert updated["old_digest"] == old_digest
    assert updated["new_digest"] == updated["execution"]["digest"] != old_digest
    assert updated["restarted"] and updated["state"] == "running"
    assert updated["pid"] != old_pid
    assert ok(daemon, "run", "greeter")["output"] == {"version": 2, "greeting": "hello"}
    row = audit(daemon, "agent.updated")[-1]
    assert row["agent"] == "greeter"
    assert row["detail"]["old_digest"] == old_digest
    assert row["detail"]["new_digest"] == updated["new_digest"]
    assert set(row["detail"]["changed"]) == {"source", "config", "execution"}

    # the same code again changes nothing and restarts nothing
    again = ok(daemon, "update", "greeter", "--source", str(new_src),
               "--config", '{"greeting": "hello"}')
    assert again["changed"] == [] and not again["restarted"] and again["pid"] == updated["pid"]
    assert len(audit(daemon, "agent.updated")) == 1
    text = daemon.ctl("update", "greeter", "--config", '{"greeting": "yo"}')
    assert text.returncode == 0 and "agent greeter updated: restarted" in text.stdout


def test_update_refuses_code_that_does_not_load(daemon: Naosd, base: Path) -> None:
    src = write(base / "greeter.py", V1)
    before = ok(daemon, "create", "greeter", "--source", str(src))
    broken = write(base / "broken.py", BROKEN)
    err = fails(daemon, 2, "update", "greeter", "--source", str(broken))
    assert "no_such_module_anywhere" in err
    syntax = write(base / "syntax.py", "def handle(m, ctx) return 1\n")
    assert "syntax" in fails(daemon, 2, "update", "greeter", "--source", str(syntax)).lower()
    after = daemon.agent("greeter")
    assert after["execution"]["digest"] == before["execution"]["digest"]
    assert after["pid"] == before["pid"] and after["restarts"] == 0
    assert ok(daemon, "run", "greeter")["output"]["version"] == 1
    assert audit(daemon, "agent.updated") == []
    # usage and unknown names
    assert "give --source, --config" in fails(daemon, 2, "update", "greeter")
    assert "no agent named 'ghost'" in fails(daemon, 4, "update", "ghost", "--config", "{}")
    assert "not valid JSON" in fails(daemon, 2, "update", "greeter", "--config", "{nope")


def test_update_of_a_stopped_agent_keeps_it_stopped(daemon: Naosd, base: Path) -> None:
    src = write(base / "greeter.py", V1)
    ok(daemon, "create", "greeter", "--source", str(src), "--no-start")
    updated = ok(daemon, "update", "greeter", "--source", str(write(base / "v2.py", V2)))
    assert updated["state"] == "stopped" and not updated["restarted"]
    assert ok(daemon, "run", "greeter")["output"]["version"] == 2  # on demand, new code


def test_ls_status_and_kill_exit_codes(daemon: Naosd) -> None:
    assert daemon.ctl("ls").stdout.strip() == "no agents"
    ok(daemon, "create", "alpha", "--template", "echo")
    ok(daemon, "create", "beta", "--template", "echo", "--no-start")
    rows = ok(daemon, "ls")
    assert [(r["name"], r["state"]) for r in rows] == [("alpha", "running"), ("beta", "stopped")]
    assert [r["name"] for r in ok(daemon, "list")] == ["alpha", "beta"]
    text = daemon.ctl("ls").stdout.splitlines()
    assert text[0].startswith("alpha") and "running" in text[0] and "stopped" in text[1]
    assert daemon.ctl("status", "alpha").returncode == 0
    assert daemon.ctl("status", "beta").returncode == 3  # LSB: not running
    assert json.loads(daemon.ctl("status", "beta", "--json").stdout)["state"] == "stopped"
    assert "no agent named 'ghost'" in fails(daemon, 4, "status", "ghost")
    assert "no agent named 'ghost'" in fails(daemon, 4, "kill", "ghost")
    assert "not running" in fails(daemon, 1, "kill", "beta")


def test_delete_refuses_while_something_depends_on_the_agent(daemon: Naosd) -> None:
    for name in ("a", "b", "c", "solo"):
        ok(daemon, "create", name, "--template", "echo")
    ok(daemon, "saga", "create", "trip")
    ok(daemon, "saga", "add-step", "trip", "book", "--agent", "a", "--compensate", "b")
    ok(daemon, "pool", "create", "p", "--agents", "c")
    assert "saga trip" in fails(daemon, 1, "delete", "a")
    assert "saga trip" in fails(daemon, 1, "remove", "b")  # a compensation counts
    assert "pool p" in fails(daemon, 1, "delete", "c")
    for name in ("a", "b", "c"):
        assert daemon.agent(name)["state"] == "running"  # refused: nothing changed
    assert "no agent named 'ghost'" in fails(daemon, 4, "delete", "ghost")

    ok(daemon, "saga", "delete", "trip")
    assert [s["name"] for s in ok(daemon, "saga", "list")] == []
    assert "no saga named 'trip'" in fails(daemon, 4, "saga", "delete", "trip")
    ok(daemon, "delete", "a")
    ok(daemon, "remove", "b")
    assert [r["name"] for r in ok(daemon, "ls")] == ["c", "solo"]
    assert [p["name"] for p in ok(daemon, "pool", "list")] == ["p"]
    assert {r["type"] for r in ok(daemon, "audit", "tail", "-n", "1000")} >= {
        "saga.deleted", "agent.deleted"}


def test_delete_running_supervised_agent_needs_force(daemon: Naosd) -> None:
    ok(daemon, "supervisor", "create", "main")
    ok(daemon, "supervisor", "start", "main")
    ok(daemon, "create", "worker", "--template", "echo", "--supervisor", "main")
    assert [s["name"] for s in ok(daemon, "supervisor", "list")] == ["main"]
    before = daemon.agent("worker")
    tree = ok(daemon, "supervisor", "restart", "main")  # graceful stop, then start
    assert tree["name"] == "main" and tree["state"] in ("starting", "running")
    after = wait_for(lambda: (a := daemon.agent("worker"))["state"] == "running" and a)
    assert after["pid"] != before["pid"]
    assert "supervisor.stop_requested" in {r["type"] for r in ok(daemon, "audit", "tail")}
    err = fails(daemon, 1, "delete", "worker")
    assert "--force" in err and "supervisor 'main'" in err
    assert daemon.agent("worker")["state"] == "running"
    assert "still has children (worker)" in fails(daemon, 1, "supervisor", "delete", "main")
    ok(daemon, "delete", "worker", "--force")
    assert ok(daemon, "ls") == []
    ok(daemon, "supervisor", "delete", "main")
    assert ok(daemon, "supervisor", "list") == []
    assert "no supervisor named 'main'" in fails(daemon, 4, "supervisor", "delete", "main")
    assert "naosd's own" in fails(daemon, 2, "supervisor", "delete", "agents")


def test_workflow_list_and_delete(daemon: Naosd) -> None:
    ok(daemon, "create", "a", "--template", "echo")
    assert daemon.ctl("workflow", "list").stdout.strip() == "no workflows"
    ok(daemon, "workflow", "create", "flow")
    ok(daemon, "workflow", "add-step", "flow", "one", "--agent", "a")
    assert [w["name"] for w in ok(daemon, "workflow", "list")] == ["flow"]
    assert "workflow flow" in fails(daemon, 1, "delete", "a")
    ok(daemon, "workflow", "delete", "flow")
    assert ok(daemon, "workflow", "list") == []
    ok(daemon, "delete", "a")


PROJECT = '''
[agents.greeter]
source = "greeter.py"
config = {{ greeting = "{greeting}" }}

[agents.counter]
template = "wordcount"
{extra}
[supervisors.main]
strategy = "{strategy}"
children = ["greeter"]

[sagas.trip]
steps = [{{ name = "a", agent = "counter" }}]

[pools.both]
agents = ["counter"]
'''


def project(base: Path, *, greeting: str = "hi", strategy: str = "one-for-one",
            extra: str = "") -> str:
    path = base / "naos.toml"
    path.write_text(PROJECT.format(greeting=greeting, strategy=strategy, extra=extra))
    return str(path)


def plan_of(result: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {f"{s['kind']} {s['name']}": (s["action"], tuple(s["fields"]))
            for s in result["plan"]}


def test_apply_reconciles_dry_run_update_and_prune(daemon: Naosd, base: Path) -> None:
    write(base / "greeter.py", V1)
    path = project(base)
    first = ok(daemon, "apply", path, "--dry-run")
    assert first["dry_run"] and set(plan_of(first).values()) == {("create", ())}
    assert ok(daemon, "ls") == [] and ok(daemon, "saga", "list") == []  # nothing changed
    applied = ok(daemon, "apply", path)
    assert set(applied["created"]) == {"main", "greeter", "counter", "saga trip", "pool both"}
    greeter = daemon.agent("greeter")
    counter = daemon.agent("counter")
    assert ok(daemon, "run", "greeter")["output"] == {"version": 1, "greeting": "hi"}

    again = ok(daemon, "apply", path)  # nothing differs: nothing restarts
    assert {a for a, _ in plan_of(again).values()} == {"unchanged"}
    assert daemon.agent("greeter")["pid"] == greeter["pid"]

    # the handler's code and the config change: only the greeter restarts
    write(base / "greeter.py", V2)
    path = project(base, greeting="hello")
    dry = daemon.ctl("apply", path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "~ update    agent greeter (source, config, execution)" in dry.stdout
    assert "= unchanged agent counter" in dry.stdout and "dry run: nothing changed" in dry.stdout
    assert ok(daemon, "run", "greeter")["output"]["version"] == 1  # the dry run changed nothing
    updated = ok(daemon, "apply", path)
    assert updated["updated"] == ["greeter"]
    assert ok(daemon, "run", "greeter")["output"] == {"version": 2, "greeting": "hello"}
    assert daemon.agent("greeter")["pid"] != greeter["pid"]
    assert daemon.agent("counter")["pid"] == counter["pid"]
    row = audit(daemon, "agent.updated")[-1]
    assert row["detail"]["old_digest"] != row["detail"]["new_digest"]

    # a supervisor's strategy changes: it is updated (and restarted with its subtree)
    path = project(base, greeting="hello", strategy="one-for-all")
    assert plan_of(ok(daemon, "apply", path))["supervisor main"] == ("update", ("strategy",))
    assert ok(daemon, "supervisor", "list")[0]["strategy"] == "one_for_all"
    assert daemon.agent("greeter")["state"] == "running"

    # without --prune what the file drops stays; with it, it goes
    (base / "naos.toml").write_text('[agents.greeter]\nsource = "greeter.py"\n'
                                    'config = { greeting = "hello" }\n')
    kept = ok(daemon, "apply", path)
    assert kept["deleted"] == [] and {r["name"] for r in ok(daemon, "ls")} == {
        "greeter", "counter"}
    pruned_plan = ok(daemon, "apply", path, "--prune", "--dry-run")
    assert pruned_plan["deleted"] == ["saga trip", "pool both", "counter", "main"]
    assert [s["name"] for s in ok(daemon, "saga", "list")] == ["trip"]
    pruned = ok(daemon, "apply", path, "--prune")
    assert pruned["deleted"] == ["saga trip", "pool both", "counter", "main"]
    assert ok(daemon, "pool", "list") == []
    assert [r["name"] for r in ok(daemon, "ls")] == ["greeter"]
    assert ok(daemon, "saga", "list") == [] and ok(daemon, "supervisor", "list") == []
    # a name the file never applied is never pruned
    ok(daemon, "create", "other", "--template", "echo")
    assert ok(daemon, "apply", path, "--prune")["deleted"] == []
    assert {r["name"] for r in ok(daemon, "ls")} == {"greeter", "other"}


def test_apply_refuses_an_update_whose_code_does_not_load(daemon: Naosd, base: Path) -> None:
    write(base / "greeter.py", V1)
    path = project(base)
    ok(daemon, "apply", path)
    before = daemon.agent("greeter")
    write(base / "greeter.py", BROKEN)
    out = daemon.ctl("apply", path)
    assert out.returncode == 2 and "no_such_module_anywhere" in out.stderr
    after = daemon.agent("greeter")
    assert after["execution"]["digest"] == before["execution"]["digest"]
    assert after["pid"] == before["pid"]
    clash = base / "clash.toml"
    clash.write_text('[supervisors.greeter]\n')
    out = daemon.ctl("apply", str(clash))
    assert out.returncode == 1 and "agent in naosd" in out.stderr


def test_a_deleted_agents_budget_goes_with_it(base: Path) -> None:
    from harness import reap, start_naosd

    d = start_naosd(base)
    try:
        ok(d, "create", "spender", "--template", "echo")
        ok(d, "cost", "set", "spender", "--budget", "$1/day")
        assert ok(d, "cost", "status", "spender")["budgets"][0]["scope"] == "spender"
        assert ok(d, "delete", "spender")["budget_removed"] is True
        assert "no budget for agent 'spender'" in fails(d, 4, "cost", "status", "spender")
        assert audit(d, "cost.removed")[-1]["agent"] == "spender"
        ok(d, "create", "spender", "--template", "echo")  # a new agent of the same name
        assert d.stop() == 0
        d = start_naosd(base, state_dir=d.state_dir)
        assert "no budget for agent 'spender'" in fails(d, 4, "cost", "status", "spender")
        assert ok(d, "delete", "spender")["budget_removed"] is False
    finally:
        d.stop()
        assert not reap(d)


def test_budgets_and_trust_registrations_list_and_remove(daemon: Naosd) -> None:
    ok(daemon, "cost", "set", "--global", "--budget", "$5/day")
    ok(daemon, "cost", "set", "alpha", "--budget", "$1/day")
    assert [b["scope"] for b in ok(daemon, "cost", "status")["budgets"]] == ["*", "alpha"]
    assert ok(daemon, "cost", "remove", "alpha") == {"removed": "alpha"}
    assert "no budget for agent 'alpha'" in fails(daemon, 4, "cost", "remove", "alpha")
    ok(daemon, "cost", "remove", "--global")
    assert ok(daemon, "cost", "status")["budgets"] == []
    assert fails(daemon, 2, "cost", "remove")  # an agent or --global

    assert daemon.ctl("axis", "list").stdout.strip() == "no registrations"
    ok(daemon, "axis", "register", "alpha", "--t-score", "700", "--c-score", "600")
    rows = ok(daemon, "axis", "list")
    assert [(r["agent"], r["t_score"], r["c_score"]) for r in rows] == [("alpha", 700, 600)]
    assert ok(daemon, "axis", "unregister", "alpha")["was"]["t_score"] == 700
    assert ok(daemon, "axis", "list") == []
    assert "not registered" in fails(daemon, 4, "axis", "unregister", "alpha")
    types = {r["type"] for r in ok(daemon, "audit", "tail", "-n", "1000")}
    assert {"cost.removed", "axis.unregister"} <= types


def test_pool_delete_refuses_while_busy_and_takes_its_clones(daemon: Naosd, base: Path) -> None:
    ok(daemon, "create", "w", "--template", "echo")
    ok(daemon, "pool", "create", "clones", "--agent", "w", "--size", "2")
    assert {r["name"] for r in ok(daemon, "ls")} == {"w", "w-c1", "w-c2"}
    assert "pool clones" in fails(daemon, 1, "delete", "w-c1")
    result = ok(daemon, "pool", "delete", "clones")
    assert result["clones_deleted"] == ["w-c1", "w-c2"]
    assert [r["name"] for r in ok(daemon, "ls")] == ["w"]
    assert ok(daemon, "pool", "list") == []
    assert "no pool named 'clones'" in fails(daemon, 4, "pool", "delete", "clones")
    # created again under the same name, it serves its new members
    ok(daemon, "create", "v", "--template", "echo")
    ok(daemon, "pool", "create", "clones", "--agents", "v")
    task = ok(daemon, "pool", "submit", "clones", "--input", '"hi"', "--wait", "30")
    assert task["member"] == "v" and task["output"] == "hi"
    assert "pool.deleted" in {r["type"] for r in ok(daemon, "audit", "tail", "-n", "1000")}
