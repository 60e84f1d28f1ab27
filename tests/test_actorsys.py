"""The hardened multiprocTCPBase runtime: supervision, sockets, auth, hygiene.

Every test starts a real ActorRuntime (admin, logger, root, heartbeat: four
processes) and the fixture checks that shutdown leaves none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import pickle
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import sockets_of

from actors.base import error_reply
from actors.messages import (
    CrashChild,
    GetTree,
    KillChild,
    Ping,
    Reply,
    Request,
    StartChild,
    StopChild,
    WhereIs,
    new_request_id,
)
from naosd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ShuttingDown,
    Unavailable,
)
from naosd.runtime.actorsys import ActorRuntime, free_port
from naosd.runtime.bridge import Bridge
from naosd.runtime.frames import AuthenticatedPickle, FrameRejected

pytestmark = [
    pytest.mark.multiproc,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl"),
    # Thespian leaves sockets for the GC to close (STYLE Part 4, pitfall 2).
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

REPO = Path(__file__).resolve().parents[1]
ASK_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------
# helpers


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (None if it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def reap_if_ours(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.0005)
    raise AssertionError(f"condition not met within {timeout}s")


def ask(rt: ActorRuntime, msg: Request, target: Any = None) -> Reply:
    reply = rt.system.ask(target or rt.root, msg, ASK_TIMEOUT_S)
    assert isinstance(reply, Reply), reply
    assert reply.request_id == msg.request_id
    return reply


def tree(rt: ActorRuntime) -> dict[str, Any]:
    result: dict[str, Any] = ask(rt, GetTree(new_request_id())).result
    return result


def child(rt: ActorRuntime, name: str) -> dict[str, Any]:
    return next(c for c in tree(rt)["children"] if c["name"] == name)


def running_with_new_pid(rt: ActorRuntime, name: str, old: int) -> dict[str, Any] | None:
    node = child(rt, name)
    if node["state"] == "running" and node["pid"] not in (None, old):
        return node
    return None


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_frame(payload: bytes) -> bytes:
    """Thespian's TCP framing: b"<length>>" + payload."""
    return b"%d>" % len(payload) + payload


