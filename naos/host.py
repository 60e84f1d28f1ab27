"""The handler host: the process an agent's code runs in.

Started by the agent's actor as ``python -I -B -m naos.host [SPEC] --fd N``
with nothing inherited but descriptor ``N``: the agent's channel, already
admitted by naosd (the actor opened it with its token).  In order it:

1. confines itself when a confinement spec is given (``naosd.runtime.confine``:
   Landlock, seccomp, rlimits, namespaces), before it imports agent code;
2. asks naosd what to load (``agent.start``: the handler, its config, its
   concurrency, the agent's state);
3. loads the handler (a Python module, a template, or a WASM module) and
   tells naosd whether that worked (``agent.loaded``, with its pid);
4. serves ``run`` requests until naosd closes the channel.

A handler that raises is a crash: the run is answered with ``crashed`` and
the process exits (its supervisor restarts it: let it crash).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from naos.context import AsyncContext, Context, RunScope, State, wait_for_loop
from naos.peer import Incoming, Method, Peer
from naos.wasm_agent import GuestFailed

EXIT_CRASHED = 70  # the handler raised: naosd was told why on the channel
EXIT_LOAD_FAILED = 71
EXIT_NO_CHANNEL = 72


def load(spec: dict[str, Any]) -> ModuleType:
    kind, source = spec["kind"], spec["source"]
    if kind == "template":
        return importlib.import_module(f"actors.templates.{source}")
    path = Path(source)
    name = f"naos_agent_{spec['agent'].replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Host:
    """Serves one agent's messages on its channel."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.name = ""
        self.config: dict[str, Any] = {}
        self.state = State()
        self._slots = asyncio.Semaphore(1)
        self._threads: ThreadPoolExecutor | None = None
        self._handle: Callable[..., Any] | None = None
        self._is_async = False
        self._crashed = False

    def methods(self) -> dict[str, Method]:
        return {"run": Method(self.run), "ping": Method(self.ping)}

    async def start(self) -> None:
        """Ask naosd what to load, load it, tell naosd how that went."""
        try:
            spec = await self.peer.call("agent.start", {})
            self.name = str(spec["agent"])
            self.config = dict(spec.get("config") or {})
            self.state = State(spec.get("state") or {})
            concurrency = max(1, int(spec.get("max_concurrency") or 1))
            self._slots = asyncio.Semaphore(concurrency)
            self._threads = ThreadPoolExecutor(max_workers=concurrency,
                                               thread_name_prefix="naos-handler")
            loop = asyncio.get_running_loop()
            if spec["kind"] == "wasm":
                self._handle, self._is_async = self._wasm(spec), False
            else:  # off the loop: a module's import (or Agent.__init__) may block or call ctx
                self._handle, self._is_async = await loop.run_in_executor(
                    self._threads, lambda: self._pick(load(spec), loop))
        except BaseException as exc:  # noqa: BLE001 - any failure to load is reported
            reason = _describe(exc)
            report({"loaded": False, "error": reason})
            with contextlib.suppress(Exception):
                await self.peer.call("agent.loaded", {"ok": False, "error": reason})
            raise SystemExit(EXIT_LOAD_FAILED) from None
        await self.peer.call("agent.loaded", {"ok": True, "pid": os.getpid()})
        report({"loaded": True, "pid": os.getpid()})

    def _wasm(self, spec: dict[str, Any]) -> Callable[..., Any]:
        from naos.wasm_agent import WasmAgent, submitter, wasm_grants

        agent = WasmAgent(str(spec["source"]), self.config, wasm_grants(spec, self.config),
                          submitter(asyncio.get_running_loop()), self.peer.call)
        return agent.handle

    def _pick(self, module: ModuleType, loop: asyncio.AbstractEventLoop | None = None,
              ctx: Context | None = None) -> tuple[Callable[..., Any], bool]:
        cls = getattr(module, "Agent", None)
        if isinstance(cls, type):
            scope = RunScope(None)
            instance = cls(ctx or self._context(scope, is_async=False, loop=loop))
            fn = getattr(instance, "handle", None)
            if not callable(fn):
                raise TypeError(f"{module.__name__}.Agent has no handle(message, ctx) method")
        else:
            fn = getattr(module, "handle", None)
            if not callable(fn):
                raise TypeError(f"{getattr(module, '__file__', module.__name__)} defines "
                                "neither handle(message, ctx) nor class Agent")
        return fn, inspect.iscoroutinefunction(fn)

    def _context(self, scope: RunScope, *, is_async: bool,
                 loop: asyncio.AbstractEventLoop | None = None) -> AsyncContext | Context:
        args = (self.name, self.config, self.state, scope, self.peer.call, self.peer.stream)
        if is_async:
            return AsyncContext(*args)
        return Context(*args, run_sync=wait_for_loop(loop or asyncio.get_running_loop(), scope))

    async def ping(self, call: Incoming) -> dict[str, Any]:
        return {"pid": os.getpid(), "agent": self.name}

    async def run(self, call: Incoming) -> dict[str, Any]:
        p = call.params
        scope = RunScope(p.get("run"), str(p.get("request_id") or ""),
                         str(p.get("idempotency_key") or ""),
                         float(p["deadline_s"]) if p.get("deadline_s") is not None else None)
        async with self._slots:
            started = time.perf_counter()
            try:
                output = await self._call(p.get("input"), scope)
                json.dumps(output)
            except asyncio.CancelledError:
                raise
            except GuestFailed as failed:  # a WASM guest's error: not a crash
                scope.log((failed.error.message,), "error")
                return {"error": {"code": failed.error.code, "message": failed.error.message},
                        "logs": scope.lines, "output": None, "ms": 0.0}
            except BaseException as exc:  # noqa: BLE001 - let it crash, but say why
                return self._crash(exc, scope)
        ms = (time.perf_counter() - started) * 1e3
        if scope.stop_requested:  # ctx.stop(): a normal exit once this reply is sent
            asyncio.get_running_loop().call_later(0.05, _exit_normally)
        return {"output": output, "ms": round(ms, 3), "logs": scope.lines,
                "state": self.state.take_changes(), "stop": scope.stop_requested}

    async def _call(self, message: Any, scope: RunScope) -> Any:
        assert self._handle is not None
        token = CURRENT_SCOPE.set(scope)  # print() lands in this message's log lines
        try:
            if self._is_async:
                return await self._handle(message, self._context(scope, is_async=True))
            ctx = self._context(scope, is_async=False)
            loop = asyncio.get_running_loop()
            run = contextvars.copy_context().run
            return await loop.run_in_executor(self._threads, run, self._handle, message, ctx)
        finally:
            CURRENT_SCOPE.reset(token)

    def _crash(self, exc: BaseException, scope: RunScope) -> dict[str, Any]:
        reason = f"handler raised {_describe(exc)}"
        if isinstance(exc, TypeError | ValueError) and "JSON" in str(exc):
            reason = f"the handler's reply is not JSON-serialisable: {exc}"
        scope.log((reason,), "error")
        report({"crashed": reason[:2000]})
        self._crashed = True
        asyncio.get_running_loop().call_later(0.05, _exit_crashed)
        return {"crashed": reason, "logs": scope.lines, "output": None, "ms": 0.0}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _exit_crashed() -> None:
    os._exit(EXIT_CRASHED)


