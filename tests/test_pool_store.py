"""naosd.storage.pool_tasks on a real SQLite file: the life of a durable queue task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from naosd.errors import NotFound
from naosd.storage import pool_tasks as pool_store
from naosd.storage.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head")
    try:
        yield s
    finally:
        s.close()


def test_submit_start_finish_and_counts(store: Store):
    pool_store.submit(store, "p", "t1", {"x": 1})
    pool_store.submit(store, "p", "t2", [1, 2])
    pool_store.submit(store, "other", "t3", None)
    assert pool_store.get(store, "p", "t1")["status"] == "queued"
    assert pool_store.start(store, "t1", "m1") == 1
    assert pool_store.start(store, "t1", "m2") == 2  # re-sent after a restart
    pool_store.finish(store, "t1", "completed", {"ok": True}, "")
    pool_store.finish(store, "t2", "failed", None, "agent_crashed: boom")
    t1 = pool_store.get(store, "p", "t1")
    assert (t1["status"], t1["member"], t1["attempt"], t1["output"], t1["input"]) == (
        "completed", "m2", 2, {"ok": True}, {"x": 1})
    assert t1["finished_at"] and t1["started_at"] and t1["submitted_at"]
    assert pool_store.get(store, "p", "t2")["error"] == "agent_crashed: boom"
    assert pool_store.counts(store, "p") == {"queued": 0, "running": 0, "completed": 1,
                                             "failed": 1, "cancelled": 0}
    assert pool_store.counts(store, "other")["queued"] == 1
    with pytest.raises(NotFound, match="pool 'other' has no task 't1'"):
        pool_store.get(store, "other", "t1")  # a task belongs to its pool


def test_unfinished_in_submission_order(store: Store):
    for i in range(5):
        pool_store.submit(store, "p", f"t{i}", i)
    pool_store.start(store, "t3", "m")
    pool_store.finish(store, "t1", "cancelled", None, "cancelled by request")
    rows = pool_store.unfinished(store)
    assert [(r["task_id"], r["status"]) for r in rows] == [
        ("t0", "queued"), ("t2", "queued"), ("t3", "running"), ("t4", "queued")]


def test_bad_input_and_output_are_refused_without_damage(store: Store):
    with pytest.raises(TypeError):
        pool_store.submit(store, "p", "t1", {"x": object()})
    with pytest.raises(NotFound):
        pool_store.get(store, "p", "t1")  # nothing half-written
    pool_store.submit(store, "p", "t1", 1)
    pool_store.start(store, "t1", "m")
    pool_store.finish(store, "t1", "completed", {1, 2}, "")  # JSON cannot hold a set
    t1 = pool_store.get(store, "p", "t1")
    assert t1["status"] == "failed" and t1["error"].startswith("bad_output")
    with pytest.raises(ValueError, match="not a final task status"):
        pool_store.finish(store, "t1", "running", None, "")


def test_prune_keeps_the_newest_finished_and_every_unfinished(store: Store):
    for i in range(10):
        pool_store.submit(store, "p", f"t{i}", i)
        if i != 4:
            pool_store.finish(store, f"t{i}", "completed", i, "")
    pool_store.submit(store, "q", "q0", 0)
    pool_store.finish(store, "q0", "completed", 0, "")
    assert pool_store.prune(store, "p", 3) == 6
    left = {f"t{i}" for i in range(10)} - {f"t{i}" for i in (0, 1, 2, 3, 5, 6)}
    for task_id in left:
        pool_store.get(store, "p", task_id)
    with pytest.raises(NotFound):
        pool_store.get(store, "p", "t0")
    assert pool_store.get(store, "p", "t4")["status"] == "queued"  # never pruned
    assert pool_store.get(store, "q", "q0")  # other pools untouched
    assert pool_store.prune(store, "p", 3) == 0
