"""The pure audit row -> metric updates mapping behind /metrics: a row of
each type naosd writes (details as the daemon writes them), step durations
across rows, unknown types and malformed rows."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from naosd.dashboard.metrics_fold import (
    COUNTER,
    FAMILIES,
    MAX_OPEN_RUNS,
    OpenSteps,
    Update,
    fold,
    label,
)
from naosd.storage.audit import AuditRow

T0 = "2026-01-02T03:04:05.000000Z"


def row(type_: str, agent: str | None = None, ts: str = T0, **detail: Any) -> AuditRow:
    return AuditRow(1, ts, "naosd", agent, type_, detail, "", "")


def updates(r: AuditRow) -> list[Update]:
    return fold(OpenSteps(), r)


def up(name: str, *labels: str, value: float = 1.0) -> Update:
    return Update(name, labels, value)


ROWS = [
    pytest.param(row("agent.run", "echo", ok=True, ms=2.5, error=None, idempotency_key=None,
                     cost_micro_usd=0),
                 [up("naos_agent_runs_total", "echo", "ok"),
                  up("naos_agent_run_duration_seconds", "echo", value=0.0025)], id="run-ok"),
    pytest.param(row("agent.run", "crashy", ok=False, ms=0.0, error="agent_crashed"),
                 [up("naos_agent_runs_total", "crashy", "agent_crashed")], id="run-crashed"),
    pytest.param(row("agent.run", "slow", ok=False, ms=None, wall_ms=60000.0, error="timeout"),
                 [up("naos_agent_runs_total", "slow", "timeout")], id="run-timeout"),
    pytest.param(row("agent.crashed", "crashy", name="crashy", supervisor="agents",
                     reason="handler raised RuntimeError: boom"),
                 [up("naos_child_crashes_total", "agent", "crashy", "agents")], id="crashed"),
    pytest.param(row("agent.restarted", "crashy", name="crashy", supervisor="agents",
                     restarts=1, delay_s=0.0, cause="crashy"),
                 [up("naos_child_restarts_total", "agent", "crashy", "agents"),
                  up("naos_child_crashes_total", "agent", "crashy", "agents")],
                 id="restarted"),
    pytest.param(row("agent.restarted", "b", name="b", supervisor="team",
                     restarts=1, delay_s=0.0, cause="a"),
                 [up("naos_child_restarts_total", "agent", "b", "team")],
                 id="restarted-with-a-sibling"),
    pytest.param(row("agent.failed", "loopy", name="loopy", supervisor="agents",
                     reason="x", crashes=5, restarts=5),
                 [up("naos_child_crashes_total", "agent", "loopy", "agents"),
                  up("naos_crash_loops_total", "agents", "loopy")], id="failed"),
    pytest.param(row("supervisor.restarted", child="team", reason="gave up"),
                 [up("naos_child_restarts_total", "supervisor", "team", "root")],
                 id="root-restarts-a-supervisor"),
    pytest.param(row("supervisor.crashed", name="inner", supervisor="outer", reason="x"),
                 [up("naos_child_crashes_total", "supervisor", "inner", "outer")],
                 id="supervisor-crashed"),
    pytest.param(row("supervisor.gave_up", supervisor="team", child="crashy",
                     reason="more than 3 restarts in 5s"),
                 [up("naos_crash_loops_total", "team", "crashy")], id="crash-loop"),
    pytest.param(row("broker.execute", cost_micro=1, handler="sha256", reserved_micro=1,
                     route="skill", status="ok", task_id="ed50", trust="no_agent"),
                 [up("naos_spend_micro_usd_total", "", "skill", value=1),
                  up("naos_broker_tasks_total", "skill", "sha256", "ok")], id="broker-ok"),
    pytest.param(row("broker.execute", "payer", cost_micro=4100, handler="csv-total",
                     route="wasm", status="ok", fuel_used=1234, task_id="t"),
                 [up("naos_spend_micro_usd_total", "payer", "wasm", value=4100),
                  up("naos_broker_tasks_total", "wasm", "csv-total", "ok"),
                  up("naos_wasm_fuel_total", "skill", "csv-total", value=1234)],
                 id="broker-wasm"),
    pytest.param(row("broker.execute", "payer", cost_micro=0, handler="gpt-4o-mini",
                     route="llm", status="failed", error="llm_unavailable", task_id="t"),
                 [up("naos_broker_tasks_total", "llm", "gpt-4o-mini", "llm_unavailable")],
                 id="broker-failed-nothing-spent"),
    pytest.param(row("broker.denied", error="no_route", handler=None, route=None,
                     reason="no route for task", task_id="t"),
                 [up("naos_broker_tasks_total", "none", "none", "no_route")], id="denied"),
    pytest.param(row("broker.denied", "payer", error="budget_exceeded", handler="sha256",
                     route="skill", reason="...", task_id="t"),
                 [up("naos_broker_tasks_total", "skill", "sha256", "budget_exceeded")],
                 id="denied-by-budget"),
    pytest.param(row("llm.chat", "writer", route="llm", handler="m", cost_micro=70,
                     status="ok"),
                 [up("naos_spend_micro_usd_total", "writer", "llm", value=70)],
                 id="agent-llm-call"),
    pytest.param(row("trust.allow", allow=True, code="no_agent", cost_micro=1, task_id="t"),
                 [up("naos_trust_decisions_total", "allow", "no_agent")], id="trust-allow"),
    pytest.param(row("trust.deny", "bad", allow=False, code="revoked", cost_micro=1),
                 [up("naos_trust_decisions_total", "deny", "revoked")], id="trust-deny"),
    pytest.param(row("wasm.run", cost_micro_usd=1, exit_code=0, fuel=69, wall_ms=0.75),
                 [up("naos_wasm_runs_total", "ok"),
                  up("naos_wasm_run_duration_seconds", value=0.00075),
                  up("naos_wasm_fuel_total", "run", "", value=69)], id="wasm-run"),
    pytest.param(row("wasm.run", cost_micro_usd=1, exit_code=3, fuel=10, wall_ms=2.0),
                 [up("naos_wasm_runs_total", "nonzero_exit"),
                  up("naos_wasm_run_duration_seconds", value=0.002),
                  up("naos_wasm_fuel_total", "run", "", value=10)], id="wasm-exit-3"),
    pytest.param(row("pool.run", cancelled=[], failed=["inv"], merge="all", ms=65.652,
                     pool="p", run_id="p-509e", status="partial"),
                 [up("naos_pool_fanouts_total", "p", "partial"),
                  up("naos_pool_fanout_duration_seconds", "p", value=0.065652)],
                 id="pool-fanout"),
    pytest.param(row("pool.run_failed", pool="p", run_id="p-1", status="failed",
                     reason="naosd stopped during the fan-out"),
                 [up("naos_pool_fanouts_total", "p", "failed")], id="pool-fanout-failed"),
    pytest.param(row("saga.started", run_id="s-1", saga="order"),
                 [up("naos_orchestration_runs_started_total", "saga", "order")],
                 id="saga-started"),
    pytest.param(row("saga.compensated", run_id="s-1", saga="order", failed=[], reason="x"),
                 [up("naos_orchestration_runs_finished_total", "saga", "order",
                     "compensated")], id="saga-compensated"),
    pytest.param(row("workflow.failed", run_id="w-1", workflow="wf", step="s1", error="x"),
                 [up("naos_orchestration_runs_finished_total", "workflow", "wf", "failed")],
                 id="workflow-failed"),
    pytest.param(row("workflow.cancelled", run_id="w-1", workflow="wf", by="uid:1",
                     in_doubt=[]),
                 [up("naos_orchestration_runs_finished_total", "workflow", "wf", "cancelled")],
                 id="workflow-cancelled"),
    pytest.param(row("saga.step_retrying", run_id="s-1", saga="order", step="charge",
                     attempt=1, error="declined: no", delay_s=1.0),
                 [up("naos_orchestration_steps_total", "saga", "order", "charge", "retrying")],
                 id="step-retrying"),
    pytest.param(row("workflow.step_skipped", run_id="w-1", workflow="wf", step="s2",
                     attempt=1, error="x"),
                 [up("naos_orchestration_steps_total", "workflow", "wf", "s2", "skipped")],
                 id="step-skipped"),
    pytest.param(row("saga.compensated_step", run_id="s-1", saga="order", step="reserve",
                     attempt=1),
                 [up("naos_saga_compensations_total", "order", "reserve", "compensated")],
                 id="compensated-step"),
    pytest.param(row("saga.compensation_failed_step", run_id="s-1", saga="order",
                     step="reserve", attempt=3, error="undo_broken: no"),
                 [up("naos_saga_compensations_total", "order", "reserve", "failed")],
                 id="compensation-failed"),
]


@pytest.mark.parametrize(("r", "expected"), ROWS)
def test_each_row_type_maps_to_its_updates(r: AuditRow, expected: list[Update]):
    assert updates(r) == expected


@pytest.mark.parametrize("r", [
    row("daemon.start", pid=1, version="0.1.0"),
    row("agent.started", "echo", name="echo", pid=9, restarts=0, supervisor="agents"),
    row("agent.created", "echo", source="echo"),
    row("saga.defined", name="order", spec={}),
    row("saga.step_acknowledged", run_id="s-1", saga="order", step="a", attempt=1),
    row("pool.task_cancelled", pool="p", task_id="abc"),
    row("cost.alert", scope="*", level=80),
    row("llm.complete", model="m", input_tokens=3),
    row("something.new", x=1),
    row("", x=1),
    row("agent", x=1),
], ids=lambda r: r.type or "empty")
def test_rows_of_other_types_give_nothing(r: AuditRow):
    steps = OpenSteps()
    assert fold(steps, r) == [] and len(steps) == 0


def test_a_step_is_timed_from_its_start_to_its_success():
    steps = OpenSteps()
    start = row("saga.step_started", ts="2026-01-02T03:04:05.000000Z", run_id="s-1",
                saga="order", step="charge", attempt=1)
    assert fold(steps, start) == [] and len(steps) == 1
    done = row("saga.step_succeeded", ts="2026-01-02T03:04:06.250000Z", run_id="s-1",
               saga="order", step="charge", attempt=1)
    assert fold(steps, done) == [
        up("naos_orchestration_steps_total", "saga", "order", "charge", "succeeded"),
        up("naos_orchestration_step_duration_seconds", "saga", "order", "charge", value=1.25)]
    assert len(steps) == 0


def test_a_failed_attempt_is_counted_not_timed_and_the_retry_is_timed_alone():
    steps = OpenSteps()
    base = {"run_id": "w-1", "workflow": "wf", "step": "s1"}
    fold(steps, row("workflow.step_started", ts="2026-01-02T03:00:00Z", attempt=1, **base))
    assert fold(steps, row("workflow.step_retrying", ts="2026-01-02T03:00:09Z", attempt=1,
                           **base)) == [
        up("naos_orchestration_steps_total", "workflow", "wf", "s1", "retrying")]
    fold(steps, row("workflow.step_started", ts="2026-01-02T03:00:10Z", attempt=2, **base))
    out = fold(steps, row("workflow.step_succeeded", ts="2026-01-02T03:00:10.5Z", attempt=2,
                          **base))
    assert out[-1] == up("naos_orchestration_step_duration_seconds", "workflow", "wf", "s1",
                         value=0.5)
    assert len(steps) == 0


def test_a_step_that_started_before_naosd_counts_without_a_duration():
    out = updates(row("saga.step_succeeded", run_id="s-9", saga="order", step="a", attempt=1))
    assert out == [up("naos_orchestration_steps_total", "saga", "order", "a", "succeeded")]


def test_a_run_that_ends_or_times_out_forgets_its_open_steps():
    steps = OpenSteps()
    for run, step in (("s-1", "a"), ("s-1", "b"), ("s-2", "a")):
        fold(steps, row("saga.step_started", run_id=run, saga="order", step=step, attempt=1))
    assert fold(steps, row("saga.timed_out", run_id="s-1", saga="order", timeout_s=1)) == []
    assert steps.runs() == [("saga", "s-2")]
    assert fold(steps, row("saga.compensation_failed", run_id="s-2", saga="order")) == [
        up("naos_orchestration_runs_finished_total", "saga", "order", "compensation_failed")]
    assert len(steps) == 0


def test_open_steps_are_bounded_the_oldest_run_forgotten():
    steps = OpenSteps()
    for i in range(MAX_OPEN_RUNS + 3):
        fold(steps, row("workflow.step_started", run_id=f"w-{i}", workflow="wf", step="s",
                        attempt=1))
    fold(steps, row("workflow.step_started", run_id="w-3", workflow="wf", step="t",
                    attempt=1))  # w-3 is now the newest run
    runs = steps.runs()
    assert len(runs) == MAX_OPEN_RUNS and ("workflow", "w-2") not in runs
    assert runs[0] == ("workflow", "w-4") and runs[-1] == ("workflow", "w-3")


def test_labels_are_bounded_names_never_free_text():
    assert label("csv-total") == "csv-total" and label("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert label(None) == "" and label(None, "none") == "none"
    for bad in ("has space", "x" * 65, "", 7, ["a"], "quote\"", "new\nline"):
        assert label(bad) == "other"
    out = updates(row("agent.run", "echo", ok=False, error="handler said: no way"))
    assert out == [up("naos_agent_runs_total", "echo", "other")]


@pytest.mark.parametrize("code", ["my_own_code", "x1", "agent-crashed"])
def test_error_codes_outside_naos_table_are_other(code: str):
    """Only codes naos defines become labels: a code that varied per run
    (whatever wrote it) would grow a series per run."""
    assert updates(row("agent.run", "echo", ok=False, error=code)) == [
        up("naos_agent_runs_total", "echo", "other")]
    assert updates(row("broker.denied", route="skill", handler="sha256", error=code)) == [
        up("naos_broker_tasks_total", "skill", "sha256", "other")]


@pytest.mark.parametrize("detail", [
    {"ok": True, "ms": "12"}, {"ok": True, "ms": -1}, {"ok": True, "ms": float("nan")},
    {"ok": True, "ms": float("inf")}, {"ok": True, "ms": True}, {"ok": "yes", "ms": 3},
    {"ok": True, "ms": 10**400},
])
def test_a_run_without_a_usable_time_is_counted_not_observed(detail: dict[str, Any]):
    out = updates(row("agent.run", "echo", **detail))
    assert [u.name for u in out] == ["naos_agent_runs_total"]


def test_no_spend_update_for_a_non_number_cost():
    out = updates(row("broker.execute", route="skill", handler="sha256", status="ok",
                      cost_micro="1"))
    assert out == [up("naos_broker_tasks_total", "skill", "sha256", "ok")]


def test_every_family_is_named_by_the_conventions():
    for name, family in FAMILIES.items():
        assert name.startswith("naos_") and name == family.name
        assert name.endswith("_total") == (family.kind == COUNTER), name
        if family.kind != COUNTER:
            assert name.endswith("_seconds"), name
        assert not {"run_id", "task_id", "id"} & set(family.labels), name


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats()
    | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=4)
TYPES = st.sampled_from(sorted({*FAMILIES, "agent.run", "agent.crashed", "supervisor.gave_up",
                                "broker.execute", "broker.denied", "trust.deny", "wasm.run",
                                "pool.run", "saga.step_started", "saga.step_succeeded",
                                "workflow.completed", "saga.started", "x.y"})) | st.text()
KEYS = st.sampled_from(["ok", "ms", "error", "name", "child", "supervisor", "route",
                        "handler", "status", "cost_micro", "fuel_used", "code", "exit_code",
                        "fuel", "wall_ms", "pool", "run_id", "saga", "workflow", "step",
                        "attempt"])


@settings(max_examples=60)
@given(types=st.lists(TYPES, min_size=1, max_size=6),
       details=st.lists(st.dictionaries(KEYS, JSON, max_size=8), min_size=6, max_size=6),
       agent=st.none() | st.text(max_size=70),
       ts=st.text(max_size=30) | st.just(T0) | st.just("0001-01-01T00:00:00"))
def test_any_row_folds_without_raising_into_valid_updates(types, details, agent, ts):
    steps = OpenSteps()
    for type_, detail in zip(types, details, strict=False):
        for u in fold(steps, AuditRow(1, ts, "x", agent, type_, detail, "", "")):
            family = FAMILIES[u.name]
            assert len(u.labels) == len(family.labels)
            assert all(isinstance(v, str) and len(v) <= 64 for v in u.labels)
            assert math.isfinite(u.value) and u.value >= 0
