"""Scenarios for tests/test_sandbox_pool.py, each run in a fresh interpreter.

wasmtime does not survive fork(): a process forked after its parent compiled
(wasmtime's compile thread pool) or ran a WASI guest (its I/O runtime) hangs
in its own next compile or run. The actor system forks every actor from the
process that starts it, so a test process that has used wasmtime cannot host
sandbox workers; naosd starts its actor system before any wasmtime use.

    python tests/sandbox_pool_scenarios.py NAME   (prints one JSON line)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import alive, wait_for
from wasm_modules import many_functions

from actors.messages import ChildPid, InitSandbox, Ping, Reply, RunWasm
from actors.sandbox import SandboxPool
from naosd.runtime.actorsys import ActorRuntime

ECHO = (Path(__file__).resolve().parent.parent / "examples" / "wasm" / "echo.wasm").read_bytes()
SLOW = many_functions(20_000)  # under the function limit, seconds to compile


@contextlib.contextmanager
def pool() -> Iterator[tuple[ActorRuntime, Any]]:
    rt = ActorRuntime.start(secret=secrets.token_bytes(32))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            addr = rt.system.createActor(SandboxPool)
            started = rt.system.ask(addr, InitSandbox("sandbox", f"{tmp}/db", "", 1), 10)
            assert isinstance(started, ChildPid), started
            yield rt, addr
    finally:
        pids = rt.descendant_pids()
        rt.shutdown(timeout=10)
        assert [pid for pid in pids if alive(pid)] == []


def run(module: bytes, **limits: int) -> RunWasm:
    return RunWasm(uuid.uuid4().hex, module, b"hi", dict(limits))


def described(rt: ActorRuntime, addr: Any) -> dict[str, Any]:
    reply = rt.system.ask(addr, Ping(uuid.uuid4().hex), 10)
    assert isinstance(reply, Reply) and reply.ok, reply
    return dict(reply.result)


def worker_pid(rt: ActorRuntime, addr: Any) -> int:
    return int(wait_for(lambda: described(rt, addr)["pids"].get("sandbox-0")))


def answer(reply: Any) -> dict[str, Any]:
    assert isinstance(reply, Reply), reply
    stdout = reply.result["stdout"].decode() if reply.ok else None
    return {"ok": reply.ok, "code": reply.error_code, "message": reply.message,
            "stdout": stdout}


def compile_timeout() -> dict[str, Any]:
    with pool() as (rt, addr):
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
        wait_for(lambda: not alive(old))
        new = worker_pid(rt, addr)
        return {"slow": answer(replies[slow.request_id]),
                "queued": answer(replies[queued.request_id]),
                "replaced": new != old, "restarts": described(rt, addr)["restarts"],
                "next": answer(rt.system.ask(addr, run(ECHO), 30))}


def hung_worker() -> dict[str, Any]:
    with pool() as (rt, addr):
        old = worker_pid(rt, addr)
        os.kill(old, signal.SIGSTOP)
        try:
            reply = rt.system.ask(addr, run(ECHO, compile_timeout_ms=100, timeout_ms=100), 30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGCONT)
        wait_for(lambda: not alive(old))
        return {"hung": answer(reply), "replaced": worker_pid(rt, addr) != old,
                "next": answer(rt.system.ask(addr, run(ECHO), 30))}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "compile_timeout": compile_timeout, "hung_worker": hung_worker}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))  # noqa: T201 - the result for the test
