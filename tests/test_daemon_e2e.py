"""The daemon lifecycle and the CLI contract, against the real naosd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd, clean_env, descendants, naosctl, reap, start_naosd, wait_gone

from naosctl.client import Client

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def restarted(d: Naosd) -> Iterator[Naosd]:
    """Start a new naosd on the same socket and state as ``d`` (stopped)."""
    again = start_naosd(d.socket.parent, state_dir=d.state_dir)
    try:
        yield again
    finally:
        again.stop()
        assert not reap(again)


def audit_types(d: Naosd, n: int = 200) -> list[str]:
    out = d.ctl("audit", "tail", "-n", str(n), "--json", check=True).stdout
    return [row["type"] for row in json.loads(out)]


def test_installed_console_scripts_run():
    bindir = Path(sys.executable).parent
    for name in ("naosd", "naosctl", "naos"):
        exe = shutil.which(name, path=str(bindir)) or shutil.which(name)
        assert exe, f"console script {name} is not installed"
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "0." in out.stdout


def test_ping_status_and_graceful_shutdown(daemon: Naosd):
    ping = daemon.ctl("ping")
    assert ping.returncode == 0, ping.stderr
    assert f"pid {daemon.pid}" in ping.stdout

    status = json.loads(daemon.ctl("status", "--json", check=True).stdout)
    assert status["pid"] == daemon.pid
    assert status["socket"] == str(daemon.socket)
    assert status["actors"]["state"] == "running"
    assert status["actors"]["children"], "root supervisor has no children"
    assert all(c["pid"] for c in status["actors"]["children"])
    text = daemon.ctl("status", check=True).stdout
    assert "naosd" in text and "uptime" in text and "root" in text

    tree = daemon.remember_tree()
    assert tree, "no actor processes under naosd"
    out = daemon.ctl("shutdown")
    assert out.returncode == 0, out.stderr
    assert daemon.proc.wait(timeout=30) == 0
    assert not daemon.socket.exists()
    assert wait_gone(tree, 10) == []
    with restarted(daemon) as again:
        types = audit_types(again)
        assert types.count("daemon.start") == 2
        assert "daemon.stop" in types


def test_sigterm_is_graceful_and_removes_the_socket(daemon: Naosd):
    tree = daemon.remember_tree()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    assert wait_gone(tree, 10) == []
    assert "stopping (SIGTERM)" in daemon.log()


def test_sigint_is_graceful_too(daemon: Naosd):
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket.exists()
    assert "stopping (SIGINT)" in daemon.log()


def test_second_instance_refused_and_first_untouched(daemon: Naosd, base: Path):
    second = subprocess.run(
        [sys.executable, "-m", "naosd", "--socket", str(base / "s2"),
         "--state-dir", str(daemon.state_dir), "--dashboard-port", "0"],
        capture_output=True, text=True, timeout=60, env=daemon.env)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert f"pid {daemon.pid}" in second.stderr
    other_state = subprocess.run(
        [sys.executable, "-m", "naosd", "--socket", str(daemon.socket),
         "--state-dir", str(base / "other"), "--dashboard-port", "0"],
        capture_output=True, text=True, timeout=60, env=daemon.env)
    assert other_state.returncode == 1
    assert "already answering" in other_state.stderr
    assert daemon.ctl("ping").returncode == 0


def test_killed_daemon_leaves_no_actor_and_stale_socket_is_replaced(daemon: Naosd):
    tree = daemon.remember_tree()
    daemon.proc.kill()
    daemon.proc.wait(timeout=10)
    assert daemon.socket.exists(), "SIGKILL cannot remove the socket"
    assert wait_gone(tree, 10) == [], "actor processes outlived a SIGKILLed naosd"
    with restarted(daemon) as again:
        assert again.ctl("ping").returncode == 0
        verify = again.ctl("audit", "verify", "--json")
        assert verify.returncode == 0, verify.stdout


def test_not_running_fails_fast_with_exit_codes(base: Path):
    sock = str(base / "nothing.sock")
    status = naosctl("--socket", sock, "status")
    assert status.returncode == 3
    assert sock in status.stderr and "naosd" in status.stderr
    assert naosctl("--socket", sock, "ping").returncode == 4
    assert naosctl("--socket", sock, "shutdown").returncode == 7
    assert naosctl("--socket", sock, "audit", "verify").returncode == 7
    assert naosctl("--socket", sock, "bogus-command").returncode == 2


def test_audit_tail_search_export_verify(daemon: Naosd, base: Path):
    daemon.ctl("reload", check=True)
    rows = json.loads(daemon.ctl("audit", "tail", "-n", "5", "--json", check=True).stdout)
    assert [r["type"] for r in rows][-1] == "config.reload"
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    only = json.loads(daemon.ctl("audit", "tail", "--type", "daemon.start", "--json").stdout)
    assert {r["type"] for r in only} == {"daemon.start"}
    found = json.loads(daemon.ctl("audit", "search", "reload", "--json", check=True).stdout)
    assert found and all("reload" in json.dumps(r) for r in found)
    nothing = daemon.ctl("audit", "search", "no-such-thing-%_")
    assert nothing.returncode == 0 and "no matching" in nothing.stderr
    out = base / "audit.csv"
    daemon.ctl("audit", "export", "--format", "csv", "-o", str(out), check=True)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("seq,ts,actor,agent,type")
    assert len(lines) - 1 == len(json.loads(daemon.ctl("audit", "tail", "-n", "1000",
                                                       "--json").stdout))
    jsonl = daemon.ctl("audit", "export", check=True).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in jsonl] == list(range(1, len(jsonl) + 1))
    verify = daemon.ctl("audit", "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout
    assert daemon.ctl("audit", "tail", "--since", "not-a-time").returncode == 2


def test_audit_tail_follow_streams_new_rows(daemon: Naosd):
    follower = subprocess.Popen(
        [sys.executable, "-m", "naosctl", "--socket", str(daemon.socket), "audit", "tail",
         "-n", "0", "-f", "--json"], stdout=subprocess.PIPE, text=True, env=daemon.env)
    try:
        time.sleep(1.0)
        daemon.ctl("reload", check=True)
        line = _readline(follower, timeout=15)
        assert json.loads(line)["type"] == "config.reload"
    finally:
        follower.kill()
        follower.wait(timeout=10)
        follower.stdout.close()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box and box[0], "no line arrived"
    return box[0]


def test_tampering_is_detected_through_the_cli(daemon: Naosd):
    for _ in range(3):
        daemon.ctl("reload", check=True)
    assert daemon.stop() == 0
    db = daemon.state_dir / "naos.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET detail = '{\"origin\":\"forged\"}' WHERE seq = 3")
    with restarted(daemon) as again:
        verify = again.ctl("audit", "verify", "--json")
        assert verify.returncode == 1
        result = json.loads(verify.stdout)
        assert result["ok"] is False and result["first_bad_seq"] == 3


def test_deleting_the_last_rows_is_detected_against_the_checkpoint(daemon: Naosd):
    for _ in range(3):
        daemon.ctl("reload", check=True)
    assert daemon.stop() == 0
    db = daemon.state_dir / "naos.db"
    with sqlite3.connect(db) as conn:
        top = conn.execute("SELECT max(seq) FROM audit").fetchone()[0]
        conn.execute("DELETE FROM audit WHERE seq > ?", (top - 2,))
    with restarted(daemon) as again:
        for _ in range(5):  # more rows than were deleted: the evidence must stay
            again.ctl("reload", check=True)
        verify = again.ctl("audit", "verify")
        assert verify.returncode == 1, verify.stdout
        assert "BROKEN" in verify.stdout


def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(base: Path):
    conf = base / "naosd.toml"
    conf.write_text('[daemon]\nlog_level = "info"\n')
    d = start_naosd(base, "--config", str(conf))
    try:
        conf.write_text('[daemon]\nlog_level = "debug"\nrequest_timeout = 7\n')
        d.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "config.reload" in audit_types(d))
        shown = json.loads(d.ctl("config", "show", "--json", check=True).stdout)
        assert shown["config"]["daemon"]["request_timeout"] == 7.0
        conf.write_text('[daemon]\nlog_level = "shouty"\n')
        d.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "config.reload_failed" in audit_types(d))
        assert d.ctl("ping").returncode == 0
        assert "daemon.log_level" in d.log()
        bad = d.ctl("reload")
        assert bad.returncode == 6 and "shouty" in bad.stderr
    finally:
        d.stop()
        assert not reap(d)


def _wait_for(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_json_log_format(base: Path):
    d = start_naosd(base, "--log-format", "json")
    try:
        lines = [json.loads(x) for x in d.log().splitlines() if x.startswith("{")]
        assert any("ready" in x["msg"] for x in lines)
        assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    finally:
        d.stop()
        assert not reap(d)


def test_config_check_and_print(base: Path):
    env = clean_env(XDG_CONFIG_HOME=str(base / "c"), XDG_STATE_HOME=str(base / "st"))
    printed = subprocess.run([sys.executable, "-m", "naosd", "--print-default-config"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert printed.returncode == 0 and "[dashboard]" in printed.stdout
    conf = base / "n.toml"
    conf.write_text(printed.stdout)
    ok = subprocess.run([sys.executable, "-m", "naosd", "--config", str(conf),
                         "--check-config"], capture_output=True, text=True, env=env,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    conf.write_text("[storage]\nsynchronous = 'sometimes'\n")
    bad = subprocess.run([sys.executable, "-m", "naosd", "--config", str(conf),
                          "--check-config"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 6
    assert str(conf) in bad.stderr and "storage.synchronous" in bad.stderr


def test_many_concurrent_clients_get_their_own_answers(daemon: Naosd):
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Client(daemon.socket, timeout=30) as c:
                for _ in range(20):
                    assert c.call("ping")["pid"] == daemon.pid
                    assert c.call("actors.ping")["pong"] is True
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_only_loopback_listeners_in_the_daemon_tree(daemon: Naosd):
    pids = [daemon.pid, *descendants(daemon.pid)]
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if inode in inodes and (state == "0A" or "udp" in table):
                    listening.append((table, local))
    assert listening, "expected at least the dashboard and actor listeners"
    loopback = {"0100007F", "00000000000000000000000001000000"}
    bad = [(t, a) for t, a in listening if a.split(":")[0] not in loopback]
    assert not bad, f"listening beyond loopback: {bad}"
