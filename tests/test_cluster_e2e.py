"""Cluster mode end to end: real naosd nodes on separate loopback addresses
(127.0.0.2 leads, 127.0.0.3 is a member), each with its own state dir,
socket and SQLite file, joined in one Thespian convention with a shared
secret file. No timed assertions: every wait polls with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Naosd, clean_env, descendants, kill_all, reap, short_tempdir, start_naosd

pytestmark = pytest.mark.timeout(240)

LEADER_HOST, MEMBER_HOST = "127.0.0.2", "127.0.0.3"
DEADLINE = 60.0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _loopback_aliases_work() -> bool:
    try:
        _free_port(MEMBER_HOST)
    except OSError:
        return False
    return True


needs_aliases = pytest.mark.skipif(not _loopback_aliases_work(),
                                   reason="127.0.0.3 cannot be bound here")


def _secret(base: Path) -> Path:
    path = base / "cluster.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(48).hex().encode())
    return path


def _env(base: Path, **cluster: str) -> dict[str, str]:
    env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                    XDG_CONFIG_HOME=str(base / "xdg-config"))
    env.update({f"NAOS_CLUSTER_{k.upper()}": v for k, v in cluster.items()})
    return env


def _json(d: Naosd, *args: str) -> Any:
    r = d.ctl(*args, "--json")
    assert r.returncode == 0, f"naosctl {' '.join(args)} failed: {r.stderr}\n{d.log()}"
    return json.loads(r.stdout)


def _poll(what: str, check: Callable[[], Any], *daemons: Naosd) -> Any:
    deadline = time.monotonic() + DEADLINE
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    logs = "\n".join(d.log()[-4000:] for d in daemons)
    raise AssertionError(f"{what}: not within {DEADLINE}s (last: {last!r})\n{logs}")


def _node(d: Naosd, name: str) -> dict[str, Any] | None:
    view = _json(d, "cluster", "nodes")
    return next((n for n in view["nodes"] if n["name"] == name), None)


def _agent(d: Naosd, name: str) -> dict[str, Any]:
    view = _json(d, "cluster", "nodes")
    return next(a for a in view["agents"] if a["name"] == name)


class Cluster:
    """A leader "a" on 127.0.0.2 and members "b" on 127.0.0.3 (a new port for
    each), each with its own state dir, socket and SQLite file."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.common = {"enabled": "1", "capabilities": "gpu", "heartbeat_s": "0.2",
                       "lost_after": "5", "reregister_s": "10", "secret_file": str(_secret(top))}
        self.leader_addr = f"{LEADER_HOST}:{_free_port(LEADER_HOST)}"
        self.started: list[Naosd] = []

    def _start(self, name: str, **cluster: str) -> Naosd:
        base = self.top / f"{name}{len(self.started)}"
        base.mkdir(mode=0o700)
        d = start_naosd(base, env=_env(base, node=name[0], **self.common, **cluster))
        self.started.append(d)
        return d

    def start_leader(self) -> Naosd:
        return self._start("a", bind=self.leader_addr)

    def start_member(self, leader: Naosd) -> Naosd:
        m = self._start("b", bind=f"{MEMBER_HOST}:{_free_port(MEMBER_HOST)}",
                        leader=self.leader_addr)
        _poll("member b joined", lambda: (_node(leader, "b") or {}).get("state") == "up",
              leader, m)
        return m


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with short_tempdir() as top:
        c = Cluster(top)
        try:
            yield c
        finally:
            survivors = [pid for d in c.started for pid in reap(d)]
            assert not survivors, f"processes outlived naosd: {survivors}"


