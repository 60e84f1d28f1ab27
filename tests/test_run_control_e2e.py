"""Run control through the real daemon and naosctl (issue 16): cancel mid-saga
compensates, runs listed with filters, approval steps that wait across a
kill -9 of naosd, approve / reject / timeout, and who decided in the audit log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import restart
from harness import Naosd, wait_for
from orch_agents import Lab, TrailLab
from test_saga_crash import kill9
from test_saga_e2e import STEPS, make_agents, make_saga, ok, outcome

from naosctl.client import Client
from naosd.errors import InvalidRequest

pytestmark = pytest.mark.e2e
ME = f"uid:{os.getuid()}"


def approval_saga(d: Naosd, name: str = "order", *approval: str) -> None:
    """reserve, approve (a person), charge, ship."""
    ok(d, "saga", "create", name, "--compensation-delay", "0.1")
    for step, agent, undo in STEPS:
        extra = ["--compensate", undo] if undo else []
        ok(d, "saga", "add-step", name, step, "--agent", agent, *extra)
        if step == "reserve":
            ok(d, "saga", "add-step", name, "approve", "--approval", *approval)


def etl(d: Naosd, base: Path, *middle: str) -> TrailLab:
    """Workflow etl: fetch, (``middle``: review's add-step options,) load."""
    lab = TrailLab(base)
    for agent in ("fetcher", "loader"):
        ok(d, "create", agent, "--source", str(lab.handler), *lab.grant, "--config",
           lab.config())
    ok(d, "workflow", "create", "etl")
    ok(d, "workflow", "add-step", "etl", "fetch", "--agent", "fetcher")
    if middle:
        ok(d, "workflow", "add-step", "etl", "review", *middle)
    ok(d, "workflow", "add-step", "etl", "load", "--agent", "loader")
    return lab


def audit_of(d: Naosd, type_: str) -> list[dict]:
    return [r["detail"] for r in ok(d, "audit", "tail", "-n", "5000") if r["type"] == type_]


def status(d: Naosd, kind: str, run_id: str) -> dict:
    return ok(d, kind, "status", run_id)


@pytest.fixture
def lab(daemon: Naosd) -> Lab:
    lab = Lab(daemon.socket.parent)
    make_agents(daemon, lab)
    return lab


def test_cancel_mid_saga_compensates_and_names_who(daemon: Naosd, lab: Lab):
    make_saga(daemon, "order", "--compensation-delay", "0.1")
    lab.set(sleep_do={"charge": 4})  # charge is in flight when the cancel comes
    run_id = ok(daemon, "saga", "run", "order", "--no-wait", "--input", "{}")["run_id"]
    wait_for(lambda: lab.rows("SELECT 1 FROM calls WHERE key = ?", (f"{run_id}:charge:do",)))
    rc, run = outcome(daemon, "saga", "cancel", run_id)
    assert rc == 0 and run["status"] == "cancelled", run
    assert run["error"] == f"cancelled by {ME}"
    # reserve undone; charge was in doubt: its compensation was sent first (and found
    # nothing to undo, or undid it if it had applied meanwhile)
    assert lab.ledger(run_id)[:1] == [("reserve", 0)] and ("reserve", 1) in lab.ledger(run_id)
    undo_calls = lab.rows("SELECT COUNT(*) FROM calls WHERE key = ?", (f"{run_id}:charge:undo",))
    assert undo_calls == [(1,)]
    assert ("ship", 0) not in lab.ledger(run_id)
    (asked,) = [a for a in audit_of(daemon, "saga.cancel_requested") if a["run_id"] == run_id]
    assert asked["by"] == ME and asked["in_doubt"] == ["charge"]
    (done,) = [a for a in audit_of(daemon, "saga.cancelled") if a["run_id"] == run_id]
    assert done["by"] == ME
    again = daemon.ctl("saga", "cancel", run_id)
    assert again.returncode == 1 and "is cancelled: cannot cancel" in again.stderr
    missing = daemon.ctl("saga", "cancel", "s-nope")
    assert missing.returncode == 4 and "no run 's-nope'" in missing.stderr
    wrong = daemon.ctl("workflow", "cancel", run_id)
    assert wrong.returncode == 2 and "is a saga run, not a workflow run" in wrong.stderr
    with Client(daemon.socket) as client, pytest.raises(InvalidRequest,
                                                        match=r"unknown parameter\(s\) by"):
        client.call("approve", run=run_id, by="uid:0")  # who decided is never the client's say


def test_workflow_cancel_and_runs_listed_with_filters(daemon: Naosd, base: Path):
    lab = etl(daemon, base)
    rc, done = outcome(daemon, "workflow", "run", "etl", "--input", "{}")
    assert rc == 0 and done["status"] == "completed"
    lab.set(sleep={"fetch": 5})
    run_id = ok(daemon, "workflow", "run", "etl", "--no-wait", "--input", "{}")["run_id"]
    wait_for(lambda: len(lab.calls("fetch")) == 2)
    rc, run = outcome(daemon, "workflow", "cancel", run_id)
    assert rc == 0 and run["status"] == "cancelled"
    assert [s["status"] for s in run["steps"]] == ["cancelled", "pending"]
    assert lab.calls("load") and len(lab.calls("load")) == 1  # the cancelled run never loads

    listed = ok(daemon, "workflow", "runs", "--status", "cancelled")
    assert [r["run_id"] for r in listed] == [run_id]
    assert [r["run_id"] for r in ok(daemon, "workflow", "runs", "--name", "etl",
                                    "--since", "1h")] == [run_id, done["run_id"]]
    assert ok(daemon, "workflow", "runs", "--name", "other") == []
    assert ok(daemon, "workflow", "runs", "--since", "2999-01-01T00:00:00Z") == []
    assert ok(daemon, "workflow", "runs", "--limit", "1")[0]["run_id"] == run_id
    text = daemon.ctl("workflow", "runs", "--status", "completed")
    assert text.returncode == 0 and done["run_id"] in text.stdout and run_id not in text.stdout
    bad = daemon.ctl("workflow", "runs", "--status", "compensated")  # a saga's status only
    assert bad.returncode == 2 and "must be one of pending, running" in bad.stderr
    bad = daemon.ctl("workflow", "runs", "--since", "yesterday")
    assert bad.returncode == 2 and "since: 'yesterday' is neither a duration" in bad.stderr
    assert daemon.ctl("workflow", "runs").stdout.count("\n") == 2


def test_approval_waits_across_kill9_and_goes_on_when_approved(base: Path,
                                                               daemons: list[Naosd]):
    lab, d = Lab(base), daemons[0]
    make_agents(d, lab)
    approval_saga(d, "order", "--timeout", "3600")
    rc, run = outcome(d, "saga", "run", "order", "--input", '{"order": 7}')
    run_id = run["run_id"]
    assert rc == 1 and run["status"] == "awaiting_approval"  # not completed (yet)
    assert run["awaiting"]["step"] == "approve" and not run["awaiting"]["escalated"]
    text = d.ctl("saga", "status", run_id).stdout
    assert "awaiting approval of approve" in text and f"naosctl approve|reject {run_id}" \
        in text
    waiting = ok(d, "saga", "runs", "--status", "awaiting_approval")
    assert [r["run_id"] for r in waiting] == [run_id]

    kill9(d)
    d = restart(daemons)
    wait_for(lambda: [a for a in audit_of(d, "saga.recovered") if a["run_id"] == run_id],
             timeout=60)
    again = status(d, "saga", run_id)
    assert again["status"] == "awaiting_approval" and again["live"]
    assert again["awaiting"]["due"] == run["awaiting"]["due"]  # the same wait goes on
    wrong = d.ctl("approve", run_id, "--step", "charge")
    assert wrong.returncode == 1 and "awaits approval of step 'approve', not 'charge'" \
        in wrong.stderr

    decided = ok(d, "approve", run_id, "--note", "checked by hand", "--wait", "60")
    assert decided["status"] == "completed", decided
    approve = next(s for s in decided["steps"] if s["name"] == "approve")
    assert approve["decision"]["by"] == ME and approve["decision"]["note"] == \
        "checked by hand"
    assert lab.ledger(run_id) == [("reserve", 0), ("charge", 0), ("ship", 0)]
    (row,) = [a for a in audit_of(d, "saga.approved") if a["run_id"] == run_id]
    assert row["by"] == ME and row["note"] == "checked by hand"
    late = d.ctl("reject", run_id)
    assert late.returncode == 1 and "is completed: no step awaits approval" in late.stderr


def test_reject_compensates_and_a_timeout_rejects(daemon: Naosd, lab: Lab):
    approval_saga(daemon, "order")
    rc, run = outcome(daemon, "saga", "run", "order", "--input", "{}")
    assert rc == 1 and run["status"] == "awaiting_approval"
    decided = ok(daemon, "reject", run["run_id"], "--note", "too dear", "--wait", "60")
    assert decided["status"] == "compensated"
    assert decided["error"] == f"step 'approve' rejected by {ME}: too dear"
    assert lab.ledger(run["run_id"]) == [("reserve", 0), ("reserve", 1)]
    (row,) = [a for a in audit_of(daemon, "saga.rejected") if a["run_id"] == run["run_id"]]
    assert row["by"] == ME and row["note"] == "too dear"

    approval_saga(daemon, "hasty", "--timeout", "1")
    _, run = outcome(daemon, "saga", "run", "hasty", "--input", "{}", "--wait", "60")
    if run["status"] == "awaiting_approval":  # the wait ended there; the timeout ends it
        run = wait_for(lambda: (r := status(daemon, "saga", run["run_id"]))["status"] ==
                       "compensated" and r, timeout=60)
    assert run["status"] == "compensated"
    assert run["error"] == "step 'approve' rejected by timeout: no decision within 1s"
    assert lab.ledger(run["run_id"]) == [("reserve", 0), ("reserve", 1)]


def test_escalate_then_reject_and_a_cancel_while_waiting(daemon: Naosd, lab: Lab):
    approval_saga(daemon, "order", "--timeout", "1", "--on-timeout", "escalate")
    run_id = ok(daemon, "saga", "run", "order", "--no-wait", "--input", "{}")["run_id"]
    wait_for(lambda: [a for a in audit_of(daemon, "saga.approval_escalated")
                      if a["run_id"] == run_id], timeout=60)
    escalated = status(daemon, "saga", run_id)
    if escalated["status"] == "awaiting_approval":  # still within the second wait
        assert escalated["awaiting"]["escalated"] is True
    (alert,) = [a for a in audit_of(daemon, "saga.approval_escalated") if a["run_id"] == run_id]
    assert alert["severity"] == "alert"
    wait_for(lambda: status(daemon, "saga", run_id)["status"] == "compensated", timeout=60)
    assert "no decision within 2s" in status(daemon, "saga", run_id)["error"]

    approval_saga(daemon, "slow", "--timeout", "3600")
    rc, run = outcome(daemon, "saga", "run", "slow", "--input", "{}")
    assert run["status"] == "awaiting_approval"
    rc, cancelled = outcome(daemon, "saga", "cancel", run["run_id"])
    assert rc == 0 and cancelled["status"] == "cancelled"
    assert lab.ledger(run["run_id"]) == [("reserve", 0), ("reserve", 1)]
    gone = daemon.ctl("approve", run["run_id"])
    assert gone.returncode == 1 and "is cancelled" in gone.stderr


def test_workflow_approval_passes_the_input_on(daemon: Naosd, base: Path):
    etl(daemon, base, "--approval")
    bad = daemon.ctl("workflow", "add-step", "etl", "more", "--approval", "--agent", "fetcher")
    assert bad.returncode == 2 and "agent does not apply" in bad.stderr
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", "{}")
    assert rc == 1 and run["status"] == "awaiting_approval"
    decided = ok(daemon, "approve", run["run_id"], "--wait", "60")
    assert decided["status"] == "completed"
    assert decided["steps"][-1]["output"] == {"trail": ["fetch", "load"]}
    rc, run = outcome(daemon, "workflow", "run", "etl", "--input", "{}")
    decided = ok(daemon, "reject", run["run_id"], "--note", "no")
    assert decided["status"] == "failed" and decided["error"] == \
        f"step 'review': rejected by {ME}: no"
    rc, resumed = outcome(daemon, "workflow", "resume", run["run_id"])  # asks again
    assert rc == 1 and resumed["status"] == "awaiting_approval"
    assert json.loads(daemon.ctl("approve", run["run_id"], "--json").stdout)["status"] in (
        "running", "completed")
