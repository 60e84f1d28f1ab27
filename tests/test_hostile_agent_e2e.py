"""A hostile agent against the real naosd: every escape is refused (issue 15).

One daemon for the module. ``tests/hostile_agent.py`` is registered with the
real ``naosctl create --source`` (twice: ``hostile`` without grants,
``hostile-net`` with ``--grant net``) next to a ``victim`` agent that keeps a
secret in its work dir, its state and its budget. Each case sends the hostile
agent one message (``naosctl run``) naming one escape; the agent tries it from
inside its handler and replies with what happened; the case asserts the
refusal and its error. The controls (the granted connection, the victim's
own reads) show the attempts themselves work, so no case passes because an
attempt was broken.

Skipped as a whole, naming what is missing, where this kernel cannot confine
(``probe().missing()``; docs/security.md, "Per platform")."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import Naosd, reap, short_tempdir, sockets_of, start_naosd, wait_for

from naosd.agents.snapshots import digest_of
from naosd.runtime.confine.support import probe
from naosd.runtime.procs import descendants, process_alive

SUPPORT = probe()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(SUPPORT.missing()),
                       reason=f"this kernel cannot confine agents (missing: "
                              f"{', '.join(SUPPORT.missing())})"),
]

HOSTILE = Path(__file__).with_name("hostile_agent.py")
SECRET = "victim-secret-4711"
VICTIM = f'''
import os
def handle(msg, ctx):
    ctx.state["secret"] = "{SECRET}"
    with open("secret.txt", "w") as fh:
        fh.write("{SECRET}")
    return {{"pid": os.getpid(), "work": os.getcwd(),
            "read_back": open("secret.txt").read()}}
'''
REFUSED = (errno.EPERM, errno.EACCES)


class Greeter:
    """A TCP server on 127.0.0.1 that greets whoever connects and counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.sendall(b"welcome\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=10)


@dataclass
class World:
    daemon: Naosd
    base: Path
    greeter: Greeter
    victim: dict[str, Any] = field(default_factory=dict)
    hostile: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.daemon.state_dir

    def attempt(self, what: str, agent: str = "hostile", **args: Any) -> dict[str, Any]:
        message = json.dumps({"try": what, "args": args})
        if len(message) > 100_000:  # past what one argv string may hold: standard input
            done = self.daemon.ctl("run", agent, "--json", "--input", "-", input=message)
        else:
            done = self.daemon.ctl("run", agent, "--json", "--input", message)
        assert done.returncode == 0, done.stderr
        reply: dict[str, Any] = json.loads(done.stdout)["output"]
        return reply

    def refused(self, what: str, agent: str = "hostile", errnos: tuple[int, ...] = REFUSED,
                **args: Any) -> dict[str, Any]:
        """Try ``what``; assert it failed with one of ``errnos``."""
        reply = self.attempt(what, agent, **args)
        assert not reply["ok"], f"{what}({args}) was NOT refused: {reply}"
        assert reply["errno"] in errnos, reply
        return reply

    def agent(self, name: str) -> dict[str, Any]:
        done = self.daemon.ctl("inspect", name, "--json")
        assert done.returncode == 0, done.stderr
        body: dict[str, Any] = json.loads(done.stdout)
        return body


def _create(d: Naosd, name: str, source: Path, *extra: str) -> None:
    done = d.ctl("create", name, "--source", str(source), *extra)
    assert done.returncode == 0, done.stdout + done.stderr + d.log()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with short_tempdir() as base:
        d = start_naosd(base)
        greeter = Greeter()
        try:
            (base / "victim.py").write_text(VICTIM)
            _create(d, "victim", base / "victim.py")
            _create(d, "hostile", HOSTILE)
            _create(d, "hostile-net", HOSTILE, "--grant", "net")
            w = World(d, base, greeter)
            cost = d.ctl("cost", "set", "victim", "--budget", "$7/day")
            assert cost.returncode == 0, cost.stderr
            done = d.ctl("run", "victim", "--json")
            assert done.returncode == 0, done.stderr
            w.victim = json.loads(done.stdout)["output"]
            assert w.victim["read_back"] == SECRET  # the victim itself can
            w.hostile = w.attempt("whoami")["value"]
            d.remember_tree()
            yield w
        finally:
            greeter.close()
            survivors = reap(d)
            assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


# -- naosd's control plane and secrets ---------------------------------------------

def test_control_socket_is_refused(world: World):
    world.refused("unix", path=str(world.daemon.socket))
    world.refused("unix", "hostile-net", path=str(world.daemon.socket))  # net is not AF_UNIX


def test_agent_socket_is_refused(world: World):
    """The socket channels are opened on: a second channel would be a new identity."""
    world.refused("unix", path=str(world.base / "agents.sock"))


@pytest.mark.parametrize("name", ["naos.db", "naos.db-wal", "naos.db-shm", "audit.head",
                                  "dashboard.token", "actors.session", "wasm-cache/hmac.key"])
def test_state_dir_files_are_unreadable(world: World, name: str):
    assert (world.state / name).exists(), f"{name} should exist for this test to mean anything"
    world.refused("read", path=str(world.state / name))


def test_audit_key_is_unreadable(world: World):
    key = world.base / "xdg-config" / "naos" / "audit.key"
    assert key.exists()
    world.refused("read", path=str(key))


def test_state_dir_cannot_be_listed(world: World):
    world.refused("listdir", path=str(world.state))
    world.refused("listdir", path=str(world.base))


def test_state_files_keep_their_mode(world: World):
    db = world.state / "naos.db"
    before = db.stat().st_mode
    world.refused("chmod", path=str(db))
    assert db.stat().st_mode == before


def test_database_cannot_be_hard_linked_into_the_work_dir(world: World):
    target = Path(world.hostile["cwd"]) / "db-link"
    world.refused("link", errnos=(*REFUSED, errno.EXDEV), source=str(world.state / "naos.db"),
                  target=str(target))
    assert not target.exists()


def test_system_secrets_and_home_are_out_of_reach(world: World):
    """naosd runs as root here: only confinement keeps these from agent code."""
    for path in ("/etc/shadow", "/etc/passwd", "/root/.bash_history"):
        if Path(path).exists():
            world.refused("read", path=path)
    world.refused("listdir", path=str(Path.home()))
    world.refused("listdir", path="/")


def test_exec_of_another_program_is_refused(world: World):
    world.refused("exec", path="/bin/sh")
    assert world.attempt("whoami")["value"]["pid"] == world.hostile["pid"]


@pytest.mark.parametrize("agent", ["hostile", "hostile-net"])
@pytest.mark.parametrize(("family", "kind"), [
    pytest.param(socket.AF_UNIX, socket.SOCK_DGRAM, id="unix"),
    pytest.param(socket.AF_NETLINK, socket.SOCK_RAW, id="netlink"),
    pytest.param(socket.AF_PACKET, socket.SOCK_RAW, id="packet"),
])
def test_other_socket_families_are_refused_even_with_net(world: World, agent: str,
                                                        family: int, kind: int):
    world.refused("socket", agent, family=int(family), kind=int(kind))


def test_daemon_memory_and_environment_are_unreadable(world: World):
    for name in ("environ", "mem", "maps"):
        world.refused("read", path=f"/proc/{world.daemon.pid}/{name}")


# -- other agents --------------------------------------------------------------------

def test_another_agents_files_are_out_of_reach(world: World):
    secret = Path(world.victim["work"]) / "secret.txt"
    world.refused("read", path=str(secret))
    world.refused("listdir", path=world.victim["work"])
    world.refused("write", path=str(Path(world.victim["work"]) / "planted.txt"))
    world.refused("write", path=str(secret))
    assert secret.read_text() == SECRET
    assert not (Path(world.victim["work"]) / "planted.txt").exists()


def test_another_agents_code_is_out_of_reach(world: World):
    world.refused("read", path=world.agent("victim")["source"])


def test_writes_outside_the_work_dir_are_refused(world: World):
    own_code = world.agent("hostile")["source"]
    for path in (own_code, str(world.base / "escape.txt"), "/tmp/naos-hostile-escape.txt",
                 str(world.state / "agents" / "planted.txt")):
        world.refused("write", path=path)
        assert path == own_code or not Path(path).exists()
    assert Path(own_code).read_text() == HOSTILE.read_text()


def test_its_own_work_dir_is_writable(world: World):
    """The control: writing is refused by place, not in general."""
    path = Path(world.hostile["cwd"]) / "mine.txt"
    assert world.attempt("write", path=str(path))["ok"]
    assert path.exists()


# -- processes -----------------------------------------------------------------------

def _actor_pids(world: World) -> list[int]:
    return [p for p in descendants(world.daemon.pid)
            if p not in (world.victim["pid"], world.hostile["pid"])]


def test_signals_to_naosd_actors_and_agents_are_refused(world: World):
    # SIGWINCH is ignored by default: a delivered one would be harmless, a
    # refusal is what is asserted.
    world.refused("kill", pid=world.daemon.pid, sig=int(signal.SIGWINCH))
    world.refused("kill", pid=world.victim["pid"], sig=int(signal.SIGKILL))
    for pid in _actor_pids(world):
        world.refused("kill", pid=pid, sig=int(signal.SIGKILL))
    assert process_alive(world.victim["pid"]) and world.daemon.proc.poll() is None


def test_ptrace_is_refused(world: World):
    for pid in (world.daemon.pid, world.victim["pid"], *_actor_pids(world)[:3]):
        world.refused("ptrace", pid=pid)


def test_fork_is_refused_without_a_process_limit(world: World):
    world.refused("fork")
    reply = world.attempt("fork_bomb", most=64)
    assert not reply["ok"] and reply["errno"] == errno.EPERM, reply


def test_a_fork_bomb_stops_at_the_process_limit(world: World):
    if os.getuid() == 0:
        pytest.skip("RLIMIT_NPROC is not enforced for uid 0: naosd runs as root here, so "
                    "processes = N is not capped by count (docs/security.md)")
    if not SUPPORT.user_ns:
        pytest.skip("no user namespaces: processes = N is not capped by count")
    _create(world.daemon, "forker", HOSTILE, "--limit", "processes=4")
    try:
        reply = world.attempt("fork_bomb", "forker", most=64)
        assert not reply["ok"] and reply["errno"] == errno.EAGAIN, reply
    finally:
        world.daemon.ctl("delete", "forker")


def test_cpu_past_the_limit_ends_the_handler(world: World):
    _create(world.daemon, "spinner", HOSTILE, "--limit", "cpu_seconds=1")
    try:
        done = world.daemon.ctl("run", "spinner", "--input",
                                json.dumps({"try": "spin", "args": {"seconds": 30}}))
        assert done.returncode != 0 and "died during the run" in done.stderr, done
        why = wait_for(lambda: "SIGXCPU" in str(world.agent("spinner")["last_error"])
                       and world.agent("spinner")["last_error"], timeout=60)
        assert "handler killed by SIGXCPU" in why
    finally:
        world.daemon.ctl("delete", "spinner")


def test_memory_past_the_limit_is_refused(world: World):
    reply = world.attempt("allocate", mib=2048)  # the default limit is 1024 MiB
    assert not reply["ok"] and reply["error"].startswith("MemoryError"), reply
    assert world.attempt("allocate", mib=16)["ok"]  # the control


# -- network -------------------------------------------------------------------------

def test_actor_admin_and_dashboard_ports_are_refused(world: World):
    pids = [world.daemon.pid, *descendants(world.daemon.pid)]
    ports = {port for _, port in sockets_of(pids, "tcp", True) + sockets_of(pids, "tcp6", True)}
    assert len(ports) >= 4, ports  # the admin, the root and other actors, the dashboard
    for port in sorted(ports):
        world.refused("tcp", port=port)


def test_outbound_tcp_needs_the_net_grant(world: World):
    before = world.greeter.connections
    world.refused("tcp", port=world.greeter.port)
    assert world.greeter.connections == before
    granted = world.attempt("tcp", "hostile-net", port=world.greeter.port)
    assert granted == {"ok": True, "value": "welcome\n"}
    assert world.greeter.connections == before + 1


# -- identity on the channel ---------------------------------------------------------

def test_the_channel_is_the_agents_identity(world: World):
    start = world.attempt("channel", method="agent.start", params={"agent": "victim"})
    assert start["ok"], start
    assert start["value"]["agent"] == "hostile"
    assert SECRET not in json.dumps(start["value"])


def test_another_agents_budget_cannot_be_read_through_the_channel(world: World):
    own = world.attempt("channel", method="budget.get", params={"agent": "victim"})
    assert not own["ok"] and own["code"] == "not_found", own  # hostile has no budget


def test_a_forged_handler_pid_is_refused(world: World):
    forged = world.attempt("channel", method="agent.loaded",
                           params={"ok": True, "pid": world.daemon.pid})
    assert not forged["ok"] and forged["code"] == "permission_denied", forged


@pytest.mark.parametrize("method", ["agent.create", "cost.set", "agent.kill", "audit.tail",
                                    "dashboard.url"])
def test_control_methods_are_not_on_the_channel(world: World, method: str):
    reply = world.attempt("channel", method=method, params={"name": "victim"})
    assert not reply["ok"] and reply["code"] == "method_not_found", reply


def test_state_written_by_the_hostile_agent_stays_its_own(world: World):
    assert world.attempt("state", key="secret", value="overwritten")["ok"]
    again = json.loads(world.daemon.ctl("run", "victim", "--json").stdout)["output"]
    assert again["read_back"] == SECRET


# -- what the handler holds ----------------------------------------------------------

def test_environment_holds_nothing_of_naosd(world: World):
    env = world.attempt("environ")["value"]
    assert set(env) <= {"LC_CTYPE"}, env


def test_no_descriptor_reaches_a_file_of_naosd(world: World):
    fds = world.attempt("descriptors")["value"]
    files = {fd: target for fd, target in fds.items()
             if target.startswith("/") and target not in ("/dev/null",)
             and not target.startswith("/proc/")}
    assert not files, fds
    sockets = [t for t in fds.values() if t.startswith("socket:")]
    assert len(sockets) <= 3, fds  # the channel and asyncio's self-pipe pair


def test_naosd_survived_and_the_audit_chain_holds(world: World):
    assert world.daemon.proc.poll() is None
    verify = world.daemon.ctl("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- a forged run answer -------------------------------------------------------------

def _audit_runs(world: World, agent: str) -> list[dict[str, Any]]:
    done = world.daemon.ctl("audit", "tail", "--agent", agent, "-n", "500", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    return [r for r in rows if r["type"] == "agent.run"]


@pytest.mark.parametrize(("reply", "why"), [
    pytest.param({"output": 1, "logs": [["only", "two"]]}, "logs[0] must be", id="line-shape"),
    pytest.param({"output": 1, "logs": [7]}, "logs[0] must be", id="line-type"),
    pytest.param({"output": 1, "logs": 7}, "logs must be a list", id="logs-not-a-list"),
    pytest.param({"output": 1, "ms": "soon"}, "ms must be a number", id="ms-not-a-number"),
    pytest.param({"output": 1, "logs": [["t", "info", "x"]] * 5000}, "5000 log lines",
                 id="too-many-lines"),
    pytest.param({"output": 1, "logs": [["t", "info", "x" * 9000]]}, "logs[0] is too long",
                 id="line-too-long"),
    pytest.param({"output": 1, "state": {"set": {"": 1}}}, "bad key", id="state-bad-key"),
    pytest.param(["not", "a", "map"], "must be a map", id="not-a-map"),
])
def test_a_forged_run_answer_is_refused_and_audited(world: World, reply: Any, why: str):
    """The handler owns its process, so naos.host's limits are its to skip:
    naosd checks the answer itself. A malformed one fails that run with an
    error naming what was wrong, and the run is still audited (before, a bad
    log line broke the run's commit: no audit row, and every other record of
    the same group commit lost with it)."""
    before = len(_audit_runs(world, "hostile"))
    assert world.attempt("forge_reply", reply=reply)["ok"]
    done = world.daemon.ctl("run", "hostile", "--input", "{}")
    assert done.returncode != 0, done.stdout
    assert why in done.stderr and "internal" not in done.stderr.lower(), done.stderr
    runs = _audit_runs(world, "hostile")
    assert len(runs) == before + 2, runs[-3:]  # the run that armed it, and this one
    assert runs[-1]["detail"]["ok"] is False
    assert world.attempt("whoami")["ok"]  # the channel still serves


def test_a_forged_crash_reason_is_cut(world: World):
    assert world.attempt("forge_reply", reply={"crashed": "x" * 200_000})["ok"]
    done = world.daemon.ctl("run", "hostile", "--input", "{}")
    assert done.returncode != 0 and "[cut]" in done.stderr, done.stderr[:300]
    assert len(done.stderr) < 3000


# -- what naosctl shows --------------------------------------------------------------

def test_status_shows_what_this_kernel_confines_with(world: World):
    done = world.daemon.ctl("status", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)["confinement"]
    assert body["missing"] == [] and body["landlock_abi"] == SUPPORT.landlock_abi
    assert body["seccomp_filter"] and body["no_new_privs"]
    assert (body["user_ns"], body["net_ns"]) == (SUPPORT.user_ns, SUPPORT.net_ns)
    text = world.daemon.ctl("status").stdout
    assert "agent confinement: full available" in text
    assert f"landlock: ABI {SUPPORT.landlock_abi}" in text


def test_inspect_shows_confinement_digest_and_handler_pid(world: World):
    view = world.agent("hostile")
    digest = digest_of({HOSTILE.name: HOSTILE.read_bytes()})
    assert view["digest"] == digest and f"/code/{digest}/" in view["source"]
    assert view["handler_pid"] == world.hostile["pid"]  # naosd's channel, not the handler's word
    conf = view["confinement"]
    assert conf["mode"] == "full" and conf["grants"] == []
    assert conf["limits"] == {"memory_mb": 1024, "cpu_seconds": 0, "open_files": 256,
                              "processes": 0}
    assert conf["layers"] == {"landlock_abi": SUPPORT.landlock_abi, "seccomp": True,
                              "user_ns": SUPPORT.user_ns, "net_ns": SUPPORT.net_ns}
    seen = conf["observed"]
    assert seen["no_new_privs"] and seen["seccomp"] == "filter"
    assert seen["capabilities"] == "0000000000000000"
    assert world.agent("hostile-net")["confinement"]["grants"] == ["net"]
    assert world.agent("hostile-net")["confinement"]["layers"]["net_ns"] is False
    text = world.daemon.ctl("inspect", "hostile").stdout
    assert f"digest:       {digest}" in text
    assert f"handler pid:  {world.hostile['pid']}" in text
    assert "confinement:  full (grants: none)" in text and "seccomp filter" in text


def test_an_unconfined_agent_says_so_and_is_audited(world: World):
    """The control for the file cases: the same read works unconfined."""
    _create(world.daemon, "loose", HOSTILE, "--confinement", "none")
    try:
        token = world.state / "dashboard.token"
        assert world.attempt("read", "loose", path=str(token))["ok"]
        assert world.attempt("unix", "loose", path=str(world.daemon.socket))["ok"]
        # ... but naosd refuses its own descendants on the control socket
        hello = world.attempt("control", "loose", path=str(world.daemon.socket),
                              method="status")
        assert not hello["ok"] and hello["code"] == "permission_denied", hello
        conf = world.agent("loose")["confinement"]
        assert conf["mode"] == "none" and conf["layers"]["seccomp"] is False
        assert conf["observed"]["no_new_privs"] is False
        assert "confinement:  none" in world.daemon.ctl("inspect", "loose").stdout
        rows = json.loads(world.daemon.ctl("audit", "tail", "--agent", "loose", "--type",
                                           "agent.created", "--json").stdout)
        assert rows and rows[-1]["detail"]["confinement"] == "none"
    finally:
        world.daemon.ctl("delete", "loose")


def test_a_deleted_agents_files_do_not_pass_to_its_namesake(world: World):
    """naosctl delete forgets the agent's private files: a later agent of the
    same name (other code, another author) does not find them."""
    _create(world.daemon, "tenant", world.base / "victim.py")
    first = json.loads(world.daemon.ctl("run", "tenant", "--json").stdout)["output"]
    assert first["read_back"] == SECRET
    assert world.daemon.ctl("delete", "tenant").returncode == 0
    assert not Path(first["work"]).exists()
    _create(world.daemon, "tenant", HOSTILE)
    try:
        reply = world.attempt("read", "tenant", path=str(Path(first["work"]) / "secret.txt"))
        assert not reply["ok"] and reply["errno"] == errno.ENOENT, reply
    finally:
        world.daemon.ctl("delete", "tenant")


@pytest.mark.parametrize("new_session", [False, True], ids=["same-group", "setsid"])
def test_what_a_handler_forks_ends_with_its_agent(world: World, new_session: bool):
    """With processes > 0 a handler may fork; a child must not outlive its
    agent (it would hold the agent's channel). setsid/setpgid are refused,
    and stopping the handler ends its whole process group."""
    _create(world.daemon, "forker", HOSTILE, "--limit", "processes=4")
    try:
        reply = world.attempt("orphan", "forker", new_session=new_session)
        assert reply["ok"], reply
        child = reply["value"]
        assert process_alive(child)
    finally:
        world.daemon.ctl("delete", "forker")
    assert wait_for(lambda: not process_alive(child), timeout=30)
