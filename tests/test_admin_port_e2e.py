"""naosd's actor system starts although its admin port is taken, and after any
number of ``kill -9`` (issue 12.6: about 1 start in 200 failed with "not a valid
or useable ActorSystem Admin").

The admin port is picked by naosd; ``actors.admin_port`` (here
``$NAOS_ACTORS_ADMIN_PORT``) makes it known in advance, so a test can take it
first the way another process could: a bound socket (a client's ephemeral
port) or a listener."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import alive, clean_env, kill_all, reap, start_naosd, wait_gone

pytestmark = pytest.mark.e2e


def env_for(base: Path, **extra: str) -> dict[str, str]:
    return clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                     XDG_CONFIG_HOME=str(base / "xdg-config"), **extra)


@pytest.mark.parametrize("listen", [pytest.param(False, id="bound"),
                                    pytest.param(True, id="listening")])
def test_a_taken_admin_port_is_replaced_by_a_free_one(base: Path, listen: bool):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # no SO_REUSEADDR, like a client's socket
        port = squatter.getsockname()[1]
        if listen:
            squatter.listen()
        d = start_naosd(base, env=env_for(base, NAOS_ACTORS_ADMIN_PORT=str(port)))
        try:
            assert f"admin port 127.0.0.1:{port} is already in use" in d.log()
            assert d.ctl("create", "a1", "--template", "echo").returncode == 0  # actors work
        finally:
            assert not reap(d)


def test_kill_9_and_restart_20_times(base: Path):
    previous: list[int] = []
    for cycle in range(20):
        d = start_naosd(base)  # raises with the log if the start fails
        try:
            assert not [p for p in previous if alive(p)], f"cycle {cycle}: old tree alive"
            assert d.ctl("ping").returncode == 0
            previous = d.remember_tree()
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
        finally:
            assert not reap(d), f"cycle {cycle}: processes outlived naosd\n{d.log()}"


FAKE_TREE = """
import os, socket, sys, time
os.setsid()
if os.fork():
    os._exit(0)          # like Thespian's admin: the session leader exits at once
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen()
# one write per line (two processes share the pipe: print may split its line)
if os.fork() == 0:
    os.write(1, f"child {os.getpid()}\\n".encode())
else:
    os.write(1, f"admin {os.getpid()} {os.getsid(0)} {s.getsockname()[1]}\\n".encode())
time.sleep(120)
"""


@contextlib.contextmanager
def fake_leftovers() -> Iterator[tuple[list[int], int, int]]:
    """Two processes in a session of their own, one listening on a port, the
    way a killed naosd's admin and an actor would: (pids, session, port)."""
    proc = subprocess.Popen([sys.executable, "-c", FAKE_TREE], stdout=subprocess.PIPE,
                            text=True)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        lines = sorted(proc.stdout.readline().split() for _ in range(2))
        proc.wait(timeout=10)  # the session leader: reaped, as naosd reaps it
        assert [line[0] for line in lines] == ["admin", "child"], lines
        pids = [int(lines[0][1]), int(lines[1][1])]
        yield pids, int(lines[0][2]), int(lines[0][3])
    finally:
        kill_all(pids)
        if proc.stdout is not None:
            proc.stdout.close()


def record_of(pids: list[int], session: int, port: int) -> dict[str, object]:
    def stat(pid: int) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rfind(")") + 2:].split()

    return {"boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "session": session, "first_start": min(int(stat(p)[19]) for p in pids),
            "port": port,
            "cmdline": os.fsdecode(Path(f"/proc/{pids[0]}/cmdline").read_bytes())}


def test_what_a_killed_naosd_left_running_is_killed(base: Path):
    with fake_leftovers() as (pids, session, port), fake_leftovers() as (others, _, _):
        state = base / "state"
        state.mkdir(mode=0o700)
        (state / "actors.session").write_text(json.dumps(record_of(pids, session, port)))
        d = start_naosd(base, env=env_for(base, NAOS_ACTORS_ADMIN_PORT=str(port)))
        try:
            assert f"killing 2 processes left by a previous naosd (session {session}" in d.log()
            assert not wait_gone(pids, timeout=10)
            assert all(alive(p) for p in others)  # not in the record: never touched
            assert "already in use" not in d.log()  # the port was free again
        finally:
            assert not reap(d)
