"""Who may use the control socket, against the real daemon: readers,
strangers, a flood of idle connections from another uid, an agent's handler,
and a socket directory planted by another user.

Tests run as root here: another uid is a forked child that drops to uid
65534 (nobody) with the supplementary groups the test gives it.  The child
cannot import anything after that (the interpreter lives under /root), so
everything it runs is imported up front."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from harness import Naosd, clean_env, reap, short_tempdir, start_naosd

from naosctl.client import Client
from naosctl.main import cli
from naosd import protocol
from naosd.errors import NaosError
from naosd.runtime.procs import sigterm_with_parent
from naosd.storage.store import Store

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")]

NOBODY = 65534
USERS = grp.getgrgid(100).gr_name  # an existing group: "users" on Debian


def as_user(fn: Callable[[], Any], *, groups: list[int], timeout: float = 90) -> Any:
    """``fn()``'s JSON result, run in a forked child as uid 65534."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            with contextlib.suppress(BaseException):
                os.write(write_end, json.dumps(result).encode())
            os._exit(0)
    os.close(write_end)
    try:
        return _read_all(read_end, timeout)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


def _read_all(fd: int, timeout: float) -> Any:
    data, deadline = b"", time.monotonic() + timeout
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"]


def naosctl_as_child(sock: Path, *args: str) -> dict[str, Any]:
    """The real naosctl command line, in the calling (child) process."""
    result = CliRunner().invoke(cli, ["--socket", str(sock), *args])
    return {"code": result.exit_code, "output": result.output}


def frames(data: bytes) -> list[dict[str, Any]]:
    return protocol.FrameDecoder().feed(data)


@pytest.fixture(scope="module")
def readers() -> Iterator[Naosd]:
    """A naosd whose reader group is ``users``; its socket's directory open
    to everyone for search (so that strangers reach SO_PEERCRED too)."""
    with short_tempdir() as base:
        os.chmod(base, 0o711)
        env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_CONFIG_HOME=str(base / "cfg"),
                        NAOS_READER_GROUP=USERS)
        d = start_naosd(base, env=env)
        try:
            yield d
        finally:
            d.stop()
            assert not reap(d)


def test_the_socket_belongs_to_the_reader_group(readers: Naosd):
    st = readers.socket.stat()
    assert (st.st_gid, st.st_mode & 0o777) == (100, 0o660)


def test_a_reader_reads_and_is_denied_what_operates(readers: Naosd):
    sock = readers.socket

    def reader() -> dict[str, Any]:
        with Client(sock, timeout=30) as c:
            status = c.call("status")
            try:
                c.call("agent.create", name="sneaky", template="echo")
                denied: Any = None
            except NaosError as exc:
                denied = [exc.code, exc.message, exc.exit_code]
            for _ in range(4):
                with contextlib.suppress(NaosError):
                    c.call("shutdown")
            roles = {m["name"]: m["role"] for m in c.call("methods")}
            return {"pid": status["pid"], "denied": denied, "ping": c.call("ping")["pong"],
                    "roles": [roles["status"], roles["agent.create"]],
                    "cli_status": naosctl_as_child(sock, "status", "--json"),
                    "cli_create": naosctl_as_child(sock, "create", "x", "--template", "echo")}

    got = as_user(reader, groups=[100])
    assert got["pid"] == readers.pid
    assert got["denied"] == [
        "permission_denied",
        "agent.create needs the operator role (operate); this connection is a reader "
        "(daemon.reader_group): ask an operator", 4]
    assert got["ping"] is True  # the connection went on after the denial
    assert got["roles"] == ["read", "operate"]
    assert got["cli_status"]["code"] == 0
    assert json.loads(got["cli_status"]["output"])["pid"] == readers.pid
    assert got["cli_create"]["code"] == 4
    assert "agent.create needs the operator role" in got["cli_create"]["output"]
    assert readers.proc.poll() is None  # four shutdowns were denied
    with Client(readers.socket) as owner:
        assert not [a for a in owner.call("agent.list") if a["name"] in ("sneaky", "x")]
    rows = json.loads(readers.ctl("audit", "tail", "--type", "client.denied", "--json",
                                  check=True).stdout)
    counted = Counter((r["detail"]["method"], r["detail"]["uid"]) for r in rows)
    # one row per uid and method at once; the rest are counted for a minute
    assert counted == {("agent.create", NOBODY): 1, ("shutdown", NOBODY): 1}


def test_anyone_else_is_refused_at_accept_naming_who_may(readers: Naosd):
    sock = readers.socket
    os.chmod(sock, 0o666)  # let a stranger reach naosd itself: SO_PEERCRED must refuse
    try:
        got = as_user(lambda: naosctl_as_child(sock, "ping"), groups=[])
    finally:
        os.chmod(sock, 0o660)
    assert got["code"] == 4
    assert (f"uid {NOBODY} is not allowed to use this naosd; operators: root; readers: "
            f"group {USERS}") in got["output"]


PER_UID = f"too many connections from uid {NOBODY} (limit 32 per uid: " \
          "daemon.max_connections_per_uid)"
KEPT = "too many connections (limit 20; the last 2 are kept for naosd's owner and root)"