@needs_aliases
def test_agent_placed_on_member_moves_to_leader_when_member_dies(cluster: Cluster) -> None:
    a = cluster.start_leader()
    member = cluster.start_member(a)
    b_node = _node(a, "b")
    assert b_node is not None and b_node["capabilities"] == ["gpu"]
    assert b_node["address"].startswith(MEMBER_HOST + ":")

    # x runs on the leader (no requirements: local), so the leader is busier
    _json(a, "create", "x", "--template", "echo")
    assert _agent(a, "x")["node"] == "a"
    # g needs gpu: both have it, b is the least loaded -> b
    _json(a, "create", "g", "--template", "echo", "--require", "gpu")
    _poll("g running on b", lambda: _agent(a, "g") == {
        "name": "g", "node": "b", "state": "running", "requires": ["gpu"]}, a, member)
    # h is pinned to b by name
    _json(a, "create", "h", "--template", "echo", "--require", "node=b")
    _poll("h running on b", lambda: _agent(a, "h")["node"] == "b"
          and _agent(a, "h")["state"] == "running", a, member)

    # placed on another node, g runs unconfined in its actor there, and inspect says so
    assert _json(a, "inspect", "g")["confinement"]["mode"] == "remote-unconfined"
    assert "NOT confined" in a.ctl("inspect", "g").stdout
    assert _json(a, "inspect", "x")["confinement"]["mode"] == "full"

    # the agent really runs in the member's process tree, and answers
    ran = _json(a, "run", "g", "--input", '{"hello": 1}')
    member_tree = set(descendants(member.pid))
    assert ran["pid"] in member_tree
    assert ran["output"] == {"hello": 1}
    status = _json(a, "status")
    assert {n["name"] for n in status["cluster"]["nodes"]} == {"a", "b"}
    # every listener of each node is on its cluster address (the dashboard stays on loopback)
    for d, host in ((a, LEADER_HOST), (member, MEMBER_HOST)):
        hosts = {h for h, _ in _listening_addresses({d.pid, *descendants(d.pid)})}
        assert host in hosts and hosts <= {host, "127.0.0.1"}, hosts
    text = a.ctl("status").stdout
    assert "cluster:" in text and "g " in text and " on b" in text

    # the member dies hard: SIGKILL naosd and every process of its tree
    member.remember_tree()
    kill_all([member.pid, *member_tree])
    member.proc.wait(timeout=30)

    _poll("b declared lost", lambda: (_node(a, "b") or {}).get("state") == "lost", a)
    _poll("g restarted on the leader", lambda: _agent(a, "g")["node"] == "a"
          and _agent(a, "g")["state"] == "running", a)
    again = _json(a, "run", "g", "--input", '{"again": true}')
    assert again["output"] == {"again": True}
    assert _json(a, "inspect", "g")["confinement"]["mode"] == "full"  # local now: confined
    assert again["pid"] in set(descendants(a.pid))
    # h can only run on b: reported, not silently dropped
    h = _poll("h unplaceable", lambda: _unplaceable(a, "h"), a)
    assert h["state"] != "running"

    types = [r["type"] for r in _audit(a)]
    assert "cluster.node_joined" in types
    lost = [r for r in _audit(a) if r["type"] == "cluster.node_lost"]
    assert len(lost) == 1 and lost[0]["detail"]["node"] == "b"
    assert "no heartbeat answer" in lost[0]["detail"]["reason"]
    assert sorted(lost[0]["detail"]["agents"]) == ["g", "h"]
    placed = [r["detail"] for r in _audit(a)
              if r["type"] == "agent.placed" and r["agent"] == "g"]
    assert placed[0]["node"] == "b" and placed[-1] == {
        "node": "a", "previous": "b", "requires": ["gpu"]}
    assert any(r["type"] == "agent.unplaceable" and r["agent"] == "h" for r in _audit(a))
    verify = _json(a, "audit", "verify")
    assert verify["ok"] is True

    # b comes back (a new naosd, same name, new port): up again, h can go there
    b = cluster.start_member(a)
    thespian_log = a.state_dir / "thespian.log"

    def old_registration_dropped() -> bool:
        return thespian_log.exists() and "assuming it has died" in thespian_log.read_text(
            errors="replace")

    # (Thespian keeps the dead registration for 3 x reregister_s = 30 s)
    assert not old_registration_dropped(), "the new b came too late to test the overlap"
    a.ctl("stop", "h", check=True)
    a.ctl("start", "h", check=True)
    _poll("h running on the new b", lambda: _agent(a, "h")["node"] == "b"
          and _agent(a, "h")["state"] == "running", a, b)
    # Thespian drops the dead member's old registration late (3 missed
    # re-registrations): that must not take the new b down with it
    _poll("the old registration dropped", old_registration_dropped, a)
    assert (_node(a, "b") or {}).get("state") == "up"
    assert _agent(a, "h") == {"name": "h", "node": "b", "state": "running",
                              "requires": ["node=b"]}
    assert _json(a, "run", "h", "--input", "1")["pid"] in set(descendants(b.pid))


def _unplaceable(d: Naosd, name: str) -> dict[str, Any] | None:
    view = d.agent(name)
    return view if "unplaceable" in (view.get("last_error") or "") else None


def _audit(d: Naosd) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _json(d, "audit", "tail", "-n", "1000")
    return rows


@pytest.mark.parametrize(("bind", "problem"), [
    ("0.0.0.0:7735", "every interface"),
    ("8.8.8.8:7735", "not a private address"),
])
def test_wildcard_or_public_bind_is_refused_without_force(
        base: Path, bind: str, problem: str) -> None:
    key = _secret(base)
    env = _env(base, enabled="1", bind=bind, node="a", secret_file=str(key))
    d = start_naosd(base, env=env, wait=False)
    try:
        assert d.proc.wait(timeout=60) != 0
        assert problem in d.log()
        assert "cluster.bind" in d.log()
    finally:
        reap(d)
    # the same check through --check-config, and force_public lifts it
    forced = _env(base, enabled="1", bind=bind, node="a", secret_file=str(key),
                  force_public="1")
    assert _check_config(forced).returncode == 0
    refused = _check_config(env)
    assert refused.returncode != 0 and problem in refused.stderr


