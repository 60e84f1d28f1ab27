"""Sandbox actors: long-lived workers that run WASM modules, and the pool
that spreads runs over them.

``SandboxPool`` (a child of the root) owns N ``SandboxWorker`` processes.  A
run goes naosd -> pool -> worker -> pool -> naosd; the pool remembers who
asked, so when a worker dies mid-run (SIGKILL, a wasmtime crash) the caller
gets a ``sandbox_crashed`` error at once, the worker is restarted, and the
next run works.  Each worker has one ``WasmEngine`` (compiled-module cache in
memory and in the daemon's 0700 cache directory); every run gets a fresh
Store and instance.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited

from actors.base import NaosActor, error_reply
from actors.messages import (
    ChildPid,
    InitSandbox,
    KillChild,
    Reply,
    RunWasm,
    ValidateWasm,
)
from naosd.errors import NaosError, SandboxCrashed, Unavailable


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


LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}


def limits_from(spec: dict[str, Any]) -> Any:
    """``actors.wasm.Limits`` from a dict; InvalidRequest names a bad field."""
    from actors.wasm.limits import Limits
    from naosd.errors import ConfigError, InvalidRequest

    try:
        return Limits(**spec)
    except TypeError as exc:
        raise InvalidRequest(f"unknown WASM limit: {exc}") from None
    except ConfigError as exc:
        raise InvalidRequest(f"bad WASM limit: {exc.message}") from None


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
    def __init__(self) -> None:
        super().__init__()
        self._engine: Any = None
        self._store: Any = None
        self._db_path = ""

    def receiveMsg_InitSandbox(self, msg: InitSandbox, sender: Any) -> None:
        from actors.wasm import WasmEngine

        self.name = msg.name
        self._db_path = msg.db_path
        self._engine = WasmEngine(Path(msg.cache_dir) if msg.cache_dir else None)
        self.send(sender, ChildPid(msg.name, os.getpid()))

    def receiveMsg_RunWasm(self, msg: RunWasm, sender: Any) -> None:
        host = None
        if msg.grants:
            if self._store is None:
                self._store = open_store(self._db_path)
            host = StoreHost(self._store, msg.agent or "wasm")
        summary = run_module(self._engine, msg.module, msg.stdin, msg.limits, msg.grants, host)
        self.reply(sender, msg, summary)

    def receiveMsg_ValidateWasm(self, msg: ValidateWasm, sender: Any) -> None:
        report = self._engine.validate(msg.module, limits_from(msg.limits),
                                       grants=frozenset(msg.grants))
        info = asdict(report)
        info["ok"] = report.ok
        self.reply(sender, msg, info)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self._engine is not None:
            self._engine.close()


class SandboxPool(NaosActor):
    """Spreads runs over its workers (least busy first) and restarts them."""

    def __init__(self) -> None:
        super().__init__()
        self._init: InitSandbox | None = None
        self._workers: dict[str, Any] = {}  # name -> address
        self._pids: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._pending: dict[str, tuple[Any, str]] = {}  # request id -> (asker, worker)
        self._restarts = 0

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
        self._pending[msg.request_id] = (sender, name)
        self.send(self._workers[name], msg)

    def receiveMsg_Reply(self, msg: Reply, sender: Any) -> None:
        asker, name = self._pending.pop(msg.request_id, (None, ""))
        if asker is None:
            return
        self._busy[name] = max(0, self._busy.get(name, 1) - 1)
        self.send(asker, msg)

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
        for rid, (asker, worker) in list(self._pending.items()):
            if worker == name:
                del self._pending[rid]
                crashed = SandboxCrashed(f"sandbox worker {name} died during the run; "
                                         "it has been restarted")
                self.send(asker, error_reply(_Rid(rid), crashed))
        self._restarts += 1
        self._spawn(name)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(workers=sorted(self._workers), busy=dict(self._busy),
                    restarts=self._restarts, pids=dict(self._pids))
        return info


class _Rid:
    """Just enough of a Request for error_reply."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
