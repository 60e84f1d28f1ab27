"""The sandbox pool's watchdog, with real worker processes (multiprocTCPBase).

A compile past its deadline is answered with wasm_compile_timeout and its
worker is replaced, the jobs queued behind it run elsewhere; a worker that
stops answering altogether (SIGSTOP here) is killed by the pool's watchdog.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import alive, wait_for
from wasm_modules import many_functions

from actors.messages import ChildPid, InitSandbox, Ping, Reply, RunWasm
from actors.sandbox import SandboxPool
from naosd.runtime.actorsys import ActorRuntime

pytestmark = [
    pytest.mark.multiproc,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ECHO = (Path(__file__).resolve().parent.parent / "examples" / "wasm" / "echo.wasm").read_bytes()
SLOW = many_functions(20_000)  # under the function limit, seconds to compile


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[ActorRuntime, Any]]:
    rt = ActorRuntime.start(secret=secrets.token_bytes(32))
    try:
        addr = rt.system.createActor(SandboxPool)
        started = rt.system.ask(addr, InitSandbox("sandbox", str(tmp_path / "db"), "", 1), 10)
        assert isinstance(started, ChildPid)
        yield rt, addr
    finally:
        pids = rt.descendant_pids()
        rt.shutdown(timeout=10)
        gc.collect()
        assert [pid for pid in pids if alive(pid)] == []


def run(module: bytes, **limits: int) -> RunWasm:
    return RunWasm(uuid.uuid4().hex, module, b"hi", dict(limits))


def workers(rt: ActorRuntime, addr: Any) -> dict[str, Any]:
    reply = rt.system.ask(addr, Ping(uuid.uuid4().hex), 10)
    assert isinstance(reply, Reply) and reply.ok
    return dict(reply.result)


def worker_pid(rt: ActorRuntime, addr: Any) -> int:
    return int(wait_for(lambda: workers(rt, addr)["pids"].get("sandbox-0")))


def test_a_compile_timeout_replaces_the_worker_and_requeues_its_jobs(pool) -> None:
    rt, addr = pool
    old = worker_pid(rt, addr)
    slow, queued = run(SLOW, compile_timeout_ms=200), run(ECHO)
    with rt.system.private() as me:
        me.tell(addr, slow)
        me.tell(addr, queued)  # waits behind the slow one on the only worker
        replies: dict[str, Reply] = {}
        while len(replies) < 2:
            reply = me.listen(30)
            assert isinstance(reply, Reply), reply
            replies[reply.request_id] = reply
    assert (replies[slow.request_id].ok, replies[slow.request_id].error_code) == (
        False, "wasm_compile_timeout")
    assert replies[queued.request_id].ok, replies[queued.request_id].message
    assert replies[queued.request_id].result["stdout"] == b"hi"
    wait_for(lambda: not alive(old))
    new = worker_pid(rt, addr)
    assert new != old and workers(rt, addr)["restarts"] == 1
    again = rt.system.ask(addr, run(ECHO), 30)
    assert again.ok and again.result["stdout"] == b"hi"


def test_a_hung_worker_is_killed_by_the_watchdog(pool) -> None:
    rt, addr = pool
    old = worker_pid(rt, addr)
    os.kill(old, signal.SIGSTOP)
    try:
        reply = rt.system.ask(addr, run(ECHO, compile_timeout_ms=100, timeout_ms=100), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)
    assert isinstance(reply, Reply)
    assert (reply.ok, reply.error_code) == (False, "sandbox_crashed")
    assert "hung" in reply.message
    wait_for(lambda: not alive(old))
    assert worker_pid(rt, addr) != old
    assert rt.system.ask(addr, run(ECHO), 30).ok
