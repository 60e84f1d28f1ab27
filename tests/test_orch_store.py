"""naosd.storage.runs on a real SQLite file: a transition is one transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from naosd.errors import AuditError, Conflict, NotFound
from naosd.storage import runs as orch_store
from naosd.storage.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head")
    try:
        yield s
    finally:
        s.close()


def record(run_id: str, status: str, **extra: object) -> dict:
    return {"run_id": run_id, "status": status, "steps": [], **extra}


def test_runs_timeline_and_audit_are_written_together(store: Store):
    orch_store.create_def(store, "saga", "order", {"name": "order", "steps": []})
    with pytest.raises(Conflict):
        orch_store.create_def(store, "saga", "order", {"name": "order", "steps": []})
    orch_store.insert_run(store, "saga", "order", record("r1", "pending"))
    with pytest.raises(Conflict):
        orch_store.insert_run(store, "saga", "order", record("r1", "pending"))
    before = store.audit_head()
    orch_store.save_run(store, "r1", record("r1", "running", n=1),
                        [("saga.started", {"run_id": "r1"}),
                         ("saga.step_started", {"run_id": "r1", "step": "a"})])
    run = orch_store.get_run(store, "r1")
    assert run["status"] == "running" and run["record"]["n"] == 1
    assert [(t["type"], t["step"]) for t in orch_store.timeline(store, "r1")] == [
        ("saga.started", None), ("saga.step_started", "a")]
    head = store.audit_head()
    assert before is not None and head is not None and head.seq == before.seq + 2
    assert [r["run_id"] for r in orch_store.unfinished_runs(store, "saga", ("completed",))] == [
        "r1"]
    orch_store.save_run(store, "r1", record("r1", "completed"), [])
    assert orch_store.unfinished_runs(store, "saga", ("completed",)) == []
    assert [r["run_id"] for r in orch_store.list_runs(store, "saga", status="completed")] == [
        "r1"]
    assert orch_store.list_runs(store, "workflow") == []
    with pytest.raises(NotFound):
        orch_store.get_run(store, "nope")


def test_a_failed_audit_rolls_the_transition_back(store: Store):
    orch_store.insert_run(store, "saga", "order", record("r2", "pending"))
    with pytest.raises(AuditError):  # a detail that cannot be encoded fails the audit
        orch_store.save_run(store, "r2", record("r2", "running"),
                            [("saga.started", {"run_id": "r2", "bad": object()})])
    assert orch_store.get_run(store, "r2")["status"] == "pending"
    assert orch_store.timeline(store, "r2") == []
