"""The pure shaping behind the dashboard's feature views."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from naosd.dashboard.features import pool_view
from naosd.dashboard.runs import (
    RunFilter,
    action_call,
    kinds_with_status,
    run_action_method,
    run_actions,
    run_detail,
    run_filter,
    run_segments,
    run_summary,
    select_runs,
)
from naosd.errors import InvalidRequest, NotFound
from naosd.methods import method_table

METHODS = method_table()


def row(type_: str, step: str | None, ts: str, **detail) -> dict:
    return {"type": type_, "step": step, "ts": ts, "detail": {"step": step, **detail}}


def test_a_compensated_saga_becomes_forward_and_compensation_bars():
    timeline = [
        row("saga.started", None, "t0"),
        row("saga.step_started", "reserve", "t1", attempt=1),
        row("saga.step_succeeded", "reserve", "t2", attempt=1),
        row("saga.step_started", "charge", "t2", attempt=1),
        row("saga.step_retrying", "charge", "t3", attempt=1, error="busy"),
        row("saga.step_started", "charge", "t4", attempt=2),
        row("saga.step_failed", "charge", "t5", attempt=2, error="declined"),
        row("saga.compensating", None, "t5"),
        row("saga.compensation_skipped", "notify", "t5"),
        row("saga.compensation_started", "reserve", "t5", attempt=1),
        row("saga.compensated_step", "reserve", "t6", attempt=1),
        row("saga.compensated", None, "t6"),
    ]
    got = [(s["name"], s["phase"], s["status"], s["started_at"], s["ended_at"], s["attempt"])
           for s in run_segments(timeline)]
    assert got == [
        ("reserve", "forward", "completed", "t1", "t2", 1),
        ("charge", "forward", "failed", "t2", "t3", 1),
        ("charge", "forward", "failed", "t4", "t5", 2),
        ("notify", "compensate", "skipped", "t5", "t5", 0),
        ("reserve", "compensate", "compensated", "t5", "t6", 1),
    ]
    assert run_segments(timeline)[2]["error"] == "declined"


def test_a_step_started_again_after_a_restart_was_interrupted_and_open_ones_run():
    timeline = [
        row("workflow.step_started", "fetch", "t1", attempt=1),
        row("workflow.recovered", None, "t2"),
        row("workflow.step_started", "fetch", "t3", attempt=1),
        row("workflow.step_succeeded", "fetch", "t4"),
        row("workflow.step_started", "load", "t4", attempt=1),
    ]
    got = [(s["name"], s["status"], s["ended_at"]) for s in run_segments(timeline)]
    assert got == [("fetch", "interrupted", "t3"), ("fetch", "completed", "t4"),
                   ("load", "running", None)]


def test_a_close_without_a_start_is_a_mark_not_an_error():
    got = run_segments([row("workflow.step_skipped", "b", "t1", error="x")])
    assert [(s["status"], s["started_at"], s["ended_at"]) for s in got] == \
        [("skipped", "t1", "t1")]


def test_summary_and_detail_carry_outputs_and_end_only_when_final():
    view = {"kind": "saga", "run_id": "s-1", "name": "order", "status": "running",
            "created_at": "c", "updated_at": "u", "input": {"order": 1},
            "steps": [{"name": "a", "status": "succeeded", "output": {"ok": 1}},
                      {"name": "b", "status": "started", "output": None}],
            "timeline": [row("saga.step_started", "a", "t1"),
                         row("saga.step_succeeded", "a", "t2"),
                         row("saga.step_started", "b", "t2")]}
    summary = run_summary(view)
    assert (summary["steps_done"], summary["steps_total"], summary["ended_at"]) == (1, 2, None)
    assert run_summary({**view, "status": "completed"})["ended_at"] == "u"
    detail = run_detail(view)
    assert detail["steps"][0]["output"] == {"ok": 1} and "output" not in detail["steps"][1]
    assert detail["input"] == {"order": 1}


def test_pool_view_renames_for_the_page():
    got = pool_view({"name": "p", "merge": "all", "members": [{"name": "a", "busy": 2}],
                     "queued": 3, "completed": 7, "throughput_per_s": 1.5})
    assert got["members"] == [{"agent": "a", "busy": 2, "state": "unknown"}]
    assert (got["queue_depth"], got["done"], got["failed"]) == (3, 7, 0)
    assert got["drained"] is False


def test_pool_members_carry_their_agents_states_and_fan_outs_count_as_done():
    status = {"name": "p", "members": [{"name": "a", "busy": 1}, {"name": "b"}],
              "completed": 2, "failed": 1, "accepting": False}
    got = pool_view(status, {"a": "running", "b": "stopped"},
                    {"completed": 3, "partial": 1, "failed": 2, "running": 1})
    assert [(m["agent"], m["state"], m["busy"]) for m in got["members"]] == \
        [("a", "running", 1), ("b", "stopped", 0)]
    assert (got["done"], got["failed"], got["tasks_done"]) == (2 + 3 + 1, 1 + 2, 2)
    assert got["fanouts"] == {"done": 4, "partial": 1, "failed": 2, "running": 1}
    assert got["drained"] is True and got["accepting"] is False


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_run_filter_reads_kind_status_name_since_and_limit():
    f = run_filter({"kind": "saga", "status": "compensated", "name": " order ",
                    "since": "2h", "limit": "5000"}, NOW)
    assert f == RunFilter(kinds=("saga",), status="compensated", name="order",
                          since="2025-03-01T10:00:00.000000Z", limit=1000)
    assert run_filter({}, NOW) == RunFilter()
    assert run_filter({"since": "2025-02-01T00:00:00Z"}, NOW).since == \
        "2025-02-01T00:00:00.000000Z"


@pytest.mark.parametrize(("query", "named"), [
    ({"kind": "pool"}, "kind: 'pool'"),
    ({"limit": "lots"}, "limit: 'lots'"),
    ({"since": "yesterday"}, "since: 'yesterday'"),
    ({"name": "x" * 65}, "name: longer than 64"),
    ({"status": "s" * 33}, "status: longer than 32"),
])
def test_a_bad_run_filter_is_refused_by_name(query, named):
    with pytest.raises(InvalidRequest, match=named):
        run_filter(query, NOW)


def test_select_runs_keeps_the_newest_since_the_cutoff():
    runs = [{"id": i, "created_at": f"2025-03-01T0{i}:00:00.000000Z"} for i in range(5)]
    f = RunFilter(since="2025-03-01T02:00:00.000000Z", limit=2)
    assert [r["id"] for r in select_runs(runs, f)] == [4, 3]
    assert [r["id"] for r in select_runs(runs, RunFilter(limit=10))] == [4, 3, 2, 1, 0]


def test_summary_carries_the_resolution_note():
    view = {"kind": "saga", "run_id": "s-1", "name": "order", "status": "compensation_failed",
            "resolution": "refunded by hand", "steps": []}
    assert run_summary(view)["resolution"] == "refunded by hand"
    assert run_summary({**view, "resolution": ""})["resolution"] == ""


def test_run_actions_offer_only_the_methods_this_build_has():
    offered = run_actions(METHODS)
    assert set(offered["saga"]) == {"retry_compensation", "resolve", "cancel", "approve",
                                     "reject"}
    assert offered["saga"]["resolve"]["method"] == "saga.resolve"
    assert offered["saga"]["resolve"]["params"]["note"]["required"] is True
    assert set(offered["workflow"]) == {"cancel", "approve", "reject"}
    assert offered["workflow"]["cancel"]["method"] == "workflow.cancel"
    assert offered["saga"]["approve"]["method"] == "approve"  # one method for both kinds
    assert offered["saga"]["reject"]["params"]["note"]["required"] is False
    # a build without them offers neither
    fewer = {k: v for k, v in METHODS.items() if k not in ("saga.cancel", "approve")}
    assert run_action_method("saga", "cancel", fewer) is None
    assert run_action_method("saga", "approve", fewer) is None
    assert run_action_method("saga", "explode", METHODS) is None
    assert set(run_actions(fewer)["workflow"]) == {"cancel", "reject"}


def test_an_action_route_names_its_method_or_is_not_found():
    assert action_call({"kind": "saga", "run": "s-1", "verb": "resolve"}, METHODS) == \
        ("saga.resolve", {"run": "s-1"})
    for kind, verb in (("saga", "explode"), ("workflow", "retry_compensation"),
                       ("pool", "resolve")):
        with pytest.raises(NotFound):
            action_call({"kind": kind, "run": "r", "verb": verb}, METHODS)


def test_an_approval_is_a_segment_of_its_own_closed_by_the_decision():
    timeline = [
        row("saga.step_started", "reserve", "t1", attempt=1),
        row("saga.step_succeeded", "reserve", "t2", attempt=1),
        row("saga.approval_requested", "approve", "t2", attempt=1),
        row("saga.approval_escalated", "approve", "t3", attempt=2),
        row("saga.approved", "approve", "t4", by="uid:1000", note="fine"),
        row("saga.step_started", "charge", "t4", attempt=1),
    ]
    segments = run_segments(timeline)
    assert [(s["name"], s["phase"], s["status"]) for s in segments] == [
        ("reserve", "forward", "completed"), ("approve", "approval", "approved"),
        ("charge", "forward", "running")]
    assert (segments[1]["by"], segments[1]["note"], segments[1]["ended_at"]) == \
        ("uid:1000", "fine", "t4")
    waiting = run_segments(timeline[:3])[-1]
    assert (waiting["status"], waiting["ended_at"]) == ("awaiting_approval", None)
    rejected = run_segments([*timeline[:3], row("saga.rejected", "approve", "t5", by="timeout")])
    assert rejected[-1]["status"] == "rejected"


@pytest.mark.parametrize(("kind", "ends"), [("cancel_requested", "cancelled"),
                                            ("cancelled", "cancelled"), ("timed_out", "failed")])
def test_a_cancel_or_the_saga_timeout_ends_the_steps_still_open(kind: str, ends: str):
    timeline = [row("workflow.step_started", "fetch", "t1", attempt=1),
                row("workflow.approval_requested", "review", "t1", attempt=1),
                row(f"workflow.{kind}", None, "t2", by="uid:1")]
    assert [(s["status"], s["ended_at"]) for s in run_segments(timeline)] == [(ends, "t2")] * 2


def test_a_waiting_run_carries_what_it_waits_for():
    awaiting = {"step": "approve", "due": "2026-01-02T00:00:00.000000Z", "escalated": False,
                "on_timeout": "reject"}
    view = {"kind": "saga", "run_id": "s-1", "name": "order", "status": "awaiting_approval",
            "steps": [], "awaiting": awaiting}
    assert run_summary(view)["awaiting"] == awaiting
    assert run_summary(view)["ended_at"] is None  # waiting is not over
    cancelled = {**view, "awaiting": None, "status": "cancelled", "updated_at": "t9"}
    assert run_summary(cancelled)["ended_at"] == "t9"  # a cancelled run has ended


def test_a_status_filter_asks_only_the_kinds_that_have_it():
    assert kinds_with_status(RunFilter(status="compensated"), METHODS) == ("saga",)
    assert kinds_with_status(RunFilter(status="awaiting_approval"), METHODS) == \
        ("saga", "workflow")
    assert kinds_with_status(RunFilter(), METHODS) == ("saga", "workflow")
    with pytest.raises(InvalidRequest, match="no workflow run is ever 'compensated'"):
        kinds_with_status(RunFilter(kinds=("workflow",), status="compensated"), METHODS)
    with pytest.raises(InvalidRequest, match="status: no saga or workflow run is ever 'nope'"):
        kinds_with_status(RunFilter(status="nope"), METHODS)
