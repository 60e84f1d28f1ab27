"""Sandbox actors: long-lived workers that run WASM modules, and the pool
that spreads runs over them.

``SandboxPool`` (a child of the root) owns N ``SandboxWorker`` processes.  A
run goes naosd -> pool -> worker -> pool -> naosd; the pool remembers who
asked, so when a worker dies mid-run (SIGKILL, a wasmtime crash) the caller
gets a ``sandbox_crashed`` error at once, the worker is restarted, and the
next run works.  A compile that passes its deadline is answered with
``wasm_compile_timeout`` and its worker replaced (see ``SandboxWorker``); a
worker that stops answering altogether is killed by the pool's watchdog.
Each worker has one ``WasmEngine`` (compiled-module cache in memory and in
the daemon's 0700 cache directory); every run gets a fresh Store and
instance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import NaosActor, error_reply
from actors.messages import (
    ChildPid,
    InitSandbox,
    KillChild,
    Reply,
    RunWasm,
    ValidateWasm,
)
from actors.wasm.limits import job_budget_s, limits_from
from naosd.errors import NaosError, SandboxCrashed, Unavailable, WasmCompileTimeout


class StoreHost:
    """The ``naos`` host services of one agent, backed by SQLite."""

    def __init__(self, store: Any, agent: str) -> None:
        self._store = store
        self._agent = agent
        self.lines: list[tuple[int, str]] = []

    def kv_get(self, key: bytes) -> bytes | None:
        from naosd.errors import NotFound

        try:
            value: bytes = self._store.kv_get(self._agent, key.decode("utf-8", "replace"))
        except NotFound:
            return None
        return value

    def kv_set(self, key: bytes, value: bytes) -> None:
        self._store.kv_set(self._agent, key.decode("utf-8", "replace"), value)

    def log(self, level: int, text: str) -> None:
        if len(self.lines) < 1000:
            self.lines.append((level, text))

    def call(self, name: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The channel functions need an agent's channel, which a sandbox job and
        an agent run in its actor (a remote node's) do not have."""
        return {"error": {"code": "unavailable", "message": (
            f"naos.{name}: this run has no agent channel (only a WASM agent hosted "
            "by its naosd can call the agent API)")}}


LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}


def run_module(engine: Any, module: bytes, stdin: bytes, limits: dict[str, Any],
               grants: tuple[str, ...], host: StoreHost | None) -> dict[str, Any]:
    """One run; returns a msgpack-able summary.  Limit errors propagate."""
    result = engine.run(module, stdin, limits=limits_from(limits), grants=frozenset(grants),
                        host=host if grants else None)
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "fuel_used": result.fuel_used,
        "cost_micro_usd": result.cost_micro_usd,
        "memory_peak_bytes": result.memory_peak_bytes,
        "wall_ms": round(result.wall_ms, 3),
        "cached": result.cached,
        "host_errors": list(result.host_errors),
        "logs": [(LEVELS.get(lvl, "info"), text) for lvl, text in (host.lines if host else [])],
    }


def open_store(db_path: str) -> Any:
    from naosd.storage.store import Store

    return Store.open(Path(db_path))


class SandboxWorker(NaosActor):
    """Runs one job at a time in its WasmEngine.

    After a compile passed its deadline (``WasmCompileTimeout``, answered like
    any error) the abandoned compile still runs on a thread: the worker then
    *retires*: it drops every later job unanswered and unstarted, so the pool
    can hand them to another worker while it kills this one."""

    def __init__(self) -> None:
        super().__init__()
        self._engine: Any = None
        self._store: Any = None
        self._db_path = ""
        self._retiring = False

    def receiveMsg_InitSandbox(self, msg: InitSandbox, sender: Any) -> None:
        from actors.wasm import WasmEngine

        self.name = msg.name
        self._db_path = msg.db_path
        self._engine = WasmEngine(Path(msg.cache_dir) if msg.cache_dir else None)
        self.send(sender, ChildPid(msg.name, os.getpid()))

    def receiveMsg_RunWasm(self, msg: RunWasm, sender: Any) -> None:
        if self._retiring:
            return
        host = None
        if msg.grants:
            if self._store is None:
                self._store = open_store(self._db_path)
            host = StoreHost(self._store, msg.agent or "wasm")
        with self._retire_on_compile_timeout():
            summary = run_module(self._engine, msg.module, msg.stdin, msg.limits, msg.grants,
                                 host)
        self.reply(sender, msg, summary)

    def receiveMsg_ValidateWasm(self, msg: ValidateWasm, sender: Any) -> None:
        if self._retiring:
            return
        with self._retire_on_compile_timeout():
            report = self._engine.validate(msg.module, limits_from(msg.limits),
                                           grants=frozenset(msg.grants))
        info = asdict(report)
        info["ok"] = report.ok
        self.reply(sender, msg, info)

    @contextlib.contextmanager
    def _retire_on_compile_timeout(self) -> Iterator[None]:
        try:
            yield
        except WasmCompileTimeout:
            self._retiring = True
            raise

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self._engine is not None and not self._retiring:
            self._engine.close()


@dataclass(slots=True)
class _Job:
    asker: Any
    worker: str
    msg: Any  # RunWasm or ValidateWasm: kept to hand it to another worker
    deadline: float  # time.monotonic()