def _check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "naosd", "--check-config"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_secret_file_readable_by_others_is_refused(base: Path) -> None:
    key = _secret(base)
    os.chmod(key, 0o644)
    port = _free_port("127.0.0.1")
    d = start_naosd(base, env=_env(base, enabled="1", bind=f"127.0.0.1:{port}", node="a",
                                   secret_file=str(key)), wait=False)
    try:
        assert d.proc.wait(timeout=60) != 0
        assert "readable by others" in d.log()
    finally:
        reap(d)


def test_cluster_off_by_default_listens_on_loopback_only(daemon: Naosd) -> None:
    r = daemon.ctl("cluster", "nodes")
    assert r.returncode != 0 and "cluster mode is off" in r.stderr
    assert _json(daemon, "status")["cluster"] is None
    pids = {daemon.pid, *descendants(daemon.pid)}
    listening = _listening_addresses(pids)
    assert listening, "found no listening socket of the daemon's tree"
    assert all(host == "127.0.0.1" for host, _ in listening), listening


def _listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and inode in inodes:  # LISTEN
                hexip, hexport = local.split(":")
                ip = socket.inet_ntoa(bytes.fromhex(hexip)[::-1])
                found.add((ip, int(hexport, 16)))
    return found


def test_require_is_checked_at_create(daemon: Naosd) -> None:
    r = daemon.ctl("create", "bad", "--template", "echo", "--require", "GPU!")
    assert r.returncode != 0 and "required capability" in r.stderr
    r = daemon.ctl("create", "bad", "--template", "echo", "--require", "node=a",
                   "--require", "node=b")
    assert r.returncode != 0 and "two nodes" in r.stderr
    assert daemon.ctl("status", "bad").returncode != 0


def test_requirement_without_cluster_mode_is_refused_as_unplaceable(daemon: Naosd) -> None:
    out = daemon.ctl("create", "g", "--template", "echo", "--require", "gpu", "--timeout", "5")
    assert out.returncode == 1 and "unplaceable" in out.stderr, out.stderr
    assert "cluster mode is off" in out.stderr
    assert daemon.ctl("status", "g").returncode == 4  # nothing was written
    assert not any(r.get("agent") == "g" for r in _audit(daemon))
    assert daemon.stop(signal.SIGTERM) == 0


@needs_aliases
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_member_fences_agents_of_a_leader_that_is_gone(cluster: Cluster, how: str) -> None:
    """Thespian never stops an actor whose parent is on another node: the
    member kills what the leader placed there once its beats stop."""
    a = cluster.start_leader()
    member = cluster.start_member(a)
    _json(a, "create", "g", "--template", "echo", "--require", "node=b")
    _poll("g running on b", lambda: _agent(a, "g")["state"] == "running", a, member)
    pid = _json(a, "run", "g", "--input", "1")["pid"]
    assert pid in set(descendants(member.pid))

    if how == "sigkill":
        a.remember_tree()
        kill_all([a.pid, *descendants(a.pid)])
        a.proc.wait(timeout=30)
    else:
        assert a.stop(signal.SIGTERM) == 0

    _poll("g fenced on b", lambda: pid not in set(descendants(member.pid)), member)
    fenced = _poll("fence audited on b", lambda: [
        r for r in _audit(member) if r["type"] == "cluster.fenced"], member)
    assert pid in fenced[0]["detail"]["pids"]
    assert member.proc.poll() is None  # the member itself keeps running
    assert _json(member, "status")["cluster"]["node"] == "b"


@needs_aliases
def test_remote_agent_that_crashes_is_restarted_on_its_node_and_stops_on_request(
        cluster: Cluster) -> None:
    src = cluster.top / "crashy.py"
    src.write_text("def handle(message, ctx):\n"
                   "    if message == 'boom':\n"
                   "        raise RuntimeError('boom')\n"
                   "    return message\n")
    a = cluster.start_leader()
    b = cluster.start_member(a)
    _json(a, "create", "k", "--source", str(src), "--require", "node=b")
    _poll("k running", lambda: _agent(a, "k")["state"] == "running", a, b)
    first = _json(a, "run", "k", "--input", '"x"')["pid"]
    assert first in set(descendants(b.pid))
    crashed = a.ctl("run", "k", "--input", '"boom"')
    assert crashed.returncode != 0 and "RuntimeError: boom" in crashed.stderr
    view = _poll("k restarted", lambda: (lambda v: v if v["state"] == "running"
                                         and v["pid"] != first else None)(
        a.agent("k")), a, b)  # status exits 3 while it restarts
    assert view["node"] == "b" and view["restarts"] == 1
    assert "RuntimeError: boom" in view["last_error"]
    second = _json(a, "run", "k", "--input", '"y"')["pid"]
    assert second in set(descendants(b.pid))
    a.ctl("stop", "k", check=True)
    _poll("k's process gone from b", lambda: second not in set(descendants(b.pid)), b)
    assert a.agent("k")["state"] == "stopped"
