"""naosd.storage.store against real SQLite files; tampering done with stdlib sqlite3.

The stdlib sqlite3 module is a second SQLite library in this process, and
POSIX locks do not separate two users in one process: only touch a file with
it while no Store in this process has that file open.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from naosd.errors import AuditError, ConfigError, NotFound, StorageError
from naosd.storage import checkpoint as ckpt
from naosd.storage import store as storage
from naosd.storage.audit import Checkpoint as Cp
from naosd.storage.audit import VerifyResult, chain_hash, make_row
from naosd.storage.store import MALFORMED_DETAIL, SCHEMA_VERSION, Store

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """One second per call from 2025-01-01T00:00:00Z."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "naos.db"


@pytest.fixture
def cp_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.head"


@pytest.fixture
def store(db_path: Path, cp_path: Path) -> Iterator[Store]:
    s = Store.open(db_path, checkpoint_path=cp_path, clock=FakeClock())
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A stdlib connection that commits on success: the tamperer's tool."""
    con = sqlite3.connect(path)
    try:
        with con:
            yield con
    finally:
        con.close()


def append_n(s: Store, n: int, **kw: Any) -> None:
    for i in range(n):
        s.append_audit("test.event", detail={"i": i}, **kw)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def assert_bad_at(s: Store, seq: int | None) -> None:
    result = s.verify_audit()
    assert not result.ok
    assert result.first_bad_seq == seq, result.reason


# -- opening and migrations ------------------------------------------------------


def test_fresh_db_is_migrated_and_configured(store: Store, db_path: Path) -> None:
    with store.transaction() as tx:
        assert tx.execute("PRAGMA journal_mode") == [("wal",)]
        assert tx.execute("PRAGMA synchronous") == [(2,)]  # FULL
        assert tx.execute("PRAGMA foreign_keys") == [(1,)]
    store.close()
    with raw(db_path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert {"audit", "meta", "kv", "audit_type", "audit_agent", "audit_ts"} <= names


def test_synchronous_normal_is_allowed(db_path: Path) -> None:
    with Store.open(db_path, synchronous="normal") as s, s.transaction() as tx:
        assert tx.execute("PRAGMA synchronous") == [(1,)]


def test_unknown_synchronous_is_a_config_error(db_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous"):
        Store.open(db_path, synchronous="off")


def test_reopen_keeps_rows_and_seq_keeps_climbing(db_path: Path, cp_path: Path) -> None:
    for expected in (1, 2, 3):
        with Store.open(db_path, checkpoint_path=cp_path) as s:
            assert s.append_audit("boot").seq == expected
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        assert [r.seq for r in s.audit_tail()] == [1, 2, 3]
        assert s.verify_audit().ok


def test_newer_schema_is_refused_naming_the_file(db_path: Path) -> None:
    Store.open(db_path).close()
    with raw(db_path) as con:
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match=rf"{db_path}.*99.*upgrade"):
        Store.open(db_path)


def test_not_a_database_is_a_storage_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match=str(db_path)):
        Store.open(db_path)


