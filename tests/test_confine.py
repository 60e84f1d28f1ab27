"""Confinement of agent code: a hostile agent in real confined processes.

Each escape is tried by a real child started with ``launch`` (the hostile
script below runs from the agent's snapshot dir) and must fail with its
specific error; the same attempt from an unconfined child (``confinement =
"none"``: environment and descriptors still scrubbed) must succeed, so no
test passes because the attempt was broken. Layer tests apply one mechanism
alone to show each holds by itself. Tests skip, naming the mechanism, only
where this kernel lacks it (``probe()``). Pure parts (the seccomp program run
by a BPF interpreter, the Landlock plan, the policy) are tested at the end.

Over the 800-line target: the hostile agent (~240 lines) is text here, since
each test writes it into its snapshot dir; the pure tests could move to a
module of their own."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from harness import short_tempdir

from naosd.errors import InvalidRequest
from naosd.runtime.confine import kernel, landlock, policy, seccomp
from naosd.runtime.confine.bootstrap import Layers, Spec, decode
from naosd.runtime.confine.errors import EXIT_CONFINEMENT_FAILED, ConfinementUnavailable
from naosd.runtime.confine.launch import interpreter_paths, launch, layers_for
from naosd.runtime.confine.policy import Confinement, HostPaths, confinement_for
from naosd.runtime.confine.support import Support, probe

SUPPORT = probe()
needs_full = pytest.mark.skipif(
    bool(SUPPORT.missing()), reason=f"kernel lacks: {', '.join(SUPPORT.missing())}")
needs_scoping = pytest.mark.skipif(
    SUPPORT.landlock_abi < 6, reason=f"Landlock ABI {SUPPORT.landlock_abi} < 6: no scoping")
needs_netns = pytest.mark.skipif(
    not SUPPORT.net_ns, reason="no user + network namespaces on this kernel")
RUNNER = "naosd.runtime.confine.run"
WAIT_S = 60

HOSTILE = r'''
import ctypes, errno, json, os, signal, socket, sys, threading
T = json.loads(sys.argv[1])
CHANNEL = int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def attempt(fn):
    if T["only"] and fn.__name__ not in T["only"]:
        return fn
    try:
        out[fn.__name__] = {"ok": True, "value": fn()}
    except OSError as exc:
        out[fn.__name__] = {"ok": False, "errno": exc.errno, "error": repr(exc)}
    except (MemoryError, RuntimeError) as exc:
        out[fn.__name__] = {"ok": False, "errno": None, "error": type(exc).__name__}
    return fn

def read(path):
    with open(path, "rb") as fh:
        return len(fh.read(64))

def check(result):
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

if T["layer"] == "landlock":
    from naosd.runtime.confine import landlock, policy
    landlock.restrict(policy.from_dict(T["confinement"]), landlock.abi_version())
elif T["layer"] == "seccomp-signals":
    from naosd.runtime.confine import kernel, seccomp
    seccomp.install(seccomp.build(kernel.ARCH, net=True, processes=1, self_pid=os.getpid()))
elif T["layer"] == "netns":
    from naosd.runtime.confine import process
    process.enter_namespaces(net=True)

@attempt
def read_database(): return read(T["state"] + "/naos.db")
@attempt
def read_audit_head(): return read(T["state"] + "/audit.head")
@attempt
def read_dashboard_token(): return read(T["state"] + "/dashboard.token")
@attempt
def list_state_dir(): return os.listdir(T["state"])
@attempt
def read_home(): return read(T["home"] + "/.secret")
@attempt
def read_other_agent(): return read(T["other"] + "/notes")
@attempt
def read_own_source(): return read(__file__)
@attempt
def write_outside():
    with open(T["outside"] + "/dropped", "w") as fh:
        return fh.write("x")
@attempt
def write_snapshot():
    with open(os.path.dirname(__file__) + "/dropped", "w") as fh:
        return fh.write("x")
@attempt
def write_work():
    with open(T["work"] + "/mine", "w") as fh:
        fh.write("mine")
    return read(T["work"] + "/mine")
@attempt
def chmod_state():
    path = T["state"] + "/naos.db"
    os.chmod(path, os.stat(path).st_mode & 0o7777)  # same mode: only the permission counts
@attempt
def fchmod_readable_file():
    with open(__file__, "rb") as fh:
        os.fchmod(fh.fileno(), os.fstat(fh.fileno()).st_mode & 0o7777)
@attempt
def utime_state():
    st = os.stat(T["state"] + "/naos.db")
    os.utime(T["state"] + "/naos.db", ns=(st.st_atime_ns, st.st_mtime_ns))
@attempt
def setxattr_state(): os.setxattr(T["state"] + "/naos.db", "user.naos-test", b"1")
@attempt
def sqlite_in_work():
    import sqlite3
    with sqlite3.connect(T["work"] + "/agent.sqlite") as db:
        db.execute("create table if not exists t (x)")
        return db.execute("insert into t values (1)").rowcount
@attempt
def sysv_shm(): return check(libc.shmget(ctypes.c_int(T["shm_key"]), ctypes.c_size_t(0), 0))
@attempt
def unix_connect():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(T["control"])
@attempt
def abstract_connect():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect("\0" + T["abstract"])
@attempt
def tcp_connect():
    socket.create_connection(("127.0.0.1", T["port"]), timeout=10).close()
@attempt
def tcp_bind():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
@attempt
def signal_sibling(): os.kill(T["sibling"], signal.SIGCONT)
@attempt
def signal_parent(): os.kill(T["parent"], signal.SIGCONT)
@attempt
def outlive_parent():
    return check(libc.prctl(1, 0, 0, 0, 0))  # PR_SET_PDEATHSIG: none
@attempt
def spawn_interpreter():
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-I", "-c", "pass"])
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
@attempt
def signal_self(): os.kill(os.getpid(), 0)
@attempt
def ptrace_sibling():
    # PTRACE_SEIZE does not stop the sibling; our exit detaches it.
    return check(libc.ptrace(ctypes.c_long(0x4206), ctypes.c_long(T["sibling"]), None, None))
@attempt
def proc_parent_mem():
    with open(f"/proc/{T['parent']}/mem", "rb"):
        return True
@attempt
def proc_parent_environ(): return read(f"/proc/{T['parent']}/environ")
@attempt
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return True
@attempt
def spawn():
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})
    os.waitpid(pid, 0)
@attempt
def thread():
    seen = []
    t = threading.Thread(target=lambda: seen.append(1))
    t.start()
    t.join()
    return seen
@attempt
def asyncio_loop():
    import asyncio
    asyncio.run(asyncio.sleep(0))
@attempt
def imports():
    import decimal, sqlite3, zoneinfo
    return sqlite3.connect(":memory:").execute("select 1").fetchone()[0]
@attempt
def io_uring():
    params = ctypes.create_string_buffer(120)
    os.close(check(libc.syscall(ctypes.c_long(425), ctypes.c_long(4), params)))
@attempt
def memory():
    small = bytearray(T["mem_under"])
    try:
        bytearray(T["mem_over"])
    except MemoryError:
        return {"small": len(small), "over": "MemoryError"}
    return {"small": len(small), "over": "allocated"}
@attempt
def open_files():
    held = []
    try:
        while len(held) < 4096:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        return {"opened": len(held), "errno": exc.errno}
    finally:
        for fd in held:
            os.close(fd)
@attempt
def environ(): return dict(os.environ)
@attempt
def fds():
    listed = [int(n) for n in os.listdir("/proc/self/fd")]
    live = []
    for fd in listed:
        try:
            os.fstat(fd)
            live.append(fd)
        except OSError:
            pass  # the descriptor listdir itself used
    return sorted(live)
@attempt
def status():
    with open("/proc/self/status") as fh:
        return dict(l.rstrip("\n").split(":\t", 1) for l in fh if ":\t" in l)

os.write(CHANNEL, json.dumps(out).encode())
'''

SPIN = "while True:\n    pass\n"
LIBC = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_RMID = 0o1000, 0


@dataclass
class World:
    """A stand-in for a naosd host: its secrets, another agent, listeners."""

    base: Path
    state: Path
    home: Path
    snapshot: Path
    work: Path
    other: Path
    outside: Path
    control: Path
    abstract: str
    port: int
    sibling: int
    shm_key: int

    def host(self) -> HostPaths:
        return HostPaths(interpreter_paths(), str(self.snapshot), str(self.work),
                         (str(self.state), str(self.home), str(self.control.parent)))

    def targets(self, **extra: Any) -> dict[str, Any]:
        return {"state": str(self.state), "home": str(self.home), "other": str(self.other),
                "outside": str(self.outside), "work": str(self.work),
                "control": str(self.control), "abstract": self.abstract, "port": self.port,
                "sibling": self.sibling, "shm_key": self.shm_key, "parent": os.getpid(),
                "only": [], "layer": "", "mem_under": 32 << 20, "mem_over": 512 << 20, **extra}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with short_tempdir() as base, contextlib.ExitStack() as stack:
        dirs = {n: base / p for n, p in (
            ("state", "state"), ("home", "home"), ("snapshot", "agents/me/snapshot"),
            ("work", "agents/me/work"), ("other", "agents/other/work"),
            ("outside", "outside"), ("run", "run"))}
        for path in dirs.values():
            path.mkdir(parents=True)
        for name in ("naos.db", "audit.head", "dashboard.token"):
            (dirs["state"] / name).write_text(f"secret {name}\n")
        (dirs["home"] / ".secret").write_text("home secret\n")
        (dirs["other"] / "notes").write_text("other agent's notes\n")
        (dirs["snapshot"] / "hostile.py").write_text(HOSTILE)
        (dirs["snapshot"] / "spin.py").write_text(SPIN)
        control = dirs["run"] / "control.sock"
        abstract = f"naos-test-{uuid.uuid4().hex}"
        listeners = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX),
                     socket.socket()]
        for s in listeners:
            stack.callback(s.close)
        listeners[0].bind(str(control))
        listeners[1].bind("\0" + abstract)
        listeners[2].bind(("127.0.0.1", 0))
        for s in listeners:
            s.listen(16)
        sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        stack.callback(_reap, sibling)
        shm_key = int(uuid.uuid4().int & 0x3FFFFFFF)
        shm_id = LIBC.shmget(ctypes.c_int(shm_key), ctypes.c_size_t(4096), IPC_CREAT | 0o600)
        assert shm_id >= 0, os.strerror(ctypes.get_errno())
        stack.callback(LIBC.shmctl, shm_id, IPC_RMID, None)
        yield World(base, dirs["state"], dirs["home"], dirs["snapshot"], dirs["work"],
                    dirs["other"], dirs["outside"], control, abstract,
                    listeners[2].getsockname()[1], sibling.pid, shm_key)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT_S)


def agent_conf(world: World, **fields: Any) -> Confinement:
    base = {"env": {"LANG": "C.UTF-8", "AGENT_SETTING": "granted"},
            "limits": {"memory_mb": 256, "open_files": 64}}
    return confinement_for(base | fields, world.host())


@dataclass
class Run:
    results: dict[str, Any]
    returncode: int
    log: str

    def denied(self, name: str, err: int) -> None:
        got = self.results[name]
        assert not got["ok"], f"{name} succeeded: {got}\n{self.log}"
        assert got["errno"] == err, f"{name}: want {errno.errorcode[err]}, got {got}"

    def allowed(self, name: str) -> Any:
        got = self.results[name]
        assert got["ok"], f"{name} failed: {got}\n{self.log}"
        return got["value"]


def run_hostile(world: World, conf: Confinement, support: Support | None = None,
                **targets: Any) -> Run:
    """Launch the hostile agent under ``conf``; its findings come back over
    its channel (a socketpair: the one descriptor it inherits)."""
    ours, theirs = socket.socketpair()
    log_path = world.base / f"agent-{uuid.uuid4().hex}.log"
    # A secret the parent holds open and inheritable: the child must not get it.
    leak = os.open(world.state / "naos.db", os.O_RDONLY)
    os.set_inheritable(leak, True)
    with ours, theirs, open(log_path, "wb") as log, pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAOS_SECRET", "daemon secret")
        mp.setenv("THESPIAN_BASE_IPADDR", "127.0.0.1")
        try:
            proc = launch(conf, RUNNER, [str(world.snapshot / "hostile.py"),
                                         json.dumps(world.targets(**targets)),
                                         str(theirs.fileno())],
                          channel_fd=theirs.fileno(), log_fd=log.fileno(), support=support)
        finally:
            os.close(leak)
        theirs.close()
        returncode = _wait(proc)
        ours.settimeout(WAIT_S)
        data = b"".join(iter(lambda: ours.recv(1 << 16), b""))
    text = log_path.read_text(errors="replace")
    return Run(json.loads(data) if data else {}, returncode, text)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        _reap(proc)
        raise


@pytest.fixture(scope="module")
def confined(world: World) -> Run:
    if SUPPORT.missing():
        pytest.skip(f"kernel lacks: {', '.join(SUPPORT.missing())}")
    run = run_hostile(world, agent_conf(world))
    assert run.returncode == 0, run.log
    return run


@pytest.fixture(scope="module")
def confined_net(world: World) -> Run:
    if SUPPORT.missing():
        pytest.skip(f"kernel lacks: {', '.join(SUPPORT.missing())}")
    run = run_hostile(world, agent_conf(world, grants=["net"]),
                      only=["tcp_connect", "tcp_bind", "unix_connect", "abstract_connect",
                            "imports", "read_database"])
    assert run.returncode == 0, run.log
    return run


@pytest.fixture(scope="module")
def unconfined(world: World) -> Run:
    run = run_hostile(world, agent_conf(world, confinement="none", limits={}),
                      mem_over=0)
    assert run.returncode == 0, run.log
    return run


# --- the hostile agent, confined; each against its unconfined control ------

@pytest.mark.parametrize("name", ["read_database", "read_audit_head", "read_dashboard_token",
                                  "list_state_dir", "read_home", "read_other_agent"])
def test_naosd_secrets_and_other_agents_files_are_unreadable(confined, unconfined, name):
    unconfined.allowed(name)
    confined.denied(name, errno.EACCES)


def test_writes_land_only_in_the_work_dir(confined, unconfined):
    for name in ("write_outside", "write_snapshot"):
        unconfined.allowed(name)
        confined.denied(name, errno.EACCES)
    assert confined.allowed("write_work") == 4
    assert confined.allowed("read_own_source") > 0


@pytest.mark.parametrize("name", ["chmod_state", "fchmod_readable_file", "utime_state",
                                  "setxattr_state"])
def test_file_metadata_cannot_be_changed(confined, unconfined, name):
    # Landlock leaves chmod & co. alone: a chmod 0666 of naosd's database would
    # hand it to every local user. The work dir's own files are no exception.
    unconfined.allowed(name)
    confined.denied(name, errno.EPERM)
    assert confined.allowed("sqlite_in_work") == 1  # SQLite copes without fchmod


def test_the_control_socket_cannot_be_reached(confined, confined_net, unconfined):
    unconfined.allowed("unix_connect")
    confined.denied("unix_connect", errno.EPERM)
    confined_net.denied("unix_connect", errno.EPERM)  # AF_UNIX is never granted


def test_abstract_unix_sockets_cannot_be_reached(confined, confined_net, unconfined):
    unconfined.allowed("abstract_connect")
    confined.denied("abstract_connect", errno.EPERM)
    confined_net.denied("abstract_connect", errno.EPERM)


def test_tcp_needs_the_net_grant(confined, confined_net, unconfined):
    unconfined.allowed("tcp_connect")
    confined.denied("tcp_connect", errno.EPERM)
    confined_net.allowed("tcp_connect")
    unconfined.allowed("tcp_bind")
    confined_net.denied("tcp_bind", errno.EACCES)  # outbound only: no listening port
    confined_net.allowed("imports")
    confined_net.denied("read_database", errno.EACCES)


@pytest.mark.parametrize("name", ["signal_sibling", "signal_parent"])
def test_processes_outside_cannot_be_signalled(confined, unconfined, name):
    unconfined.allowed(name)
    confined.denied(name, errno.EPERM)
    confined.allowed("signal_self")


def test_the_handler_cannot_disarm_its_parent_death_signal(confined, unconfined):
    unconfined.allowed("outlive_parent")
    confined.denied("outlive_parent", errno.EPERM)


@needs_full
def test_with_processes_the_handler_forks_and_runs_the_interpreter_confined(world):
    run = run_hostile(world, agent_conf(world, limits={"processes": 8, "memory_mb": 256}),
                      only=["fork", "spawn_interpreter", "read_database", "tcp_connect"])
    assert run.allowed("fork") is True and run.allowed("spawn_interpreter") == 0
    run.denied("read_database", errno.EACCES)
    run.denied("tcp_connect", errno.EPERM)


def test_ptrace_of_a_sibling_is_refused(confined, unconfined):
    unconfined.allowed("ptrace_sibling")
    confined.denied("ptrace_sibling", errno.EPERM)


@pytest.mark.parametrize("name", ["proc_parent_mem", "proc_parent_environ"])
def test_the_parents_memory_and_environment_are_unreadable(confined, unconfined, name):
    unconfined.allowed(name)
    confined.denied(name, errno.EACCES)


def test_no_process_but_threads_with_processes_zero(confined, unconfined):
    for name in ("fork", "spawn"):
        unconfined.allowed(name)
        confined.denied(name, errno.EPERM)
    assert confined.allowed("thread") == [1]
    confined.allowed("asyncio_loop")  # socketpair(AF_UNIX) stays allowed
    assert confined.allowed("imports") == 1


def test_the_daemons_system_v_ipc_is_out_of_reach(confined, unconfined):
    unconfined.allowed("sysv_shm")
    confined.denied("sysv_shm", errno.ENOENT)  # its own IPC namespace: no such key


def test_io_uring_is_refused(confined, unconfined):
    unconfined.allowed("io_uring")
    confined.denied("io_uring", errno.EPERM)


def test_memory_past_the_limit_is_a_memory_error_not_a_kill(confined):
    assert confined.allowed("memory") == {"small": 32 << 20, "over": "MemoryError"}
    assert confined.returncode == 0  # it went on and reported


def test_open_files_are_capped(confined, unconfined):
    assert confined.allowed("open_files")["errno"] == errno.EMFILE
    assert confined.allowed("open_files")["opened"] < 64
    assert unconfined.allowed("open_files")["opened"] > 64


def test_environment_is_exactly_the_policys(confined, unconfined):
    want = {"LANG": "C.UTF-8", "AGENT_SETTING": "granted"}
    assert confined.allowed("environ") == want
    assert unconfined.allowed("environ") == want  # scrubbed even without confinement


def test_no_descriptor_but_stdio_and_the_channel(confined, unconfined):
    for run in (confined, unconfined):
        fds = run.allowed("fds")
        assert len(fds) == 4 and fds[:3] == [0, 1, 2], fds


def test_the_handler_holds_no_capability_and_no_new_privileges(confined, unconfined):
    status = confined.allowed("status")
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0" * 16
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert unconfined.allowed("status")["Seccomp"] == "0"


@needs_full
def test_cpu_seconds_kill_a_spinning_handler(world):
    conf = agent_conf(world, limits={"cpu_seconds": 1})
    proc = launch(conf, RUNNER, [str(world.snapshot / "spin.py")])
    assert _wait(proc) in (-signal.SIGXCPU, -signal.SIGKILL)


# --- each layer alone --------------------------------------------------------

def _layer_run(world: World, layer: str, **targets: Any) -> Run:
    conf = agent_conf(world, confinement="none")
    return run_hostile(world, conf, layer=layer, confinement=policy.to_dict(conf), **targets)


@needs_scoping
def test_landlock_alone_scopes_signals_sockets_tcp_and_files(world):
    run = _layer_run(world, "landlock", only=[
        "abstract_connect", "signal_sibling", "signal_self", "tcp_connect", "read_database",
        "ptrace_sibling", "proc_parent_mem", "unix_connect"])
    run.denied("abstract_connect", errno.EPERM)
    run.denied("signal_sibling", errno.EPERM)
    run.allowed("signal_self")
    run.denied("tcp_connect", errno.EACCES)
    run.denied("read_database", errno.EACCES)
    run.denied("ptrace_sibling", errno.EPERM)
    run.denied("proc_parent_mem", errno.EACCES)
    # Landlock (ABI <= 7) has no rule for connecting to a Unix socket path:
    # only the seccomp filter's refusal of AF_UNIX stands between agent code
    # and the control socket (docs/security.md).
    run.allowed("unix_connect")


@needs_full
def test_seccomp_limits_signals_to_the_handler_when_landlock_cannot(world):
    run = _layer_run(world, "seccomp-signals", only=["signal_sibling", "signal_self"])
    run.denied("signal_sibling", errno.EPERM)
    run.allowed("signal_self")


@needs_netns
def test_a_network_namespace_alone_reaches_neither_loopback_nor_abstract_sockets(world):
    run = _layer_run(world, "netns", only=["tcp_connect", "abstract_connect", "unix_connect"])
    run.denied("tcp_connect", errno.ENETUNREACH)
    run.denied("abstract_connect", errno.ECONNREFUSED)
    run.allowed("unix_connect")  # a path is in the mount namespace, not the network one


# --- launching: refusals and failures ----------------------------------------

def test_full_confinement_is_refused_where_the_kernel_lacks_a_mechanism(world):
    lacking = replace(SUPPORT, landlock_abi=0, seccomp_filter=False)
    with pytest.raises(ConfinementUnavailable, match="Landlock, seccomp filters"):
        launch(agent_conf(world), RUNNER, ["x"], support=lacking)
    run = run_hostile(world, agent_conf(world, confinement="none"), support=lacking,
                      only=["environ"])
    assert run.returncode == 0 and run.allowed("environ")["AGENT_SETTING"] == "granted"


@needs_full
def test_a_bootstrap_that_cannot_confine_never_runs_agent_code(world):
    host = replace(world.host(), work=str(world.base / "no-such-work-dir"))
    conf = confinement_for({"limits": {"memory_mb": 256}, "cwd": str(world.snapshot)}, host)
    run = run_hostile(world, conf)
    assert run.returncode == EXIT_CONFINEMENT_FAILED
    assert run.results == {}
    assert "naos confinement failed: landlock:" in run.log and "does not exist" in run.log


def test_a_garbled_spec_exits_before_anything_runs(world):
    proc = subprocess.run([sys.executable, "-I", "-m", RUNNER, "{not json",
                           str(world.snapshot / "hostile.py")],
                          capture_output=True, text=True, timeout=WAIT_S, env={}, check=False)
    assert proc.returncode == EXIT_CONFINEMENT_FAILED
    assert "malformed confinement spec" in proc.stderr


# --- the same agent under an unprivileged daemon user ---------------------------

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # any uid can run it (this machine's pyenv is in /root)
AS_DAEMON_USER = r"""
import json, os, socket, subprocess, sys
from dataclasses import replace
from naosd.runtime.confine.launch import interpreter_paths, launch
from naosd.runtime.confine.policy import HostPaths, confinement_for
world, work = json.loads(sys.argv[1]), sys.argv[2]
sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
host = HostPaths(interpreter_paths(), world["snapshot"], work, (world["targets"]["state"],))
conf = confinement_for({"limits": {"memory_mb": 256}}, host)
out = {}
try:
    for mode in ("none", "full"):
        ours, theirs = socket.socketpair()
        targets = dict(world["targets"], sibling=sibling.pid, parent=os.getpid(), work=work)
        proc = launch(replace(conf, mode=mode), "naosd.runtime.confine.run",
                      [world["script"], json.dumps(targets), str(theirs.fileno())],
                      channel_fd=theirs.fileno())
        theirs.close()
        proc.wait(60)
        out[mode] = json.loads(b"".join(iter(lambda: ours.recv(65536), b"")))