def _exit_normally() -> None:
    os._exit(0)


CURRENT_SCOPE: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "naos_run_scope", default=None)


class LineWriter(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a handler: whole lines become log lines
    of the message being served (dropped outside one)."""

    def __init__(self, level: str) -> None:
        self._level = level
        self._partial = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        buffered = getattr(self._partial, "text", "") + text
        *lines, rest = buffered.split("\n")
        self._partial.text = rest[:8192]
        scope = CURRENT_SCOPE.get()
        if scope is not None:
            for line in lines:
                scope.log((line,), self._level)
        return len(text)


_STATUS_FD: list[int] = []  # the actor's pipe, kept for last words


def report(status: dict[str, Any]) -> None:
    """One line of JSON to the actor that started this process (its stdout is
    the actor's pipe).  The first report moves stdout and stderr to /dev/null
    (nothing the handler prints can fill a pipe nobody reads: print() goes to
    the run's log lines, see :class:`LineWriter`) and keeps the pipe for the
    last words of a crash."""
    if not _STATUS_FD:
        with contextlib.suppress(OSError):
            _STATUS_FD.append(os.dup(1))
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    for fd in _STATUS_FD:
        with contextlib.suppress(OSError):
            os.write(fd, (json.dumps(status) + "\n").encode())


def probe(spec: dict[str, Any]) -> None:
    """Load the handler (confined, as the agent would run it) and report
    whether that worked; serve nothing.  naosd checks a handler this way
    before it creates the agent."""
    try:
        if spec.get("kind") == "wasm":
            from actors.wasm import WasmEngine
            from actors.wasm.files import read_module

            engine = WasmEngine(None, reserve_address_space=False)  # as the agent runs it
            engine.compile(read_module(Path(str(spec["source"]))))
        else:
            host = Host(Peer(None, None, {}))  # type: ignore[arg-type]  # never used
            host.name = str(spec.get("agent") or "probe")
            host.config = dict(spec.get("config") or {})
            module = load(spec)
            # Agent.__init__ runs too (its failure is a load failure); naos
            # calls it makes fail: the probe has no channel.
            host._pick(module, ctx=Context(host.name, host.config, host.state, RunScope(None),
                                           host.peer.call, host.peer.stream,
                                           run_sync=_no_calls_in_a_probe))
    except BaseException as exc:  # noqa: BLE001 - any failure to load is the answer
        report({"loaded": False, "error": _describe(exc)})
        raise SystemExit(EXIT_LOAD_FAILED) from None
    report({"loaded": True, "pid": os.getpid()})


def _no_calls_in_a_probe(awaitable: Any) -> Any:
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise RuntimeError("naos calls are not available while naosd checks that the handler "
                       "loads (at create): make them in handle(), not in Agent.__init__")


async def serve(fd: int) -> None:
    sys.stdout = LineWriter("info")
    sys.stderr = LineWriter("warning")
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    peer = Peer(reader, writer, {})
    host = Host(peer)
    peer.methods = host.methods()
    reading = asyncio.get_running_loop().create_task(peer.run())
    await host.start()
    await reading


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("--"):  # a confinement spec comes first
        from naosd.runtime.confine.bootstrap import confine_from_argv

        _, args = confine_from_argv(args)
    parser = argparse.ArgumentParser(prog="naos.host")
    parser.add_argument("--fd", type=int, help="the agent's channel")
    parser.add_argument("--probe", help="load this handler (JSON: kind, source, config) and exit")
    ns = parser.parse_args(args)
    if ns.probe is not None:
        probe(json.loads(ns.probe))
        return
    if ns.fd is None:
        parser.error("--fd or --probe is required")
    try:
        os.fstat(ns.fd)
    except OSError:
        sys.stderr.write(f"naos.host: descriptor {ns.fd} is not open: no channel\n")
        raise SystemExit(EXIT_NO_CHANNEL) from None
    asyncio.run(serve(ns.fd))


if __name__ == "__main__":
    main()
