"""naosd.storage.schedules on a real SQLite file: a firing and the run it
starts are one transaction; every change of a schedule is audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from naosd.errors import Conflict, InvalidRequest, NotFound
from naosd.storage import runs as orch_store
from naosd.storage import schedules as sched_store
from naosd.storage.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head")
    try:
        orch_store.create_def(s, "saga", "order", {"name": "order", "steps": []})
        yield s
    finally:
        s.close()


def spec(name: str = "nightly", **kw: object) -> dict:
    return {"name": name, "target_kind": "saga", "target": "order", "input": {"n": 1},
            "cron": "0 0 * * *", "every_s": None, "missed": "skip", "timeout_s": 60.0} | kw


def types(store: Store) -> list[str]:
    return [r.type for r in store.audit_tail(100)]


def test_add_list_remove_with_who(store: Store):
    row = sched_store.add(store, spec(), 1000.0, "uid:7")
    assert row["next_due"] == 1000.0 and row["fired"] == 0 and row["in_flight"] == []
    with pytest.raises(Conflict, match="already exists"):
        sched_store.add(store, spec(), 1000.0, "uid:7")
    with pytest.raises(NotFound, match="no saga named 'gone'"):
        sched_store.add(store, spec("b", target="gone"), 1000.0, "uid:7")
    with pytest.raises(NotFound, match="no agent named 'pinger'"):
        sched_store.add(store, spec("c", target_kind="agent", target="pinger"), 1.0, "uid:7")
    with pytest.raises(InvalidRequest, match="cannot be stored as JSON"):
        sched_store.add(store, spec("d", input=object()), 1.0, "uid:7")
    assert [s["name"] for s in sched_store.list_all(store)] == ["nightly"]
    sched_store.remove(store, "nightly", "uid:8")
    with pytest.raises(NotFound, match="no schedule named 'nightly'"):
        sched_store.remove(store, "nightly", "uid:8")
    added, removed = (r for r in store.audit_tail(100)
                      if r.type in ("schedule.added", "schedule.removed"))
    assert added.detail["by"] == "uid:7" and removed.detail["by"] == "uid:8"


def test_a_firing_and_its_run_are_written_together_or_not_at_all(store: Store):
    sched_store.add(store, spec(), 1000.0, "uid:7")

    def fire(slot: float, after: float):
        def also(tx, run_id):
            sched_store.fired(tx, "nightly", slot, after, run=run_id, detail={"slot": "x"})
        return also

    orch_store.insert_run(store, "saga", "order", {"run_id": "r1", "status": "pending",
                                                   "steps": []}, fire(1000.0, 2000.0))
    row = sched_store.get(store, "nightly")
    assert (row["last_slot"], row["next_due"], row["last_run"], row["fired"]) == \
        (1000.0, 2000.0, "r1", 1)
    sched_store.remove(store, "nightly", "uid:7")
    with pytest.raises(NotFound, match="schedule 'nightly' was removed"):
        orch_store.insert_run(store, "saga", "order", {"run_id": "r2", "status": "pending",
                                                       "steps": []}, fire(2000.0, 3000.0))
    with pytest.raises(NotFound):  # the run went with the firing
        orch_store.get_run(store, "r2")


def test_agent_firings_stay_in_flight_until_answered(store: Store):
    with store.transaction() as tx:  # an agent's row is all a schedule needs of it
        tx.execute("INSERT INTO agents(name, source_kind, source, created_at) "
                   "VALUES ('pinger', 'template', 'echo', '2026-01-01T00:00:00Z')")
    sched_store.add(store, spec("ping", target_kind="agent", target="pinger"), 10.0, "uid:7")
    for slot in (10.0, 20.0):
        with store.transaction() as tx:
            sched_store.fired(tx, "ping", slot, slot + 10, run=f"k{slot:g}",
                              in_flight={"key": f"k{slot:g}", "slot": slot}, detail={})
    assert [f["key"] for f in sched_store.get(store, "ping")["in_flight"]] == ["k10", "k20"]
    sched_store.answered(store, "ping", "k10", "")
    sched_store.answered(store, "ping", "k20", "agent_crashed: boom")
    row = sched_store.get(store, "ping")
    assert row["in_flight"] == [] and row["last_error"] == "agent_crashed: boom"
    sched_store.failed(store, "ping", 30.0, 40.0, "no agent", {})
    sched_store.skipped(store, "ping", 100.0, 6, {"count": 6})
    row = sched_store.get(store, "ping")
    assert (row["next_due"], row["skipped"], row["last_error"]) == (100.0, 6, "no agent")
    assert types(store)[-4:] == ["schedule.answered", "schedule.answered", "schedule.failed",
                                 "schedule.skipped"]
    sched_store.answered(store, "gone", "k", "")  # removed meanwhile: nothing to do