BACKSTOP_SLACK_S = 5.0  # past a job's own budget: the worker is hung, not slow


class SandboxPool(NaosActor):
    """Spreads runs over its workers (least busy first) and replaces them.

    A worker is replaced (SIGKILL, then a new one under the same name) when it
    dies, when it reports a compile timeout (its unstarted jobs go to other
    workers), and when a job has no answer ``BACKSTOP_SLACK_S`` after its own
    budget (compile deadline + run timeout): then its jobs fail with
    ``sandbox_crashed``, as after a crash."""

    def __init__(self) -> None:
        super().__init__()
        self._init: InitSandbox | None = None
        self._workers: dict[str, Any] = {}  # name -> address
        self._pids: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._pending: dict[str, _Job] = {}  # request id -> job
        self._restarts = 0
        self._sweep_at: float | None = None

    def receiveMsg_InitSandbox(self, msg: InitSandbox, sender: Any) -> None:
        self.name = msg.name
        self._init = msg
        for i in range(max(1, msg.workers)):
            self._spawn(f"sandbox-{i}")
        self.send(sender, ChildPid(msg.name, os.getpid()))

    def _spawn(self, name: str) -> None:
        assert self._init is not None
        addr = self.createActor(SandboxWorker)
        self._workers[name] = addr
        self._busy[name] = 0
        self.send(addr, InitSandbox(name, self._init.db_path, self._init.cache_dir, 1))

    def receiveMsg_ChildPid(self, msg: ChildPid, sender: Any) -> None:
        if self._workers.get(msg.name) == sender:
            self._pids[msg.name] = msg.pid

    def receiveMsg_RunWasm(self, msg: RunWasm, sender: Any) -> None:
        self._dispatch(msg, sender)

    def receiveMsg_ValidateWasm(self, msg: ValidateWasm, sender: Any) -> None:
        self._dispatch(msg, sender)

    def _dispatch(self, msg: Any, sender: Any) -> None:
        if not self._workers:
            raise Unavailable("no sandbox worker is running")
        name = min(self._workers, key=lambda n: self._busy[n])
        self._busy[name] += 1
        budget = job_budget_s(msg.limits, run=isinstance(msg, RunWasm))
        deadline = time.monotonic() + budget + BACKSTOP_SLACK_S
        self._pending[msg.request_id] = _Job(sender, name, msg, deadline)
        self.send(self._workers[name], msg)
        self._arm_sweep(deadline)

    def receiveMsg_Reply(self, msg: Reply, sender: Any) -> None:
        job = self._pending.pop(msg.request_id, None)
        if job is None:
            return
        self._busy[job.worker] = max(0, self._busy.get(job.worker, 1) - 1)
        self.send(job.asker, msg)
        if msg.error_code == WasmCompileTimeout.code and self._workers.get(job.worker) == sender:
            self._replace(job.worker, requeue=True)

    def _arm_sweep(self, deadline: float) -> None:
        if self._sweep_at is None or deadline < self._sweep_at:
            self._sweep_at = deadline
            self.wakeupAfter(timedelta(seconds=max(0.0, deadline - time.monotonic())),
                             payload="sweep")

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload != "sweep":
            return
        self._sweep_at = None
        now = time.monotonic()
        hung = {job.worker for job in self._pending.values() if job.deadline <= now}
        for name in sorted(hung):
            self._replace(name, requeue=False)
        if self._pending:
            self._arm_sweep(min(job.deadline for job in self._pending.values()))

    def _replace(self, name: str, *, requeue: bool) -> None:
        """Kill worker ``name`` and start another under its name. Its jobs go
        to other workers (``requeue``: none of them started) or fail."""
        addr = self._workers.pop(name, None)
        pid = self._pids.pop(name, None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif addr is not None:
            self.send(addr, ActorExitRequest())
        self._restarts += 1
        self._spawn(name)
        for rid, job in [(r, j) for r, j in self._pending.items() if j.worker == name]:
            del self._pending[rid]
            if requeue:
                self._dispatch(job.msg, job.asker)
            else:
                self.send(job.asker, error_reply(job.msg, SandboxCrashed(
                    f"sandbox worker {name} gave no answer in time (hung); it was killed "
                    "and replaced")))
        self._busy[name] = sum(1 for j in self._pending.values() if j.worker == name)

    def receiveMsg_KillChild(self, msg: KillChild, sender: Any) -> None:
        """Test aid: SIGKILL worker ``msg.name`` (or the busiest one for "*")."""
        name = max(self._busy, key=lambda n: self._busy[n]) if msg.name == "*" else msg.name
        pid = self._pids.get(name)
        if pid is None:
            raise NaosError(f"no sandbox worker named {name!r}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.reply(sender, msg, pid)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        name = next((n for n, a in self._workers.items() if a == msg.childAddress), None)
        if name is None:
            return
        del self._workers[name]
        self._pids.pop(name, None)
        for rid, job in list(self._pending.items()):
            if job.worker == name:
                del self._pending[rid]
                crashed = SandboxCrashed(f"sandbox worker {name} died during the run; "
                                         "it has been restarted")
                self.send(job.asker, error_reply(job.msg, crashed))
        self._restarts += 1
        self._spawn(name)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(workers=sorted(self._workers), busy=dict(self._busy),
                    restarts=self._restarts, pids=dict(self._pids))
        return info
