"""The pure shaping behind the dashboard's feature views."""

from __future__ import annotations

from naosd.dashboard.features import pool_view, run_detail, run_segments, run_summary


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
    assert got["members"] == [{"agent": "a", "busy": 2}]
    assert (got["queue_depth"], got["done"], got["failed"]) == (3, 7, 0)
