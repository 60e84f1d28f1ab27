"""Agents and supervision trees, against the real daemon and real processes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Naosd, alive, reap, start_naosd

pytestmark = pytest.mark.e2e

FLAKY = '''
def handle(message, ctx):
    ctx.log("got", message)
    if isinstance(message, dict) and message.get("boom"):
        raise ValueError("asked to explode")
    if isinstance(message, dict) and message.get("done"):
        ctx.stop()
    return {"ok": True, "pid": __import__("os").getpid()}
'''


@pytest.fixture
def flaky(base: Path) -> Path:
    path = base / "flaky.py"
    path.write_text(FLAKY)
    return path


def ok(d: Naosd, *args: str) -> dict:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def agent(d: Naosd, name: str) -> dict:
    return d.agent(name)


def wait_until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or pred}")


def restarted(d: Naosd, name: str, old_pid: int, restarts: int | None = None) -> dict:
    def check() -> bool:
        a = agent(d, name)
        good = a["state"] == "running" and a["pid"] not in (None, old_pid)
        return good and (restarts is None or a["restarts"] == restarts)

    wait_until(check, what=f"{name} restarted")
    d.remember_tree()
    return agent(d, name)


def audit_types(d: Naosd) -> list[str]:
    return [r["type"] for r in ok(d, "audit", "tail", "-n", "1000")]


def test_create_run_status_logs_and_delete(daemon: Naosd):
    created = ok(daemon, "create", "researcher", "--template", "echo")
    assert created["state"] == "running"
    reply = ok(daemon, "run", "researcher", "--input", '{"q": 1}')
    assert reply["output"] == {"q": 1}
    text = daemon.ctl("run", "researcher", "--input", '{"q": 2}')
    assert json.loads(text.stdout) == {"q": 2}
    a = agent(daemon, "researcher")
    assert a["state"] == "running" and a["pid"] and a["restarts"] == 0
    assert a["pid"] in daemon.remember_tree()
    logs = daemon.ctl("logs", "researcher", "-n", "5")
    assert "echo" in logs.stdout and '"q": 2' in logs.stdout
    inspect = ok(daemon, "inspect", "researcher")
    assert inspect["source_kind"] == "template" and inspect["logs"]
    pid = a["pid"]
    assert ok(daemon, "delete", "researcher") == {"deleted": "researcher", "budget_removed": False}
    wait_until(lambda: not alive(pid), what="agent process gone")
    assert daemon.ctl("run", "researcher", "--input", "1").returncode == 4


def test_wordcount_template_does_real_work(daemon: Naosd):
    ok(daemon, "create", "counter", "--template", "wordcount")
    out = ok(daemon, "run", "counter", "--input",
             json.dumps({"text": "the cat and the hat\nthe end", "top": 1}))["output"]
    assert out == {"words": 7, "distinct": 5, "lines": 2, "top": [["the", 3]]}


def test_bad_names_and_inputs_are_refused(daemon: Naosd):
    bad = daemon.ctl("create", "Bad_Name", "--template", "echo")
    assert bad.returncode == 2 and "lowercase letters" in bad.stderr
    assert daemon.ctl("create", "x" * 65, "--template", "echo").returncode == 2
    assert daemon.ctl("create", "a1", "--template", "nope").returncode == 2
    ok(daemon, "create", "a1", "--template", "echo")
    dup = daemon.ctl("create", "a1", "--template", "echo")
    assert dup.returncode == 1 and "already used" in dup.stderr
    notjson = daemon.ctl("run", "a1", "--input", "{nope")
    assert notjson.returncode == 2 and "not valid JSON" in notjson.stderr


def test_handler_exception_is_an_error_and_a_restart(daemon: Naosd, flaky: Path):
    ok(daemon, "create", "fl", "--source", str(flaky))
    pid = agent(daemon, "fl")["pid"]
    boom = daemon.ctl("run", "fl", "--input", '{"boom": true}')
    assert boom.returncode == 1
    assert "crashed" in boom.stderr and "asked to explode" in boom.stderr
    a = restarted(daemon, "fl", pid, restarts=1)
    assert "asked to explode" in a["last_error"]
    assert ok(daemon, "run", "fl", "--input", "{}")["output"]["ok"] is True
    assert "agent.crashed" in audit_types(daemon) or "agent.restarted" in audit_types(daemon)
    assert "asked to explode" in daemon.ctl("logs", "fl").stdout


def test_sigkill_of_an_agent_is_detected_and_restarted(daemon: Naosd):
    ok(daemon, "create", "victim", "--template", "echo")
    pid = agent(daemon, "victim")["pid"]
    killed = ok(daemon, "kill", "victim")
    assert killed["pid"] == pid
    a = restarted(daemon, "victim", pid, restarts=1)
    assert ok(daemon, "run", "victim", "--input", "7")["output"] == 7
    assert a["restarts"] == 1
    text = daemon.ctl("status").stdout
    assert "victim" in text and "restarts 1" in text


def make_tree(d: Naosd, strategy: str, names: list[str], **kw: str) -> dict[str, int]:
    ok(d, "supervisor", "create", "main", "--strategy", strategy, "--max-restarts", "10",
       "--window", "60")
    for n in names:
        ok(d, "create", n, "--template", "echo", "--no-start")
        ok(d, "supervisor", "add", "main", n, "--restart", kw.get(n, "permanent"))
    ok(d, "supervisor", "start", "main")
    wait_until(lambda: all(agent(d, n)["state"] == "running" for n in names),
               what="tree running")
    d.remember_tree()
    return {n: agent(d, n)["pid"] for n in names}


@pytest.mark.parametrize(("strategy", "changed"), [
    pytest.param("one-for-one", {"b"}, id="one-for-one"),
    pytest.param("one-for-all", {"a", "b", "c"}, id="one-for-all"),
    pytest.param("rest-for-one", {"b", "c"}, id="rest-for-one"),
])
def test_strategies_on_sigkill(daemon: Naosd, strategy: str, changed: set[str]):
    before = make_tree(daemon, strategy, ["a", "b", "c"])
    os.kill(before["b"], signal.SIGKILL)
    for n in changed:
        restarted(daemon, n, before[n])
    after = {n: agent(daemon, n)["pid"] for n in before}
    assert {n for n in before if after[n] != before[n]} == changed
    assert agent(daemon, "b")["restarts"] == 1
    tree = daemon.ctl("supervisor", "status", "main").stdout
    assert strategy in tree and "b (agent)" in tree


def test_restart_types(daemon: Naosd, flaky: Path):
    ok(daemon, "supervisor", "create", "main", "--max-restarts", "10", "--window", "60")
    for name, restart in (("perm", "permanent"), ("trans", "transient"), ("temp", "temporary")):
        ok(daemon, "create", name, "--source", str(flaky), "--no-start")
        ok(daemon, "supervisor", "add", "main", name, "--restart", restart)
    ok(daemon, "supervisor", "start", "main")
    pids = {n: agent(daemon, n)["pid"] for n in ("perm", "trans", "temp")}
    daemon.remember_tree()
    # abnormal exits: permanent and transient come back, temporary does not
    for n in pids:
        os.kill(pids[n], signal.SIGKILL)
    restarted(daemon, "perm", pids["perm"])
    restarted(daemon, "trans", pids["trans"])
    wait_until(lambda: agent(daemon, "temp")["state"] == "stopped", what="temp stopped")
    # normal exits (ctx.stop()): only the permanent one comes back
    pids = {n: agent(daemon, n)["pid"] for n in ("perm", "trans")}
    for n in pids:
        assert ok(daemon, "run", n, "--input", '{"done": true}')["output"]["ok"]
    restarted(daemon, "perm", pids["perm"])
    wait_until(lambda: agent(daemon, "trans")["state"] == "stopped", what="trans stopped")
    wait_until(lambda: not alive(pids["trans"]), what="trans process gone")


def test_intensity_exceeded_escalates_up_a_two_level_tree(daemon: Naosd):
    ok(daemon, "supervisor", "create", "top", "--max-restarts", "1", "--window", "60")
    ok(daemon, "supervisor", "create", "sub", "--max-restarts", "1", "--window", "60",
       "--parent", "top")
    ok(daemon, "create", "w", "--template", "echo", "--no-start", "--supervisor", "sub")
    ok(daemon, "supervisor", "start", "top")
    wait_until(lambda: agent(daemon, "w")["state"] == "running", what="w running")

    def kill_w() -> None:
        pid = agent(daemon, "w")["pid"]
        daemon.remember_tree()
        os.kill(pid, signal.SIGKILL)
        restarted(daemon, "w", pid)

    kill_w()  # sub restarts w (1 restart: within intensity)
    kill_w()  # 2 restarts > 1: sub gives up; top restarts sub (top: 1 restart)
    types = audit_types(daemon)
    assert types.count("supervisor.gave_up") == 1, types
    kill_w()
    kill_w()  # sub gives up again; top: 2 restarts > 1 -> top gives up; root restarts top
    wait_until(lambda: audit_types(daemon).count("supervisor.gave_up") >= 3,
               what="top gave up too")
    wait_until(lambda: "supervisor.restarted" in audit_types(daemon), what="root restart")
    wait_until(lambda: agent(daemon, "w")["state"] == "running", what="tree back")
    assert ok(daemon, "run", "w", "--input", '"still here"')["output"] == "still here"


def test_daemon_restart_restores_the_trees(daemon: Naosd, flaky: Path):
    make_tree(daemon, "one-for-all", ["x", "y"])
    ok(daemon, "create", "solo", "--source", str(flaky))
    ok(daemon, "create", "idle", "--template", "echo", "--no-start")
    assert daemon.stop() == 0
    again = start_naosd(daemon.socket.parent, state_dir=daemon.state_dir)
    try:
        wait_until(lambda: all(agent(again, n)["state"] == "running"
                               for n in ("x", "y", "solo")), what="trees back")
        assert agent(again, "idle")["state"] == "stopped"
        tree = ok(again, "supervisor", "status", "main")
        assert tree["strategy"] == "one_for_all"
        assert [c["name"] for c in tree["children"]] == ["x", "y"]
        again.remember_tree()
    finally:
        again.stop()
        assert not reap(again)


def test_project_file_init_validate_apply(daemon: Naosd, base: Path):
    project = base / "proj"
    init = daemon.ctl("init", str(project))
    assert init.returncode == 0, init.stderr
    valid = daemon.ctl("config", "validate", str(project / "naos.toml"))
    assert valid.returncode == 0 and "OK" in valid.stdout
    applied = ok(daemon, "apply", str(project / "naos.toml"))
    assert set(applied["created"]) == {"main", "greeter", "counter"}
    reply = ok(daemon, "run", "greeter", "--input", '{"name": "naos"}')
    assert reply["output"] == {"text": "hello, naos!"}
    bad = base / "bad.toml"
    bad.write_text('[agents.x]\ntemplate = "echo"\n[supervisors.s]\nchildren = ["nobody"]\n')
    out = daemon.ctl("config", "validate", str(bad))
    assert out.returncode == 1
    assert "supervisors.s.children[0]" in out.stderr and "nobody" in out.stderr


def test_registered_agents_run_on_demand_and_idle_ones_are_stopped(base: Path):
    from harness import clean_env

    env = clean_env(XDG_RUNTIME_DIR=str(base), NAOS_AGENTS_IDLE_TIMEOUT="1")
    d = start_naosd(base, env=env)
    try:
        for i in range(5):
            ok(d, "create", f"lazy{i}", "--template", "echo", "--no-start")
        assert {agent(d, f"lazy{i}")["state"] for i in range(5)} == {"stopped"}
        assert ok(d, "run", "lazy0", "--input", '"wake"')["output"] == "wake"
        first = agent(d, "lazy0")
        assert first["state"] == "running" and first["desired"] == "stopped"
        assert agent(d, "lazy1")["state"] == "stopped"  # only what is used runs
        d.remember_tree()
        wait_until(lambda: agent(d, "lazy0")["state"] == "stopped", what="idle lazy0 stopped")
        wait_until(lambda: not alive(first["pid"]), what="idle process gone")
        assert "agent.deactivated" in audit_types(d)
        again = ok(d, "run", "lazy0", "--input", '"again"')
        assert again["output"] == "again" and again["pid"] != first["pid"]
        d.remember_tree()
    finally:
        d.stop()
        assert not reap(d)