@pytest.mark.parametrize(("extra", "served", "why"), [
    pytest.param({}, 32, PER_UID, id="per-uid-cap"),
    pytest.param({"NAOS_MAX_CONNECTIONS": "20"}, 18, KEPT, id="slots-kept-for-the-owner"),
])
def test_300_idle_connections_from_another_uid_leave_room_for_the_owner(
        base: Path, extra: dict[str, str], served: int, why: str):
    """Before: 256 idle connections refused everyone, shutdown included, and
    each refusal was an fsynced audit row."""
    os.chmod(base, 0o711)
    env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_CONFIG_HOME=str(base / "cfg"),
                    NAOS_SOCKET_GROUP=USERS,  # the deprecated name of operator_group
                    NAOS_HANDSHAKE_TIMEOUT="120",  # the idle ones stay for the whole test
                    **extra)
    d = start_naosd(base, env=env)
    release_r, release_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _flood(d.socket, 300 - served, report_w, release_r)
    try:
        os.close(report_w)
        report = json.loads(os.read(report_r, 1 << 16) if select.select(
            [report_r], [], [], 120)[0] else b'{"error": "no report"}')
        assert report.get("connected") == 300, report
        assert report["refused"] == 300 - served, report
        assert report["messages"] == [why]
        ping = d.ctl("ping")
        assert ping.returncode == 0, ping.stderr
        status = json.loads(d.ctl("status", "--json", check=True).stdout)
        assert status["connections"] >= served + 1
        stop = d.ctl("shutdown")
        assert stop.returncode == 0, stop.stderr
        assert d.proc.wait(timeout=60) == 0
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (release_r, release_w, report_r):
            os.close(fd)
        assert not reap(d)
    store = Store.open(d.state_dir / "naos.db")
    try:
        rows = [r.detail for r in store.audit_tail(100, type="client.refused")]
    finally:
        store.close()
    assert 1 <= len(rows) <= 3, rows
    assert sum(r["count"] for r in rows) == 300 - served
    assert {r["uid"] for r in rows} == {NOBODY}


def _flood(sock: Path, refusals: int, report_w: int, release_r: int) -> None:
    """The child: 300 connections as nobody (group users), no hello; report
    what naosd answered, hold them until released."""
    held: list[socket.socket] = []
    try:
        os.setgroups([100])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))  # blocking: waits while naosd's backlog is full
            held.append(s)
        answered: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while len(answered) < refusals and time.monotonic() < deadline:
            waiting = [s for s in held if s.fileno() not in answered]
            for s in select.select(waiting, [], [], 1.0)[0]:
                answered[s.fileno()] = (frames(s.recv(1 << 16)) or [{}])[0]
        messages = sorted({str(a.get("message")) for a in answered.values()})
        report = {"connected": len(held), "refused": len(answered), "messages": messages}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report = {"error": f"{type(exc).__name__}: {exc}", "connected": len(held)}
    try:
        os.write(report_w, json.dumps(report).encode())
        select.select([release_r], [], [], 120)
    finally:
        os._exit(0)


HANDLER = '''
import socket, struct

def handle(message, ctx):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    try:
        s.connect(message["socket"])
    except OSError as exc:
        return {"connect_error": str(exc)}
    try:
        s.sendall(bytes.fromhex(message["send"]))
    except OSError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if data.count(b"pong") or data.count(b"permission_denied"):
            break
    return {"received": data.hex()}
'''


def test_an_agents_handler_is_refused_though_it_shares_naosds_uid(daemon: Naosd, base: Path):
    """Before: a handler connected as naosd's own uid (root here) and was an
    operator: it could have called shutdown.  Confinement refuses the socket
    first (tests/test_confine.py); this is the line behind it, so the handler
    here runs unconfined (``--confinement none``) to reach it."""
    handler = base / "knocker.py"
    handler.write_text(HANDLER)
    assert daemon.ctl("create", "knocker", "--source", str(handler),
                      "--confinement", "none").returncode == 0
    send = protocol.encode_frame(protocol.hello("client")) + protocol.encode_frame(
        protocol.request(1, "ping", {}))
    message = json.dumps({"socket": str(daemon.socket), "send": send.hex()})
    run = daemon.ctl("run", "knocker", "--input", message, "--json")
    assert run.returncode == 0, run.stderr
    output = json.loads(run.stdout)["output"]
    assert "connect_error" not in output, output  # it reached naosd: the check is exercised
    [refusal] = frames(bytes.fromhex(output["received"]))
    assert refusal["code"] == "permission_denied"
    assert "is a process of this naosd" in refusal["message"]
    assert "through their channel, not the control socket" in refusal["message"]


@pytest.mark.parametrize("named", [False, True], ids=["default-dir", "named-by-socket"])
def test_a_root_naosd_refuses_a_runtime_dir_another_user_made(named: bool):
    """Before: as root, naosd took over /tmp/naos-0 made by another user, who
    could then swap the socket and receive root's naosctl hello."""
    with short_tempdir() as shared:
        os.chmod(shared, 0o1777)  # like /tmp
        planted = shared / "naos"
        planted.mkdir(mode=0o700)
        os.chown(planted, NOBODY, NOBODY)
        cmd = [sys.executable, "-m", "naosd", "--state-dir", str(shared / "state"),
               "--dashboard-port", "0", *(["--socket", str(planted / "s")] if named else [])]
        env = clean_env(XDG_RUNTIME_DIR=str(shared), XDG_CONFIG_HOME=str(shared / "cfg"))
        log_path = shared / "naosd.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, preexec_fn=sigterm_with_parent)
        d = Naosd(planted / "naosd.sock", shared / "state", proc, log_path, env)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                assert not list(planted.iterdir()), f"naosd started:\n{d.log()}"
                time.sleep(0.05)
            assert proc.returncode == 6, d.log()
        finally:
            reap(d)
        errors = [line for line in d.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, d.log()
        assert (f"{planted}: owned by uid {NOBODY} (nobody), not by naosd's uid 0 (root)"
                in errors[0])
        assert "Traceback" not in d.log()
        assert planted.stat().st_uid == NOBODY and not list(planted.iterdir())

