"""The keyed audit head checkpoint, the start check, re-anchoring and exported
heads, against real SQLite files (tampering with the stdlib sqlite3 module
while no Store has the file open) and a real key file.

Issue 15 (5f): deleting the last rows and the checkpoint used to pass
``audit verify``, because a missing or garbled checkpoint was recreated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from naosd.errors import ConfigError
from naosd.storage import anchor
from naosd.storage.audit import GENESIS, Checkpoint, key_id, parse_head, sign_head
from naosd.storage.audit_key import load_or_create
from naosd.storage.checkpoint import encode_checkpoint, install_process_key, read_checkpoint
from naosd.storage.store import Store

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "naos.db", tmp_path / "audit.head"


@contextlib.contextmanager
def opened(paths: tuple[Path, Path], key: bytes | None = KEY) -> Iterator[Store]:
    db, cp = paths
    with Store.open(db, checkpoint_path=cp, head_key=key) as store:
        yield store


@contextlib.contextmanager
def tamper(db: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(db)
    try:
        with con:
            yield con
    finally:
        con.close()


def five(paths: tuple[Path, Path]) -> None:
    with opened(paths) as s:
        for i in range(5):
            s.append_audit("test.event", detail={"i": i})
        assert s.verify_audit().ok


def cut_after(db: Path, seq: int) -> None:
    with tamper(db) as con:
        con.execute("DELETE FROM audit WHERE seq > ?", (seq,))


def verify(paths: tuple[Path, Path], **kw: object):
    with opened(paths) as s:
        return s.verify_audit(**kw)  # type: ignore[arg-type]


# -- the keyed checkpoint ------------------------------------------------------------


def test_the_checkpoint_is_signed_with_the_key(paths) -> None:
    five(paths)
    data = json.loads(paths[1].read_text())
    assert set(data) == {"seq", "hash", "mac"} and data["seq"] == 5
    assert read_checkpoint(paths[1], KEY) == Checkpoint(5, data["hash"])
    assert paths[1].stat().st_mode & 0o777 == 0o600


def test_deleted_last_rows_and_checkpoint_fail_verify(paths) -> None:
    five(paths)
    cut_after(paths[0], 3)
    paths[1].unlink()
    result = verify(paths)
    assert not result.ok and "audit.head is missing" in result.reason


def test_a_garbled_checkpoint_fails_verify_and_is_never_overwritten(paths, caplog) -> None:
    five(paths)
    paths[1].write_text("garbage")
    with opened(paths) as s:
        s.append_audit("after")
        assert "not JSON" in s.verify_audit().reason
    assert paths[1].read_text() == "garbage"
    assert "not overwritten" in caplog.text


def test_a_deleted_checkpoint_is_not_recreated_by_writers(paths, caplog) -> None:
    five(paths)
    with opened(paths) as s:
        paths[1].unlink()
        s.append_audit("after")
        assert not paths[1].exists()
        assert "missing" in s.verify_audit().reason
    assert "not recreated" in caplog.text


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda head: encode_checkpoint(head, None), id="unsigned"),
        pytest.param(lambda head: encode_checkpoint(head, OTHER_KEY), id="another-key"),
        pytest.param(lambda head: json.dumps({"seq": head.seq, "hash": head.hash,
                                              "mac": "0" * 64}).encode(), id="made-up-mac"),
    ],
)
def test_a_checkpoint_forged_without_the_key_is_detected(paths, forge) -> None:
    five(paths)
    cut_after(paths[0], 3)
    with tamper(paths[0]) as con:
        seq, digest = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC").fetchone()
    paths[1].write_bytes(forge(Checkpoint(seq, digest)))  # the tamperer's new head
    result = verify(paths)
    assert not result.ok
    assert "not signed" in result.reason or "does not verify" in result.reason
    with opened(paths) as s:
        assert anchor.startup_check(s).type == "audit.checkpoint_garbled"


# -- naosd's start check and the operator's reanchor --------------------------------


def test_a_missing_checkpoint_at_start_is_an_alert_until_reanchored(paths) -> None:
    five(paths)
    cut_after(paths[0], 3)
    paths[1].unlink()
    with opened(paths) as s:
        alert = anchor.startup_check(s)
        assert alert is not None and alert.type == "audit.checkpoint_missing"
        assert alert.detail["db_head"]["seq"] == 3
        assert read_checkpoint(paths[1], KEY) == Checkpoint(alert.seq, alert.hash)
        s.append_audit("daemon.start")
        result = s.verify_audit()
        assert (result.ok, result.alert_seq) == (False, alert.seq)
        assert "unacknowledged alert at #4 (audit.checkpoint_missing" in result.reason
        assert "naosctl audit reanchor --yes" in result.reason
        assert anchor.startup_check(s) is None  # the file is fine now: one alert, not more
        row = anchor.reanchor(s, actor="tester")
        assert row.type == "audit.reanchor" and row.actor == "tester"
        assert row.detail["new"]["seq"] == 5
        assert row.detail["verify_before"]["alert_seq"] == alert.seq
        assert s.verify_audit().ok
        assert read_checkpoint(paths[1], KEY) == Checkpoint(row.seq, row.hash)


def test_a_garbled_checkpoint_at_start_is_kept_aside_and_alerted(paths) -> None:
    five(paths)
    paths[1].write_text('{"seq": 5, "hash": "nope"}')
    with opened(paths) as s:
        alert = anchor.startup_check(s)
        assert alert is not None and alert.type == "audit.checkpoint_garbled"
        kept = Path(alert.detail["moved_to"])
        assert kept.read_text() == '{"seq": 5, "hash": "nope"}'
        assert kept.name.startswith("audit.head.bad-")
        assert "malformed" in alert.detail["reason"]
        assert not s.verify_audit().ok
        anchor.reanchor(s)
        assert s.verify_audit().ok


def test_reanchor_records_a_garbled_file_and_sets_it_aside(paths) -> None:
    five(paths)
    paths[1].write_text("{")
    with opened(paths) as s:
        row = anchor.reanchor(s)
        assert row.detail["old_checkpoint"]["state"] == "garbled"
        assert Path(row.detail["moved_to"]).read_text() == "{"
        assert s.verify_audit().ok


def test_a_sound_checkpoint_at_start_writes_nothing(paths) -> None:
    five(paths)
    with opened(paths) as s:
        assert anchor.startup_check(s) is None
        assert s.audit_head().seq == 5


def test_a_new_key_signs_the_checkpoint_of_an_older_naos(paths) -> None:
    with opened(paths, key=None) as s:  # before keys: an unsigned checkpoint
        s.append_audit("old.event")
    assert "mac" not in json.loads(paths[1].read_text())
    with opened(paths) as s:
        assert not s.verify_audit().ok  # with a key, unsigned is not trusted...
        row = anchor.startup_check(s, key_created=True)  # ...except on the key's first start
        assert row is not None and row.type == "audit.key_created"
        assert row.detail == {"key_id": key_id(KEY), "checkpoint_signed": 1}
        assert s.verify_audit().ok


def test_a_new_key_on_a_new_log_is_recorded(paths) -> None:
    with opened(paths) as s:
        row = anchor.startup_check(s, key_created=True)
        assert row is not None and row.type == "audit.key_created"
        assert s.verify_audit().ok


def test_the_process_key_reaches_stores_opened_later(paths) -> None:
    install_process_key(KEY)
    try:
        with opened(paths, key=None) as s:
            s.append_audit("signed")
    finally:
        install_process_key(None)
    assert read_checkpoint(paths[1], KEY) is not None


# -- exported heads -------------------------------------------------------------------


def test_an_exported_head_verifies_and_catches_a_cut_below_it(paths) -> None:
    five(paths)
    with opened(paths) as s:
        exported = anchor.export_head(s).to_dict()
        s.append_audit("later")
        head = parse_head(json.loads(json.dumps(exported)))  # as kept outside
        assert s.verify_audit(anchor=head).ok
    assert exported["seq"] == 5 and exported["ts"].endswith("Z")
    assert exported["format"] == "naos-audit-head-v1" and len(exported["mac"]) == 64
    cut_after(paths[0], 4)
    with opened(paths) as s:
        assert s.verify_audit(anchor=head).first_bad_seq == 5
        anchor.reanchor(s)  # accepted locally (the reanchor row keeps the story)...
        assert s.verify_audit().ok
        result = s.verify_audit(anchor=head)  # ...but not by the head kept outside
    assert not result.ok and result.first_bad_seq == 5
    assert "row 5 differs from the anchor" in result.reason


def test_a_replayed_genuine_checkpoint_needs_the_anchor_to_be_caught(paths) -> None:
    with opened(paths) as s:
        for i in range(3):
            s.append_audit("test.event", detail={"i": i})
        old_checkpoint = paths[1].read_bytes()  # signed, seq 3
        s.append_audit("later", detail={"i": 3})
        exported = anchor.export_head(s)
    cut_after(paths[0], 3)
    paths[1].write_bytes(old_checkpoint)
    assert verify(paths).ok  # the documented limit of a local checkpoint
    result = verify(paths, anchor=exported)
    assert not result.ok and result.first_bad_seq == 4


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        pytest.param({"seq": 4}, "signature does not verify", id="edited-seq"),
        pytest.param({"key_id": key_id(OTHER_KEY)}, "signed with key", id="other-key-id"),
    ],
)
def test_an_edited_or_foreign_anchor_is_refused(paths, edit, reason) -> None:
    five(paths)
    with opened(paths) as s:
        good = anchor.export_head(s).to_dict()
    result = verify(paths, anchor=parse_head({**good, **edit}))
    assert not result.ok and reason in result.reason


def test_an_anchor_of_another_daemon_is_refused(paths) -> None:
    five(paths)
    foreign = sign_head(OTHER_KEY, 5, "a" * 64, "2025-01-01T00:00:00.000000Z")
    result = verify(paths, anchor=foreign)
    assert not result.ok and key_id(OTHER_KEY) in result.reason


def test_the_empty_log_exports_genesis(paths) -> None:
    with opened(paths) as s:
        head = anchor.export_head(s)
    assert (head.seq, head.hash) == (0, GENESIS)


# -- the key file ---------------------------------------------------------------------


def test_the_key_is_created_private_once_and_read_back(tmp_path: Path, caplog) -> None:
    path = tmp_path / "cfg" / "naos" / "audit.key"
    caplog.set_level(logging.WARNING)
    first = load_or_create(path)
    assert first.created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create(path)
    assert not again.created and again.key == first.key and again.key_id == first.key_id
    assert first.key.hex() not in repr(first) and first.key.decode() not in repr(first)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param(lambda p: (p.write_text("x" * 64), os.chmod(p, 0o644)), "chmod 600",
                     id="world-readable"),
        pytest.param(lambda p: (p.write_text("short"), os.chmod(p, 0o600)), "at least 32",
                     id="too-short"),
        pytest.param(lambda p: p.mkdir(), "not a regular file", id="a-directory"),
    ],
)
def test_a_bad_key_file_is_a_config_error(tmp_path: Path, setup, message) -> None:
    path = tmp_path / "dir" / "audit.key"
    path.parent.mkdir()
    setup(path)
    with pytest.raises(ConfigError, match=message):
        load_or_create(path)


def test_a_key_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"audit\.key_file: cannot (open|create) .*/file/"):
        load_or_create(tmp_path / "file" / "naos" / "audit.key")
