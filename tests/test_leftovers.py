"""What naosd kills of a killed predecessor (naosd.runtime.leftovers): only the
recorded tree, never a process that merely shares a number with it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import pytest

from naosd.runtime import proctable as pt
from naosd.runtime.leftovers import SessionRecord, kill_stale, stale_pids


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process leading a session of its own (pid == session id)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def record_for(pid: int) -> SessionRecord:
    proc = pt.read_proc(pid)
    assert proc is not None
    return SessionRecord(pt.boot_id(), proc.session, proc.start, 0, pt.cmdline(pid))


def test_a_live_session_leader_means_the_session_is_not_ours(sleeper):
    assert stale_pids(record_for(sleeper.pid)) == set()


@pytest.mark.parametrize("change", [
    pytest.param({"boot_id": "another-boot"}, id="other-boot"),
    pytest.param({"cmdline": "python\0-m\0something-else\0"}, id="other-command"),
    pytest.param({"first_start": 10**12}, id="older-than-the-tree"),
    pytest.param({"session": 1}, id="init-session"),
])
def test_nothing_outside_the_record_is_touched(sleeper, change):
    record = dataclasses.replace(record_for(sleeper.pid), **change)
    assert stale_pids(record) == set()


def test_a_missing_or_garbled_record_kills_nothing(tmp_path):
    assert kill_stale(tmp_path / "absent") == []
    (tmp_path / "bad").write_text("{not json")
    assert kill_stale(tmp_path / "bad") == []


def test_a_record_round_trips(tmp_path):
    record = SessionRecord("b", 42, 7, 1234, "python\0-m\0naosd\0")
    record.save(tmp_path / "actors.session")
    assert SessionRecord.load(tmp_path / "actors.session") == record
