"""The handler host: the process an agent's code runs in.

Started by the agent's actor as ``python -I -m naos.host`` with nothing but
its bootstrap on stdin (a JSON map: the agent socket's path, the agent's
name, a one-time ``nonce`` and ``token``, the handler to load, its config,
its concurrency and its confinement).  In order it:

1. reads the bootstrap and closes stdin;
2. connects to naosd's agent socket and presents the token: from then on
   that connection is this agent's channel, its only way out;
3. confines itself (``naosd.runtime.confine``, when the bootstrap asks for
   it): after this it cannot open another connection, read naosd's files or
   signal other processes;
4. loads the handler (a Python module, a template, or a WASM module) and
   tells naosd whether that worked (``agent.loaded``);
5. serves ``run`` requests until naosd closes the channel.

A handler that raises is a crash: the run is answered with ``crashed`` and
the process exits (its supervisor restarts it: let it crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from naos.context import AsyncContext, Context, RunScope, State, wait_for_loop
from naos.peer import Incoming, Method, Peer
from naosd.control import protocol

BOOTSTRAP_LIMIT = 1 << 20
EXIT_CRASHED = 70  # the handler raised: the actor reports the reason naosd was told
EXIT_LOAD_FAILED = 71
EXIT_NO_CHANNEL = 72


class Crash(Exception):
    """The handler raised (or answered something that is not JSON)."""


def read_bootstrap() -> dict[str, Any]:
    raw = sys.stdin.buffer.read(BOOTSTRAP_LIMIT + 1)
    if len(raw) > BOOTSTRAP_LIMIT:
        raise SystemExit("naos.host: bootstrap too large")
    boot = json.loads(raw)
    if not isinstance(boot, dict):
        raise SystemExit("naos.host: the bootstrap must be a JSON map")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return boot


async def connect(boot: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open the channel and present the token (before any agent code runs)."""
    reader, writer = await asyncio.open_unix_connection(boot["socket"])
    writer.write(protocol.encode_frame(protocol.hello(
        "agent", agent=boot["agent"], nonce=boot["nonce"], token=boot["token"],
        pid=os.getpid())))
    await writer.drain()
    decoder = protocol.FrameDecoder(max_frame=4096)
    while True:
        data = await reader.read(4096)
        if not data:
            raise SystemExit(EXIT_NO_CHANNEL)
        frames = decoder.feed(data)
        if frames:
            break
    if frames[0].get("type") != "hello":
        sys.stderr.write(f"naos.host: naosd refused the channel: {frames[0].get('message')}\n")
        raise SystemExit(EXIT_NO_CHANNEL)
    return reader, writer


def confine(boot: dict[str, Any]) -> None:
    """Apply the confinement the bootstrap names (nothing for ``none``)."""
    policy = boot.get("confinement")
    if not policy or policy.get("mode") == "none":
        return
    from naosd.runtime.confine import apply  # type: ignore[attr-defined]

    apply(policy)


def load(boot: dict[str, Any]) -> ModuleType:
    kind, source = boot["kind"], boot["source"]
    if kind == "template":
        return importlib.import_module(f"actors.templates.{source}")
    path = Path(source)
    name = f"naos_agent_{boot['agent'].replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Host:
    """Serves one agent's messages on its channel."""

    def __init__(self, boot: dict[str, Any], peer: Peer) -> None:
        self.boot = boot
        self.name: str = boot["agent"]
        self.config: dict[str, Any] = dict(boot.get("config") or {})
        self.peer = peer
        self.state = State()
        concurrency = max(1, int(boot.get("max_concurrency") or 1))
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=concurrency,
                                           thread_name_prefix="naos-handler")
        self._handle: Callable[..., Any] | None = None
        self._is_async = False
        self._crashed = False

    def methods(self) -> dict[str, Method]:
        return {"run": Method(self.run), "ping": Method(self.ping)}

    async def start(self) -> None:
        """Load state and the handler; tell naosd how that went."""
        try:
            loaded = await self.peer.call("state.load", {})
            self.state = State(loaded.get("values") if isinstance(loaded, dict) else {})
            module = load(self.boot)
            self._handle, self._is_async = self._pick(module)
        except BaseException as exc:  # noqa: BLE001 - any failure to load is reported
            reason = _describe(exc)
            with contextlib.suppress(Exception):
                await self.peer.call("agent.loaded", {"ok": False, "error": reason})
            raise SystemExit(EXIT_LOAD_FAILED) from None
        await self.peer.call("agent.loaded", {"ok": True, "pid": os.getpid()})

    def _pick(self, module: ModuleType) -> tuple[Callable[..., Any], bool]:
        cls = getattr(module, "Agent", None)
        if isinstance(cls, type):
            scope = RunScope(None)
            instance = cls(self._context(scope, is_async=False))
            fn = getattr(instance, "handle", None)
            if not callable(fn):
                raise TypeError(f"{module.__name__}.Agent has no handle(message, ctx) method")
        else:
            fn = getattr(module, "handle", None)
            if not callable(fn):
                raise TypeError(f"{getattr(module, '__file__', module.__name__)} defines "
                                "neither handle(message, ctx) nor class Agent")
        return fn, inspect.iscoroutinefunction(fn)

    def _context(self, scope: RunScope, *, is_async: bool) -> AsyncContext | Context:
        args = (self.name, self.config, self.state, scope, self.peer.call, self.peer.stream)
        if is_async:
            return AsyncContext(*args)
        return Context(*args, run_sync=wait_for_loop(asyncio.get_running_loop(), scope))

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
            except BaseException as exc:  # noqa: BLE001 - let it crash, but say why
                return self._crash(exc, scope)
        ms = (time.perf_counter() - started) * 1e3
        return {"output": output, "ms": round(ms, 3), "logs": scope.lines,
                "state": self.state.take_changes(), "stop": scope.stop_requested}

    async def _call(self, message: Any, scope: RunScope) -> Any:
        assert self._handle is not None
        if self._is_async:
            return await self._handle(message, self._context(scope, is_async=True))
        ctx = self._context(scope, is_async=False)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._handle, message, ctx)

    def _crash(self, exc: BaseException, scope: RunScope) -> dict[str, Any]:
        reason = f"handler raised {_describe(exc)}"
        if isinstance(exc, TypeError | ValueError) and "JSON" in str(exc):
            reason = f"the handler's reply is not JSON-serialisable: {exc}"
        scope.log((reason,), "error")
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


async def serve(boot: dict[str, Any]) -> None:
    reader, writer = await connect(boot)
    confine(boot)
    peer = Peer(reader, writer, {})
    host = Host(boot, peer)
    peer.methods = host.methods()
    reading = asyncio.get_running_loop().create_task(peer.run())
    await host.start()
    await reading


def main() -> None:
    boot = read_bootstrap()
    asyncio.run(serve(boot))


if __name__ == "__main__":
    main()