def send_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` to a Thespian port and return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := s.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks)


class TouchOnUnpickle:
    """Unpickling this object creates ``path``: the canary for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def runtime(secret: bytes) -> Iterator[ActorRuntime]:
    rt = ActorRuntime.start(secret=secret)
    pids = rt.descendant_pids()
    try:
        wait_for(lambda: child(rt, "heartbeat")["state"] == "running")
        yield rt
    finally:
        pids = sorted(set(pids) | set(rt.descendant_pids()))
        rt.shutdown(timeout=10)
        # Thespian's external endpoint leaves sockets for the GC: collect them
        # here, under this module's warning filters, not in a later test.
        gc.collect()
        survivors = [pid for pid in pids if alive(pid)]
        assert survivors == []
        assert rt.descendant_pids() == []


# --------------------------------------------------------------------------
# tree and supervision


def test_tree_lists_root_and_running_heartbeat(runtime: ActorRuntime) -> None:
    root = tree(runtime)
    pids = runtime.descendant_pids()
    assert root["name"] == "root"
    assert root["kind"] == "root"
    assert root["pid"] in pids
    [beat] = root["children"]
    assert beat == {
        "name": "heartbeat",
        "kind": "heartbeat",
        "state": "running",
        "pid": beat["pid"],
        "restarts": 0,
        "children": [],
    }
    assert beat["pid"] in pids
    json.dumps(root)  # JSON-able


def test_processes_inherit_the_hardening(runtime: ActorRuntime) -> None:
    root_info = ask(runtime, Ping(new_request_id())).result
    beat_addr = ask(runtime, WhereIs(new_request_id(), "heartbeat")).result
    beat_info = ask(runtime, Ping(new_request_id()), target=beat_addr).result
    assert root_info["pdeathsig"] == signal.SIGKILL
    assert beat_info["pdeathsig"] == signal.SIGKILL
    assert beat_info["ppid"] == root_info["pid"]
    admin_pid = root_info["ppid"]
    assert Path(f"/proc/{admin_pid}/stat").read_text().split()[3] == str(os.getpid())
    # admin + logger + root + heartbeat
    assert len(runtime.descendant_pids()) == 4


@pytest.mark.parametrize("crash", [CrashChild, KillChild], ids=["os._exit", "SIGKILL"])
def test_crashed_child_is_restarted(runtime: ActorRuntime, crash: type[Request]) -> None:
    old = child(runtime, "heartbeat")["pid"]
    ask(runtime, crash(new_request_id(), "heartbeat"))  # type: ignore[call-arg]
    node = wait_for(lambda: running_with_new_pid(runtime, "heartbeat", old))
    assert node["restarts"] == 1
    assert wait_for(lambda: not alive(old))
    beat_addr = ask(runtime, WhereIs(new_request_id(), "heartbeat")).result
    pong = ask(runtime, Ping(new_request_id()), target=beat_addr).result
    assert pong["pid"] == node["pid"]


def test_crash_to_restart_latency(runtime: ActorRuntime) -> None:
    samples = []
    for _ in range(30):
        old = child(runtime, "heartbeat")["pid"]
        started = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait_for(functools.partial(running_with_new_pid, runtime, "heartbeat", old))
        samples.append((time.perf_counter() - started) * 1000)
    assert child(runtime, "heartbeat")["restarts"] == 30
    print(  # noqa: T201 - the figures are the point
        f"\ncrash->restarted child running, 30 SIGKILLs: "
        f"p50 {statistics.median(samples):.2f} ms, p99 {percentile(samples, 0.99):.2f} ms,"
        f" max {max(samples):.2f} ms"
    )


def test_stopped_child_stays_stopped_and_can_start_again(runtime: ActorRuntime) -> None:
    old = child(runtime, "heartbeat")["pid"]
    ask(runtime, StopChild(new_request_id(), "heartbeat"))
    wait_for(lambda: not alive(old))
    time.sleep(0.05)
    node = child(runtime, "heartbeat")
    assert (node["state"], node["restarts"]) == ("stopped", 0)
    reply = ask(runtime, StartChild(new_request_id(), "heartbeat", "heartbeat"))
    assert reply.ok
    node = wait_for(lambda: running_with_new_pid(runtime, "heartbeat", old))
    assert node["restarts"] == 0


def test_duplicate_exit_notifications_restart_once(runtime: ActorRuntime) -> None:
    old = child(runtime, "heartbeat")["pid"]
    ask(runtime, KillChild(new_request_id(), "heartbeat"))
    node = wait_for(lambda: running_with_new_pid(runtime, "heartbeat", old))
    time.sleep(0.2)  # any second ChildActorExited has arrived by now
    again = child(runtime, "heartbeat")
    assert (again["pid"], again["restarts"]) == (node["pid"], 1)
    assert len(runtime.descendant_pids()) == 4


def test_handler_errors_become_error_replies(runtime: ActorRuntime) -> None:
    replies = {
        "not_found": ask(runtime, StopChild(new_request_id(), "nope")),
        "conflict": ask(runtime, StartChild(new_request_id(), "heartbeat", "heartbeat")),
        "invalid_request": ask(runtime, StartChild(new_request_id(), "x", "no-such-kind")),
    }
    for code, reply in replies.items():
        assert (reply.ok, reply.error_code) == (False, code), reply
        assert reply.message
    unknown = ask(runtime, Request(new_request_id()))
    assert (unknown.error_code, unknown.message) == (
        "invalid_request",
        "root does not handle Request",
    )
    assert child(runtime, "heartbeat")["state"] == "running"  # root survived


def test_error_reply_names_non_naos_errors_internal() -> None:
    reply = error_reply(Ping("r1"), ValueError("boom"))
    assert reply == Reply("r1", False, None, "internal", "ValueError: boom")
    assert error_reply(Ping("r2"), NotFound("gone")).error_code == "not_found"


# --------------------------------------------------------------------------
# sockets and authentication


def test_every_listening_socket_is_loopback(runtime: ActorRuntime) -> None:
    pids = [os.getpid(), *runtime.descendant_pids()]
    listening = sockets_of(pids, "tcp", True) + sockets_of(pids, "tcp6", True)
    udp = sockets_of(pids, "udp", False) + sockets_of(pids, "udp6", False)
    print(  # noqa: T201 - the figures are the point
        f"\nlistening sockets of naosd + actors: {sorted(set(listening))}; udp: {udp}"
    )
    assert listening
    assert {host for host, _ in listening} == {"127.0.0.1"}
    assert runtime.admin_port in {port for _, port in listening}
    assert udp == []


def test_unauthenticated_pickle_is_never_executed(
    runtime: ActorRuntime, secret: bytes, tmp_path: Path
) -> None:
    beat_addr = ask(runtime, WhereIs(new_request_id(), "heartbeat")).result
    pids_before = runtime.descendant_pids()
    ports = {
        "admin": runtime.admin_port,
        "root": runtime.root.addressDetails.sockname[1],
        "heartbeat": beat_addr.addressDetails.sockname[1],
    }
    codec = AuthenticatedPickle(secret)
    for name, port in ports.items():
        canary = tmp_path / f"pwned-{name}"
        evil = pickle.dumps(TouchOnUnpickle(str(canary)))
        for frame in (raw_frame(evil), raw_frame(b"\0" * 32 + evil)):
            answer = send_raw(port, frame)
            assert codec.loads(answer[answer.index(b">") + 1 :]) == "ACK+DATAERR"
        time.sleep(0.05)
        assert not canary.exists(), f"{name} unpickled an unauthenticated frame"
    # naosd's own endpoint only reads while an ask runs: send, then ask.
    canary = tmp_path / "pwned-naosd"
    naosd_port = runtime.system._systemBase.transport.myAddress.addressDetails.sockname[1]
    with socket.create_connection(("127.0.0.1", naosd_port), timeout=2) as s:
        s.sendall(raw_frame(pickle.dumps(TouchOnUnpickle(str(canary)))))
    assert ask(runtime, Ping(new_request_id())).ok
    assert not canary.exists(), "naosd unpickled an unauthenticated frame"
    # Positive control: the same payload, correctly signed, does run.
    control = tmp_path / "signed"
    send_raw(ports["heartbeat"], raw_frame(codec.dumps(TouchOnUnpickle(str(control)))))
    assert wait_for(control.exists, timeout=2)
    # Everybody survived and still answers.
    assert runtime.descendant_pids() == pids_before
    assert child(runtime, "heartbeat")["restarts"] == 0
    assert ask(runtime, Ping(new_request_id()), target=beat_addr).ok


def test_codec_rejects_before_unpickling(tmp_path: Path) -> None:
    codec = AuthenticatedPickle(secrets.token_bytes(32))
    other = AuthenticatedPickle(secrets.token_bytes(32))
    canary = tmp_path / "canary"
    for frame in (b"", b"short", other.dumps(TouchOnUnpickle(str(canary)))):
        with pytest.raises(FrameRejected):
            codec.loads(frame)
    assert not canary.exists()
    assert codec.loads(codec.dumps({"a": [1, 2]})) == {"a": [1, 2]}


def test_refuses_an_admin_port_in_use(secret: bytes) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(Unavailable, match="already in use"):
            ActorRuntime.start(secret=secret, admin_port=port)


# --------------------------------------------------------------------------
# bridge


async def test_bridge_200_concurrent_asks(runtime: ActorRuntime) -> None:
    bridge = Bridge(runtime, timeout_s=10, max_workers=8)
    try:
        beat_addr = (await bridge.ask(WhereIs(new_request_id(), "heartbeat"))).result
        msgs = [Ping(new_request_id()) for _ in range(200)]
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(bridge.ask_to(beat_addr, m) if i % 2 else bridge.ask(m) for i, m in enumerate(msgs))
        )
        elapsed = time.perf_counter() - started
    finally:
        bridge.close()
    assert [r.request_id for r in replies] == [m.request_id for m in msgs]
    names = [r.result["name"] for r in replies]
    assert names == ["heartbeat" if i % 2 else "root" for i in range(200)]
    print(  # noqa: T201 - the figures are the point
        f"\nbridge, 8 threads: {200 / elapsed:.0f} asks/s (200 concurrent asks)"
    )


async def test_bridge_burst_of_1000_asks_does_not_deadlock(runtime: ActorRuntime) -> None:
    bridge = Bridge(runtime, timeout_s=20, max_workers=8)
    try:
        beat_addr = (await bridge.ask(WhereIs(new_request_id(), "heartbeat"))).result
        msgs = [Ping(new_request_id()) for _ in range(1000)]
        replies = await asyncio.wait_for(
            asyncio.gather(*(bridge.ask_to(beat_addr, m) for m in msgs)), timeout=60
        )
    finally:
        bridge.close()
    assert [r.request_id for r in replies] == [m.request_id for m in msgs]


async def test_bridge_maps_errors(runtime: ActorRuntime) -> None:
    bridge = Bridge(runtime, timeout_s=1.0)
    try:
        with pytest.raises(NotFound):
            await bridge.ask(StopChild(new_request_id(), "nope"))
        with pytest.raises(Conflict):
            await bridge.ask(StartChild(new_request_id(), "heartbeat", "heartbeat"))
        with pytest.raises(InvalidRequest):
            await bridge.ask(Request(new_request_id()))
        old_addr = (await bridge.ask(WhereIs(new_request_id(), "heartbeat"))).result
        old_pid = child(runtime, "heartbeat")["pid"]
        await bridge.ask(StopChild(new_request_id(), "heartbeat"))
        await asyncio.to_thread(wait_for, lambda: not alive(old_pid))
        # a dead target answers None at once: "gone", not a misleading timeout
        with pytest.raises(Unavailable, match=r"gone|no reply"):
            await bridge.ask_to(old_addr, Ping(new_request_id()))
    finally:
        bridge.close()
    with pytest.raises(ShuttingDown):
        await bridge.ask(Ping(new_request_id()))


def test_raw_ask_round_trip(runtime: ActorRuntime) -> None:
    samples = []
    for _ in range(500):
        started = time.perf_counter()
        ask(runtime, Ping(new_request_id()))
        samples.append((time.perf_counter() - started) * 1000)
    print(  # noqa: T201 - the figures are the point
        f"\nraw ActorSystem.ask to root: p50 {statistics.median(samples):.3f} ms,"
        f" p99 {percentile(samples, 0.99):.3f} ms"
    )


# --------------------------------------------------------------------------
# process hygiene


def test_shutdown_kills_an_actor_that_cannot_exit(runtime: ActorRuntime) -> None:
    pids = runtime.descendant_pids()
    os.kill(child(runtime, "heartbeat")["pid"], signal.SIGSTOP)
    started = time.monotonic()
    runtime.shutdown(timeout=2.0)
    assert time.monotonic() - started < 4.0
    assert [pid for pid in pids if alive(pid)] == []


DAEMON_SCRIPT = """
import json, os, secrets, sys, time
from naosd.runtime.actorsys import ActorRuntime
from actors.messages import GetTree, new_request_id

rt = ActorRuntime.start(secret=secrets.token_bytes(32))
for _ in range(1000):
    tree = rt.system.ask(rt.root, GetTree(new_request_id()), 5).result
    if all(c["state"] == "running" for c in tree["children"]):
        break
    time.sleep(0.01)
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(rt.descendant_pids(), f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def test_sigkilled_daemon_leaves_no_actor(tmp_path: Path) -> None:
    out = tmp_path / "pids.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / "daemon.log").open("wb") as log:  # a pipe would hang (admin)
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON_SCRIPT, str(out)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pids: list[int] = []
    try:
        wait_for(out.exists, timeout=20)
        pids = json.loads(out.read_text())
        assert len(pids) == 4
        daemon.kill()
        daemon.wait(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            reap_if_ours(pids)
            time.sleep(0.01)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        daemon.kill()
        daemon.wait(timeout=5)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap_if_ours(pids)
