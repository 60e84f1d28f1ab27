"""Durable workflows against the real daemon: chaining, skip, retry, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from harness import Naosd, reap, start_naosd
from orch_agents import TrailLab
from test_agents_e2e import wait_until
from test_saga_crash import kill9
from test_saga_e2e import ok, outcome

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab(daemon: Naosd) -> TrailLab:
    lab = TrailLab(daemon.socket.parent)
    ok(daemon, "create", "trail", "--source", str(lab.handler), *lab.grant,
       "--config", lab.config())
    return lab


def make(d: Naosd, name: str, *create: str, middle: tuple[str, ...] = ()) -> None:
    ok(d, "workflow", "create", name, *create)
    ok(d, "workflow", "add-step", name, "fetch", "--agent", "trail")
    ok(d, "workflow", "add-step", name, "clean", "--agent", "trail", *middle)
    ok(d, "workflow", "add-step", name, "load", "--agent", "trail")


def test_each_output_is_the_next_input(daemon: Naosd, lab: TrailLab):
    make(daemon, "etl")
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", '{"trail": ["start"]}')
    assert rc == 0 and run["status"] == "completed"
    assert run["steps"][-1]["output"] == {"trail": ["start", "fetch", "clean", "load"]}
    assert [json.loads(str(i)) for _, _, i in lab.calls("load")] == [
        {"trail": ["start", "fetch", "clean"]}]
    hist = ok(daemon, "workflow", "history", run["run_id"])
    assert [t["type"] for t in hist["timeline"]][-1] == "workflow.completed"


def test_skip_passes_the_last_good_output(daemon: Naosd, lab: TrailLab):
    make(daemon, "etl", "--on-error", "skip")
    lab.set(fail=["clean"])
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", '{"trail": []}')
    assert rc == 0 and run["status"] == "completed"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "skipped", "succeeded"]
    assert run["steps"][-1]["output"] == {"trail": ["fetch", "load"]}


def test_step_level_retry_then_success(daemon: Naosd, lab: TrailLab):
    make(daemon, "etl", middle=("--on-error", "retry", "--retries", "3", "--retry-delay", "0"))
    lab.set(fail_attempts={"clean": 2})
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", "{}")
    assert rc == 0 and run["status"] == "completed"
    assert [a for a, _, _ in lab.calls("clean")] == [1, 2, 3]
    assert len({k for _, k, _ in lab.calls("clean")}) == 1  # one key across retries
    lab.set(fail_attempts={"clean": 9})
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", "{}")
    assert rc == 1 and run["status"] == "failed" and "flaky" in run["error"]


def test_stop_then_resume_from_the_failed_step(daemon: Naosd, lab: TrailLab):
    make(daemon, "etl")
    lab.set(fail=["clean"])
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", '{"trail": []}')
    assert rc == 1 and run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "failed", "pending"]
    lab.set()
    rc, resumed = outcome(daemon, "workflow", "resume", run["run_id"])
    assert rc == 0 and resumed["status"] == "completed"
    assert resumed["steps"][-1]["output"] == {"trail": ["fetch", "clean", "load"]}
    assert len(lab.calls("fetch")) == 1  # the finished step did not run again
    keys = [k for _, k, _ in lab.calls("clean")]
    assert len(keys) == 2 and keys[0] != keys[1]  # a resumed step really runs again
    again = daemon.ctl("workflow", "resume", run["run_id"])
    assert again.returncode != 0 and "nothing to resume" in again.stderr
    assert daemon.ctl("saga", "status", run["run_id"]).returncode != 0


def test_kill9_mid_workflow_resumes_with_the_same_keys(base: Path):
    lab = TrailLab(base)
    lab.set(sleep={"clean": 0.3})
    d = start_naosd(base)
    daemons = [d]
    try:
        ok(d, "create", "trail", "--source", str(lab.handler), *lab.grant, "--config", lab.config())
        make(d, "etl")
        runs = [ok(d, "workflow", "run", "etl", "--no-wait", "--input",
                   json.dumps({"trail": [i]}))["run_id"] for i in range(5)]
        wait_until(lambda: lab.calls("clean"), what="a clean step in flight")
        kill9(d)
        d = start_naosd(base, state_dir=d.state_dir)
        daemons.append(d)
        for i, run_id in enumerate(runs):
            run = ok(d, "workflow", "status", run_id)
            deadline = time.monotonic() + 60
            while run["status"] != "completed" and time.monotonic() < deadline:
                time.sleep(0.1)
                run = ok(d, "workflow", "status", run_id)
            assert run["steps"][-1]["output"] == {"trail": [i, "fetch", "clean", "load"]}
        for step in ("fetch", "clean", "load"):
            by_run: dict[str, set[str]] = {}
            for _, key, _ in lab.calls(step):
                by_run.setdefault(str(key).split(":")[0], set()).add(str(key))
            assert all(len(keys) == 1 for keys in by_run.values()), by_run
        assert "workflow.recovered" in [r["type"] for r in ok(d, "audit", "tail", "-n", "5000")]
    finally:
        d.stop()
        assert not [p for one in daemons for p in reap(one)]
