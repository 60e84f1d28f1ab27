"""An agent message's record on a real SQLite file: state, logs, audit at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from naosd.errors import AuditError, InvalidRequest
from naosd.storage import agent_runs
from naosd.storage.agent_runs import RunRecord, check_change, commit, load_state
from naosd.storage.store import Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head")
    yield s
    s.close()


def test_state_logs_and_audit_commit_together_and_state_reloads(store) -> None:
    sets, deletes = check_change({"set": {"seen": 3, "tags": ["a"]}, "delete": []})
    commit(store, [RunRecord("ann", {"ok": True, "ms": 1.5}, sets, deletes,
                             [("2026-01-01T00:00:00Z", "info", "hello")], caller="bob")])
    assert load_state(store, "ann") == {"seen": 3, "tags": ["a"]}
    row = store.audit_tail(1)[-1]
    assert (row.type, row.agent, row.detail["caller"]) == ("agent.run", "ann", "bob")
    logs = store.query("SELECT agent, text FROM agent_logs")
    assert logs == [("ann", "hello")]
    sets, deletes = check_change({"set": {}, "delete": ["tags"]})
    commit(store, [RunRecord("ann", {"ok": True}, sets, deletes)])
    assert load_state(store, "ann") == {"seen": 3}


def test_raw_bytes_of_a_wasm_agent_are_not_state(store) -> None:
    store.kv_set("w", "blob", b"\xff\x00")
    store.kv_set("w", "n", b"7")
    assert load_state(store, "w") == {"n": 7}


@pytest.mark.parametrize("change", [
    {"set": {"": 1}}, {"set": {"k" * 2000: 1}}, {"set": [1]}, {"delete": "k"},
    {"delete": [1]}, {"set": {"big": "x" * (agent_runs.STATE_VALUE_LIMIT + 1)}}, "nope"])
def test_a_bad_change_is_refused_naming_it(change) -> None:
    with pytest.raises(InvalidRequest, match="state"):
        check_change(change)


def test_a_failing_record_commits_nothing_of_its_batch(store) -> None:
    good = RunRecord("ann", {"ok": True}, {"a": b"1"})
    bad = RunRecord("ann", {"not json": object()}, {"b": b"2"})  # the audit row cannot encode
    with pytest.raises(AuditError):
        commit(store, [good, bad])
    assert load_state(store, "ann") == {}