def test_failed_migration_rolls_back_and_a_good_one_applies(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(db_path).close()
    bad = "CREATE TABLE half_done(x); SELECT no_such_function();"
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS, bad))
    monkeypatch.setattr(storage, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StorageError, match="no_such_function"):
        Store.open(db_path)
    with raw(db_path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert not con.execute("SELECT 1 FROM sqlite_master WHERE name='half_done'").fetchall()
    good = "CREATE TABLE added(x INTEGER NOT NULL);"
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS[:-1], good))
    with Store.open(db_path) as s, s.transaction() as tx:
        assert tx.execute("PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
        assert tx.execute("SELECT count(*) FROM added") == [(0,)]


LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("CREATE TABLE other(x)")  # a fresh file, still in rollback-journal mode
con.execute("BEGIN IMMEDIATE")  # RESERVED: a WAL switch elsewhere gets SQLITE_BUSY at once
print("ready", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
"""


def test_open_waits_for_a_lock_on_a_fresh_file(db_path: Path) -> None:
    # SQLite returns BUSY for the WAL switch without calling the busy handler
    # (it would deadlock with the RESERVED holder); Store.open must retry.
    # The locker is another process: POSIX locks do not conflict within one.
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        wait_ready(proc, timeout=30)
        with pytest.raises(StorageError, match=r"busy|locked"):
            Store.open(db_path, busy_timeout_ms=50)
        assert proc.stdin is not None
        release = threading.Timer(0.2, proc.communicate, (b"\n",), {"timeout": 10})
        release.start()
        with Store.open(db_path, busy_timeout_ms=5000) as s:
            assert s.append_audit("x").seq == 1
        release.join(timeout=10)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_missing_checkpoint_directory_is_refused(db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="checkpoint directory"):
        Store.open(db_path, checkpoint_path=tmp_path / "nope" / "head")


def test_closed_store_refuses_calls_and_close_is_idempotent(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.append_audit("x")


# -- transactions -------------------------------------------------------------------


def test_rollback_leaves_no_audit_row_and_no_state(store: Store, cp_path: Path) -> None:
    store.append_audit("before")
    checkpoint_before = cp_path.read_text()

    def change_then_fail() -> None:
        with store.transaction() as tx:
            tx.kv_set("a", "k", b"v")
            tx.audit("kv.set", agent="a", detail={"key": "k"})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        change_then_fail()
    assert [r.type for r in store.audit_tail()] == ["before"]
    with pytest.raises(NotFound):
        store.kv_get("a", "k")
    assert cp_path.read_text() == checkpoint_before
    assert store.append_audit("after").seq == 2


def test_state_change_and_audit_commit_together(store: Store) -> None:
    with store.transaction() as tx:
        tx.kv_set("a", "k", b"v1")
        row = tx.audit("kv.set", agent="a", detail={"key": "k"})
        second = tx.audit("kv.checked", agent="a")
    assert store.kv_get("a", "k") == b"v1"
    assert (row.seq, second.seq, second.prev_hash) == (1, 2, row.hash)
    assert store.audit_head() == Cp(2, second.hash)


def test_tx_is_dead_after_its_block(store: Store) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(StorageError, match="finished"):
        tx.audit("late")


def test_nested_transactions_are_refused(store: Store) -> None:
    with store.transaction(), pytest.raises(StorageError, match="nested"):
        store.append_audit("inner")


def test_sql_errors_are_translated_and_roll_back(store: Store) -> None:

    def audit_then_bad_sql() -> None:
        with store.transaction() as tx:
            tx.audit("doomed")
            tx.execute("INSERT INTO nowhere VALUES (1)")

    with pytest.raises(StorageError, match="no such table"):
        audit_then_bad_sql()
    assert store.audit_head() is None


def test_busy_database_is_a_storage_error(db_path: Path) -> None:
    with Store.open(db_path) as a, Store.open(db_path, busy_timeout_ms=50) as b:
        with a.transaction(), pytest.raises(StorageError, match="busy"):
            b.append_audit("blocked")
        assert b.append_audit("later").seq == 1


def test_naive_clock_is_an_audit_error(db_path: Path) -> None:
    naive = datetime(2025, 1, 1)  # naive on purpose
    with Store.open(db_path, clock=lambda: naive) as s, pytest.raises(AuditError, match="aware"):
        s.append_audit("x")


def test_unencodable_detail_is_an_audit_error(store: Store) -> None:
    with pytest.raises(AuditError):
        store.append_audit("x", detail={"bad": float("nan")})
    assert store.audit_head() is None


# -- meta and kv ---------------------------------------------------------------------


def test_meta_and_kv_round_trip(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_meta("owner")
    assert store.get_meta_or_none("owner") is None
    store.set_meta("owner", "me")
    store.set_meta("owner", "you")
    assert store.get_meta("owner") == "you"
    with pytest.raises(NotFound):
        store.kv_get("a", "k")
    store.kv_set("a", "k", b"\x00\x01")
    store.kv_set("a", "k", b"\x02")
    store.kv_set("b", "k", b"other")
    assert (store.kv_get("a", "k"), store.kv_get("b", "k")) == (b"\x02", b"other")


# -- reading the audit log ------------------------------------------------------------


def test_tail_returns_last_n_ascending_with_filters(store: Store) -> None:
    for i in range(6):
        store.append_audit("even" if i % 2 == 0 else "odd", agent=f"a{i % 3}", detail={"i": i})
    assert [r.seq for r in store.audit_tail(3)] == [4, 5, 6]
    assert [r.seq for r in store.audit_tail(2, type="even")] == [3, 5]
    assert [r.seq for r in store.audit_tail(10, type=("even", "odd"))] == [1, 2, 3, 4, 5, 6]
    assert [r.seq for r in store.audit_tail(10, type=("odd", "none"))] == [2, 4, 6]
    assert [r.seq for r in store.audit_tail(10, agent="a0")] == [1, 4]
    # The fake clock stamps seq n at 00:00:0n.
    assert [r.seq for r in store.audit_tail(10, since="2025-01-01T00:00:05")] == [5, 6]
    assert store.audit_tail(0) == []


def test_rows_read_back_equal_rows_appended(store: Store) -> None:
    appended = store.append_audit("x", actor="cli", agent="é", detail={"t": (1, 2), "n": None})
    (read,) = store.audit_tail(1)
    assert read == appended
    assert read.ts == "2025-01-01T00:00:01.000000Z"


def test_after_returns_rows_past_a_seq(store: Store) -> None:
    append_n(store, 5)
    assert [r.seq for r in store.audit_after(2)] == [3, 4, 5]
    assert [r.seq for r in store.audit_after(0, limit=2)] == [1, 2]
    assert store.audit_after(5) == []


def test_iter_streams_every_row_across_batches(store: Store) -> None:
    append_n(store, 7, agent="x")
    store.append_audit("other")
    assert [r.seq for r in store.iter_audit(batch=3)] == list(range(1, 9))
    assert [r.seq for r in store.iter_audit(agent="x", batch=2)] == list(range(1, 8))
    assert [r.seq for r in store.iter_audit(type="other")] == [8]


def test_search_is_case_insensitive_substring(store: Store) -> None:
    store.append_audit("Agent.Start", agent="Alpha")
    store.append_audit("agent.stop", actor="CLI", detail={"msg": "Hello World"})
    assert [r.seq for r in store.audit_search("AGENT.")] == [1, 2]
    assert [r.seq for r in store.audit_search("alpha")] == [1]
    assert [r.seq for r in store.audit_search("cli")] == [2]
    assert [r.seq for r in store.audit_search("hello world")] == [2]
    assert [r.seq for r in store.audit_search("agent", limit=1)] == [2]
    assert [r.seq for r in store.audit_search("agent", type="agent.stop")] == [2]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("100%", [1], id="percent"),
        pytest.param("%", [1], id="lone-percent"),
        pytest.param("a_b", [2], id="underscore"),
        pytest.param("_", [2], id="lone-underscore"),
        pytest.param("\\\\", [3], id="backslash"),  # JSON escapes one \ as two
        pytest.param("a%b", [], id="percent-not-wildcard"),
    ],
)
def test_search_treats_like_wildcards_literally(
    store: Store, query: str, expected: list[int]
) -> None:
    store.append_audit("t", detail={"v": "100%"})
    store.append_audit("t", detail={"v": "a_b axb"})
    store.append_audit("t", detail={"v": "c:\\dir"})
    assert [r.seq for r in store.audit_search(query)] == expected


# -- checkpoint file ---------------------------------------------------------------------


def test_checkpoint_file_tracks_head_and_is_private(store: Store, cp_path: Path) -> None:
    append_n(store, 3)
    head = store.audit_head()
    assert head is not None
    assert json.loads(cp_path.read_text()) == {"seq": head.seq, "hash": head.hash}
    assert cp_path.stat().st_mode & 0o777 == 0o600


def test_checkpoint_never_moves_backwards(cp_path: Path) -> None:
    assert not storage.advance_checkpoint(cp_path, Cp(5, "a" * 64))  # never creates it
    assert ckpt.create_checkpoint(cp_path, Cp(0, "0" * 64))
    assert storage.advance_checkpoint(cp_path, Cp(5, "a" * 64))
    assert not storage.advance_checkpoint(cp_path, Cp(4, "b" * 64))
    assert storage.read_checkpoint(cp_path) == Cp(5, "a" * 64)


def test_checkpoint_write_failure_does_not_fail_the_commit(
    store: Store, cp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path, head: Cp, **kw: object) -> bool:
        raise OSError("disk full")

    monkeypatch.setattr(storage, "advance_checkpoint", broken)
    assert store.append_audit("x").seq == 1
    assert "checkpoint" in caplog.text
    assert store.verify_audit().ok  # the file from the chain's start lags, which is fine


def test_lagging_checkpoint_verifies(store: Store, cp_path: Path) -> None:
    append_n(store, 5)
    third = store.audit_tail(3)[0]
    cp_path.write_text(json.dumps({"seq": third.seq, "hash": third.hash}))
    assert store.verify_audit().ok


def test_missing_checkpoint_after_one_was_written_is_not_ok(store: Store, cp_path: Path) -> None:
    append_n(store, 2)
    cp_path.unlink()
    assert_bad_at(store, None)
    assert "missing" in store.verify_audit().reason


def test_a_log_without_its_checkpoint_is_not_ok(db_path: Path, cp_path: Path) -> None:
    with Store.open(db_path) as s:
        append_n(s, 2)
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        assert_bad_at(s, None)
        assert "missing" in s.verify_audit().reason
        s.append_audit("more")  # writers never create it (naosd's start check does)
    assert not cp_path.exists()


def test_an_empty_log_starts_its_checkpoint_at_genesis(db_path: Path, cp_path: Path) -> None:
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        assert storage.read_checkpoint(cp_path) == Cp(0, "0" * 64)
        append_n(s, 2)
        assert storage.read_checkpoint(cp_path) == s.audit_head()


def test_corrupt_checkpoint_is_not_ok_and_is_kept(store: Store, cp_path: Path) -> None:
    append_n(store, 2)
    cp_path.write_text("{not json")
    assert_bad_at(store, None)
    store.append_audit("does not heal")  # a garbled file is evidence: never overwritten
    assert cp_path.read_text() == "{not json"
    assert "not JSON" in store.verify_audit().reason


# -- tampering with the file --------------------------------------------------------------


@pytest.fixture
def five(db_path: Path, cp_path: Path) -> Path:
    """Five audit rows written and the store closed, ready to be tampered with."""
    with Store.open(db_path, checkpoint_path=cp_path, clock=FakeClock()) as s:
        append_n(s, 5)
        assert s.verify_audit().ok
    return db_path


def verify(db_path: Path, cp_path: Path) -> VerifyResult:
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        return s.verify_audit()


def test_edited_detail_is_detected(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        con.execute("""UPDATE audit SET detail='{"i":99}' WHERE seq=3""")
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq, result.head_seq) == (False, 3, 2)


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"i": 2}', id="not-canonical"),
        pytest.param("[2]", id="not-a-dict"),
        pytest.param("NaN", id="nan"),
    ],
)
def test_malformed_detail_is_detected_and_still_readable(
    five: Path, cp_path: Path, detail: str
) -> None:
    with raw(five) as con:
        con.execute("UPDATE audit SET detail=? WHERE seq=3", (detail,))
    with Store.open(five, checkpoint_path=cp_path) as s:
        assert_bad_at(s, 3)
        assert s.audit_after(2, limit=1)[0].detail == {MALFORMED_DETAIL: detail}


def test_user_detail_may_use_the_malformed_key(store: Store) -> None:
    store.append_audit("x", detail={MALFORMED_DETAIL: "mine"})
    assert store.verify_audit().ok


def test_deleted_middle_row_is_detected(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        con.execute("DELETE FROM audit WHERE seq=2")
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_deleted_last_rows_are_caught_by_the_checkpoint(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        con.execute("DELETE FROM audit WHERE seq>=4")
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    with Store.open(five) as s:  # without the checkpoint the truncation is invisible
        assert s.verify_audit().ok


def test_rows_rewritten_after_truncation_are_caught(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        con.execute("DELETE FROM audit WHERE seq>=4")
    with Store.open(five, checkpoint_path=cp_path) as s:
        append_n(s, 2)  # valid chain again, but seq 5 is not the row the checkpoint saw
        assert_bad_at(s, 5)


def test_inserted_row_with_a_bogus_hash_is_detected(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        (prev,) = con.execute("SELECT hash FROM audit WHERE seq=5").fetchone()
        con.execute(
            "INSERT INTO audit VALUES (6, '2025-01-02T00:00:00.000000Z', 'evil', NULL, "
            "'forged', '{}', ?, ?)",
            (prev, "f" * 64),
        )
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_inserted_middle_row_is_detected(five: Path, cp_path: Path) -> None:
    # The forger renumbers rows 3..5 and recomputes the forged row's hash, so
    # the forged row 3 itself verifies; the displaced old row 3 (now 4) breaks.
    with raw(five) as con:
        (prev,) = con.execute("SELECT hash FROM audit WHERE seq=2").fetchone()
        con.execute("UPDATE audit SET seq = -seq WHERE seq >= 3")
        con.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
        forged = make_row(
            Cp(2, prev),
            ts="2025-01-01T00:00:02.500000Z",
            actor="evil",
            agent=None,
            type="forged",
            detail={},
        )
        con.execute(
            "INSERT INTO audit VALUES (3, ?, 'evil', NULL, 'forged', '{}', ?, ?)",
            (forged.ts, prev, forged.hash),
        )
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_swapped_row_contents_are_detected(five: Path, cp_path: Path) -> None:
    cols = "ts, actor, agent, type, detail, prev_hash, hash"
    with raw(five) as con:
        two = con.execute(f"SELECT {cols} FROM audit WHERE seq=2").fetchone()
        four = con.execute(f"SELECT {cols} FROM audit WHERE seq=4").fetchone()
        sets = ", ".join(f"{c}=?" for c in cols.split(", "))
        con.execute(f"UPDATE audit SET {sets} WHERE seq=2", four)
        con.execute(f"UPDATE audit SET {sets} WHERE seq=4", two)
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_edit_with_recomputed_hash_breaks_the_next_link(five: Path, cp_path: Path) -> None:
    with raw(five) as con:
        seq, ts, actor, agent, type_, _, prev, _ = con.execute(
            "SELECT * FROM audit WHERE seq=2"
        ).fetchone()
        fields = {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "agent": agent,
            "type": type_,
            "detail": {"i": 42},
        }
        con.execute(
            "UPDATE audit SET detail='{\"i\":42}', hash=? WHERE seq=2",
            (chain_hash(prev, fields),),
        )
    result = verify(five, cp_path)
    assert (result.ok, result.first_bad_seq) == (False, 3)


# -- several writers --------------------------------------------------------------------------


def test_two_stores_on_one_file_interleave(db_path: Path, cp_path: Path) -> None:
    with (
        Store.open(db_path, checkpoint_path=cp_path) as a,
        Store.open(db_path, checkpoint_path=cp_path) as b,
    ):
        seqs = [(a if i % 2 else b).append_audit("w", agent=str(i % 2)).seq for i in range(20)]
        assert seqs == list(range(1, 21))
        for s in (a, b):
            result = s.verify_audit()
            assert (result.ok, result.checked) == (True, 20), result.reason
        assert storage.read_checkpoint(cp_path) == a.audit_head()


WRITER = """
import sys
from pathlib import Path
from naosd.storage.store import Store
store = Store.open(Path(sys.argv[1]), checkpoint_path=Path(sys.argv[2]))
for i in range(int(sys.argv[3])):
    store.append_audit("proc.tick", agent=sys.argv[4], detail={"i": i})
store.close()
"""


def test_processes_appending_concurrently_keep_one_chain(db_path: Path, cp_path: Path) -> None:
    # No Store.open first: the writers race to create, switch to WAL and migrate.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_path), str(cp_path), "150", f"p{k}"],
            env=subprocess_env(),
        )
        for k in range(3)
    ]
    try:
        assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        result = s.verify_audit()
        assert (result.ok, result.checked) == (True, 450), result.reason
        assert storage.read_checkpoint(cp_path) == s.audit_head()


CRASHER = """
import sys
from pathlib import Path
from naosd.storage.store import Store
store = Store.open(Path(sys.argv[1]), checkpoint_path=Path(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    with store.transaction() as tx:
        tx.kv_set("crasher", "i", str(i).encode())
        tx.audit("crash.tick", agent="crasher", detail={"i": i, "pad": "x" * (i % 300)})
    i += 1
"""


def wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, f"writer not ready after {timeout}s"
    assert proc.stdout.readline() == b"ready\n"


def test_sigkill_at_random_moments_never_breaks_db_or_chain(db_path: Path, cp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for attempt in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, str(db_path), str(cp_path)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
        )
        try:
            if attempt > 0:  # the first one may die anywhere, even mid-migration
                wait_ready(proc, timeout=30)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: writer exited by itself"
    with raw(db_path) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"seed {seed}"
    with Store.open(db_path, checkpoint_path=cp_path) as s:
        result = s.verify_audit()
        assert result.ok, f"seed {seed}: {result.reason}"
        assert result.checked > 0
        # The state change and its audit row committed together, or neither did.
        last = s.audit_tail(1)[0]
        assert s.kv_get("crasher", "i") == str(last.detail["i"]).encode()


def test_checkpoint_is_not_advanced_past_deleted_rows(tmp_path: Path) -> None:
    """Deleting the last rows and then writing more must not erase the evidence."""
    db, cp = tmp_path / "t.db", tmp_path / "audit.head"
    with Store.open(db, checkpoint_path=cp) as s:
        append_n(s, 5)
    raw = sqlite3.connect(db)
    raw.execute("DELETE FROM audit WHERE seq > 3")
    raw.commit()
    raw.close()
    with Store.open(db, checkpoint_path=cp) as s:
        append_n(s, 6)  # seq 4..9: past the checkpoint's seq 5
        result = s.verify_audit()
    assert not result.ok
    assert result.first_bad_seq == 5
    assert storage.read_checkpoint(cp).seq == 5