finally:
    sibling.kill()
    sibling.wait()
print(json.dumps(out))
"""


@needs_full
@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root (to become uid 65534) and a system python3")
def test_an_unprivileged_daemon_user_gets_the_same_confinement(world):
    """Production runs naosd as an ordinary user: no capability explains a
    denial there, and the user namespace is entered without privilege."""
    checks = {"read_database": errno.EACCES, "read_home": errno.EACCES,
              "unix_connect": errno.EPERM, "tcp_connect": errno.EPERM,
              "signal_sibling": errno.EPERM, "ptrace_sibling": errno.EPERM,
              "proc_parent_mem": errno.EACCES, "proc_parent_environ": errno.EACCES,
              "fork": errno.EPERM}
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": [], "env": {},
                 "capture_output": True, "text": True, "timeout": WAIT_S, "check": False}
    with short_tempdir() as base, contextlib.ExitStack() as undo:
        for path, mode in ((world.base, 0o755), (world.control, 0o777)):
            undo.callback(os.chmod, path, os.stat(path).st_mode & 0o7777)
            os.chmod(path, mode)
        os.chmod(base, 0o755)
        (base / "work").mkdir()
        os.chown(base / "work", NOBODY, NOBODY)
        venv = base / "venv"
        made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)],
                              capture_output=True, text=True, timeout=WAIT_S, check=False)
        assert made.returncode == 0, made.stderr
        for site in venv.glob("lib/python3*/site-packages"):
            (site / "naos.pth").write_text(str(Path(__file__).resolve().parent.parent) + "\n")
        spec = {"snapshot": str(world.snapshot), "script": str(world.snapshot / "hostile.py"),
                "targets": world.targets(only=[*checks, "write_work", "status"])}
        done = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", AS_DAEMON_USER,
                               json.dumps(spec), str(base / "work")], **as_nobody)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    free, held = Run(results["none"], 0, done.stderr), Run(results["full"], 0, done.stderr)
    for name, err in checks.items():
        free.allowed(name)
        held.denied(name, err)
    held.allowed("write_work")
    assert held.allowed("status")["NoNewPrivs"] == "1"


def test_protect_parent_makes_the_process_non_dumpable():
    code = ("from naosd.runtime.confine import kernel\n"
            "from naosd.runtime.confine.process import protect_parent\n"
            "assert kernel.prctl(kernel.PR_GET_DUMPABLE) == 1\n"
            "assert protect_parent()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT_S, check=False)
    assert done.returncode == 0, done.stderr


# --- the seccomp filter, run by a small classic-BPF interpreter --------------

def run_bpf(fltr: seccomp.Filter, nr: int, args: tuple[int, ...] = (),
            arch: str = "") -> tuple[int, int]:
    """(action, instructions run) of ``fltr`` for one call (``seccomp_data``
    built here)."""
    tag = kernel.AUDIT_ARCH[arch or fltr.arch]
    words = tuple(a & (1 << 64) - 1 for a in (*args, 0, 0, 0, 0, 0, 0)[:6])
    data = struct.pack("=IIQ6Q", nr & 0xFFFFFFFF, tag, 0, *words)
    pc, acc, steps = 0, 0, 0
    while True:
        code, jt, jf, k = fltr.program[pc]
        steps += 1
        if code == seccomp.RET_K:
            return k, steps
        if code == seccomp.LD_W_ABS:
            acc, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif code == seccomp.JA:
            pc += 1 + k
        else:
            taken = {seccomp.JEQ_K: acc == k, seccomp.JGE_K: acc >= k,
                     seccomp.JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


def bpf(fltr: seccomp.Filter, nr: int, args: tuple[int, ...] = (), arch: str = "") -> int:
    return run_bpf(fltr, nr, args, arch)[0]


EPERM = seccomp.RET_ERRNO | errno.EPERM
ALLOW = seccomp.RET_ALLOW
ARCHES = sorted(kernel.SYSCALLS)


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_refuses_the_calls_that_reach_outside(arch):
    table = kernel.SYSCALLS[arch]
    fltr = seccomp.build(arch, net=False, processes=0)
    assert len(fltr.program) < 4096
    for name in ("ptrace", "process_vm_readv", "bpf", "io_uring_setup", "io_uring_enter",
                 "mount", "unshare", "setns", "keyctl", "finit_module", "open_by_handle_at",
                 "fchmodat", "fchmod", "fchownat", "utimensat", "setxattr", "fchmodat2"):
        assert bpf(fltr, table[name]) == EPERM, name
    assert bpf(fltr, table["clone3"]) == seccomp.RET_ERRNO | errno.ENOSYS
    assert bpf(fltr, table["landlock_restrict_self"]) == ALLOW
    assert bpf(fltr, table["prctl"], (kernel.PR_SET_NO_NEW_PRIVS, 1)) == ALLOW
    assert bpf(fltr, table["prctl"], (kernel.PR_SET_PDEATHSIG, 0)) == EPERM
    other = next(a for a in ARCHES if a != arch)
    assert bpf(fltr, table["prctl"], arch=other) == seccomp.RET_KILL_PROCESS


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_allows_every_other_call_after_a_short_search(arch):
    fltr = seccomp.build(arch, net=False, processes=0, self_pid=7)
    named = set(kernel.SYSCALLS[arch].values())
    costs = [run_bpf(fltr, nr) for nr in range(470) if nr not in named]
    assert {action for action, _ in costs} == {ALLOW}
    assert max(steps for _, steps in costs) <= 20  # ~log2(rules), not one per rule


def test_filter_search_reaches_far_rules_through_long_jumps():
    rules = [(nr, [seccomp._ret(seccomp.RET_ERRNO | nr)]) for nr in range(0, 1200, 3)]
    fltr = seccomp.Filter("x86_64", (seccomp._load(seccomp.OFF_NR), *seccomp._search(rules)))
    assert any(code == seccomp.JA for code, *_ in fltr.program)
    assert all(bpf(fltr, nr) == seccomp.RET_ERRNO | nr for nr, _ in rules)
    assert all(bpf(fltr, nr) == ALLOW for nr in range(1, 1200, 3))


def test_filter_kills_x32_calls_on_x86_64():
    fltr = seccomp.build("x86_64", net=True, processes=4)
    assert bpf(fltr, 0x40000000 | 39) == seccomp.RET_KILL_PROCESS
    assert bpf(fltr, 39) == ALLOW  # getpid


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_sockets_follow_the_net_grant(arch):
    socket_nr, pair_nr = kernel.SYSCALLS[arch]["socket"], kernel.SYSCALLS[arch]["socketpair"]
    closed = seccomp.build(arch, net=False, processes=0)
    granted = seccomp.build(arch, net=True, processes=0)
    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_NETLINK):
        assert bpf(closed, socket_nr, (family,)) == EPERM
    assert bpf(granted, socket_nr, (socket.AF_INET,)) == ALLOW
    assert bpf(granted, socket_nr, (socket.AF_INET6,)) == ALLOW
    assert bpf(granted, socket_nr, (socket.AF_UNIX,)) == EPERM
    assert bpf(granted, socket_nr, (socket.AF_PACKET,)) == EPERM
    for fltr in (closed, granted):
        assert bpf(fltr, pair_nr, (socket.AF_UNIX,)) == ALLOW
        assert bpf(fltr, pair_nr, (socket.AF_INET,)) == EPERM


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_processes_threads_and_namespaces(arch):
    table = kernel.SYSCALLS[arch]
    thread = 0x3D0F00  # glibc's pthread_create flags: VM|FS|FILES|SIGHAND|THREAD|...
    none, some = (seccomp.build(arch, net=False, processes=n) for n in (0, 8))
    assert bpf(none, table["clone"], (thread,)) == ALLOW
    assert bpf(none, table["clone"], (signal.SIGCHLD,)) == EPERM
    assert bpf(some, table["clone"], (signal.SIGCHLD,)) == ALLOW
    for fltr in (none, some):
        assert bpf(fltr, table["clone"], (thread | kernel.CLONE_NEWUSER,)) == EPERM
        assert bpf(fltr, table["clone"], (signal.SIGCHLD | kernel.CLONE_NEWNET,)) == EPERM
    if "fork" in table:
        assert bpf(none, table["fork"]) == EPERM and bpf(some, table["fork"]) == ALLOW


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_signals_only_to_itself_when_asked(arch):
    table = kernel.SYSCALLS[arch]
    scoped = seccomp.build(arch, net=False, processes=0, self_pid=4242)
    assert bpf(scoped, table["kill"], (4242,)) == ALLOW
    assert bpf(scoped, table["kill"], (0,)) == ALLOW
    assert bpf(scoped, table["kill"], (4243,)) == EPERM
    assert bpf(scoped, table["kill"], (-1,)) == EPERM
    assert bpf(scoped, table["tgkill"], (4242, 4250)) == ALLOW
    assert bpf(scoped, table["tgkill"], (1, 1)) == EPERM
    assert bpf(scoped, table["pidfd_send_signal"]) == EPERM
    plain = seccomp.build(arch, net=False, processes=0)
    assert bpf(plain, table["kill"], (4243,)) == ALLOW  # Landlock scopes signals then
    assert bpf(plain, table["personality"], (0xFFFFFFFF,)) == ALLOW
    assert bpf(plain, table["personality"], (0x0400000,)) == EPERM


# --- the Landlock plan --------------------------------------------------------

def test_landlock_plan_per_abi(world):
    conf = agent_conf(world)
    one = landlock.plan(conf, 1)
    assert (one.handled_fs, one.handled_net, one.scoped) == (landlock.FS_ABI1, 0, 0)
    assert len(one.ruleset_attr()) == 24
    four = landlock.plan(conf, 4)
    assert four.handled_fs & landlock.FS_TRUNCATE and not four.scoped
    assert four.handled_net == landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP
    assert landlock.plan(agent_conf(world, grants=["net"]), 4).handled_net == landlock.NET_BIND_TCP
    seven = landlock.plan(conf, 7)
    assert seven.scoped == landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    assert landlock.plan(conf, 9).handled_fs == landlock.fs_rights(7)
    rules = dict(seven.rules)
    assert rules[str(world.snapshot)] == landlock.READ_RIGHTS
    assert not rules[str(world.work)] & landlock.NOT_WRITABLE
    assert rules[str(world.work)] & landlock.FS_WRITE_FILE
    assert str(world.state) not in rules and str(world.base) not in rules
    with pytest.raises(ValueError, match="ABI 0"):
        landlock.plan(conf, 0)


def test_probe_reports_what_the_kernel_says():
    assert SUPPORT.landlock_abi == landlock.abi_version()
    lines = "\n".join(SUPPORT.summary())
    assert ("full available" in lines) == (not SUPPORT.missing())
    elsewhere = Support("darwin arm64", None, 0, False, False, False, False, ())
    assert elsewhere.missing() and "UNAVAILABLE" in elsewhere.summary()[0]
    old = replace(SUPPORT, arch="x86_64", landlock_abi=3, seccomp_filter=True,
                  no_new_privs=True)
    assert not old.missing() and len(old.weaker()) >= 2
    assert old.to_dict()["weaker"] == list(old.weaker())


# --- the policy (pure) --------------------------------------------------------

HOST = HostPaths(("/opt/python/lib",), "/srv/naos/agents/a/snapshot", "/srv/naos/agents/a/work",
                 ("/srv/naos/state", "/home/naos", "/run/naos"))


def test_policy_defaults_grant_little():
    conf = confinement_for({}, HOST)
    assert conf.read_paths[:2] == (*HOST.interpreter, HOST.snapshot)
    assert policy.PROC_SELF in conf.read_paths and "/usr/lib" in conf.read_paths
    assert not set(policy.NET_READ_PATHS) & set(conf.read_paths)
    assert conf.write_paths == (HOST.work, "/dev/null")
    assert (conf.cwd, conf.env, conf.net, conf.mode) == (HOST.work, (), False, "full")
    assert (conf.processes, conf.cpu_seconds) == (0, 0)
    net = confinement_for({"grants": ["net"], "env": {"B": "2", "A": "1"}, "cwd": "sub"}, HOST)
    assert net.net and set(policy.NET_READ_PATHS) <= set(net.read_paths)
    assert net.env == (("A", "1"), ("B", "2")) and net.cwd == HOST.work + "/sub"
    assert policy.from_dict(policy.to_dict(net)) == replace(net, env=())


@pytest.mark.parametrize(("fields", "match"), [
    ({"env": {"NAOS_SOCKET": "/x"}}, "NAOS_SOCKET is reserved"),
    ({"env": {"THESPIAN_BASE_IPADDR": "x"}}, "reserved"),
    ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "reserved"),
    ({"env": {"GLIBC_TUNABLES": "x"}}, "reserved"),
    ({"env": {"PYTHONPATH": "/x"}}, "ignored"),
    ({"env": {"A=B": "x"}}, "invalid"),
    ({"env": {"A": "x\0y"}}, "NUL"),
    ({"env": ["A"]}, "table of strings"),
    ({"grants": ["net", "root"]}, r"unknown grant\(s\) \['root'\]"),
    ({"grants": "net"}, "list of names"),
    ({"limits": {"memory_mb": 8}}, "memory_bytes must be 0 .* between"),
    ({"limits": {"open_files": 0}}, "open_files must be between 16"),
    ({"limits": {"processes": -1}}, "whole number"),
    ({"limits": {"threads": 3}}, r"unknown limit\(s\) \['threads'\]"),
    ({"limits": {"cpu_seconds": True}}, "whole number"),
    ({"cwd": "../../state"}, "inside the work dir or the snapshot"),
    ({"confinement": "partial"}, "full, none"),
])
def test_policy_refuses_bad_fields(fields, match):
    with pytest.raises(InvalidRequest, match=match):
        confinement_for(fields, HOST)


@pytest.mark.parametrize(("host", "match"), [
    (replace(HOST, interpreter=("/srv",)), "granting /srv would expose /srv/naos/state"),
    (replace(HOST, interpreter=("/home",)), "would expose /home/naos"),
    (replace(HOST, snapshot="/srv/naos/agents/a/work/code"), "could rewrite its own code"),
    (replace(HOST, work="relative/work"), "must be absolute"),
    (replace(HOST, work="/srv/naos/agents/a/../b"), "not normalised"),
    (replace(HOST, interpreter=("/",)), "may not be /"),
])
def test_policy_never_grants_what_contains_a_protected_path(host, match):
    with pytest.raises(InvalidRequest, match=match):
        confinement_for({}, host)
    below = replace(HOST, interpreter=("/home/naos/.pyenv/versions/3.11",))
    assert confinement_for({}, below).read_paths[0] == "/home/naos/.pyenv/versions/3.11"


def test_spec_and_layers():
    conf = confinement_for({}, HOST)
    full = replace(SUPPORT, arch="x86_64", landlock_abi=7, seccomp_filter=True,
                   no_new_privs=True, user_ns=True, net_ns=True)
    assert layers_for(conf, full) == Layers(7, True, True, True)
    assert layers_for(replace(conf, net=True), full).net_ns is False
    assert layers_for(replace(conf, mode="none"), replace(full, landlock_abi=0)) == Layers()
    assert Layers(5, True).signals_by_seccomp and not Layers(6, True).signals_by_seccomp
    with pytest.raises(ConfinementUnavailable, match="missing: Landlock"):
        layers_for(conf, replace(full, landlock_abi=0))
    spec = Spec(conf, 1, (3,), Layers(7, True, True, False))
    assert decode(spec.encode()) == replace(spec, confinement=replace(conf, env=()))
    for bad in ("[]", '{"layers": {}}', json.dumps({**json.loads(spec.encode()), "parent": "x"})):
        with pytest.raises(InvalidRequest, match="malformed"):
            decode(bad)
