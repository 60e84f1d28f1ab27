"""A dashboard tab that is closed ends its event stream quietly (issue 12.6: each
closed tab logged a 27-line ``ClientConnectionResetError`` traceback)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Naosd, reap, start_naosd

pytestmark = pytest.mark.e2e

GONE = "event stream: the client went away"


@pytest.fixture
def verbose_daemon(base: Path) -> Iterator[Naosd]:
    d = start_naosd(base, "--log-level", "debug")
    try:
        yield d
    finally:
        assert not reap(d)


def open_stream(d: Naosd) -> http.client.HTTPConnection:
    info = json.loads(d.ctl("dashboard", "--json", check=True).stdout)
    host, port = info["url"].split("//", 1)[1].rstrip("/").split(":")
    token = info["login_url"].split("token=", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline() == b"retry: 2000\n"  # the stream is being served
    return conn


def wait_for_log(d: Naosd, done: Callable[[str], bool], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = d.log()
        if done(log):
            return log
        time.sleep(0.1)
    raise AssertionError(f"the log did not get there in {timeout}s:\n{d.log()}")


def test_closed_streams_end_without_a_traceback(verbose_daemon: Naosd):
    d = verbose_daemon
    for _ in range(3):  # three tabs closed
        open_stream(d).close()
    d.ctl("create", "noisy", "--template", "echo", check=True)  # events to write
    log = wait_for_log(d, lambda log: log.count(GONE) >= 3 or "Error handling" in log)
    assert "Traceback" not in log and "Error handling request" not in log, log
    gone = [line for line in log.splitlines() if GONE in line]
    assert len(gone) == 3 and all(" DEBUG " in line for line in gone), log
    assert d.ctl("ping").returncode == 0
