"""A WASM agent inside the handler host: the module runs once per message in
a fresh instance (wasmtime, fuel-metered), the message as JSON on stdin, the
reply from stdout (JSON if it parses, else text).

The ``naos`` host functions a definition grants (``log``, ``kv_get``,
``kv_set``; see docs/wasm-abi.md) reach naosd over the agent's channel,
as this agent: the guest runs on a worker thread, and each host call waits
for naosd's answer (the engine's host services are synchronous).  A guest
that exits non-zero or hits a limit is an error reply, not a crash: the
next message gets a fresh instance anyway.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from naosd.errors import NaosError, WasmExit

LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}
HOST_CALL_S = 30.0  # one host call's wait for naosd


def wasm_limits(config: dict[str, Any]) -> dict[str, int]:
    """Limits for a WASM agent from its config: ``fuel``, ``memory_mb``,
    ``timeout_s``, and any other field of ``actors.wasm.Limits`` under
    ``limits`` (e.g. ``{"limits": {"stdout_bytes": 65536}}``)."""
    extra = config.get("limits", {})
    limits: dict[str, int] = dict(extra) if isinstance(extra, dict) else {}
    if "fuel" in config:
        limits["fuel"] = int(config["fuel"])
    if "memory_mb" in config:
        limits["memory_bytes"] = int(float(config["memory_mb"]) * 1024 * 1024)
    if "timeout_s" in config:
        limits["timeout_ms"] = int(float(config["timeout_s"]) * 1000)
    return limits


class ChannelHost:
    """The engine's ``HostServices`` for one message, over the channel."""

    def __init__(self, call: Callable[[str, dict[str, Any]], Any], log: Callable[..., None]
                 ) -> None:
        self._call = call
        self._log = log

    def kv_get(self, key: bytes) -> bytes | None:
        result = self._call("kv.get", {"key": key.decode("utf-8", "replace")})
        value = result.get("value") if isinstance(result, dict) else None
        return None if value is None else base64.b64decode(value)

    def kv_set(self, key: bytes, value: bytes) -> None:
        self._call("kv.set", {"key": key.decode("utf-8", "replace"),
                              "value": base64.b64encode(value).decode()})

    def log(self, level: int, text: str) -> None:
        self._log(text, level=LEVELS.get(level, "info"))


class WasmAgent:
    """``handle(message, ctx)`` for a sync host slot (runs on a worker thread)."""

    def __init__(self, source: str, config: dict[str, Any],
                 submit: Callable[[Awaitable[Any]], Any],
                 call: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        from actors.wasm import WasmEngine
        from actors.wasm.files import read_module

        self._module = read_module(Path(source))
        self._engine = WasmEngine(None)
        self._compiled = self._engine.compile(self._module)
        self._grants = frozenset(str(g) for g in config.get("grants", ()))
        self._limits = wasm_limits(config)
        self._submit = submit
        self._call = call

    def handle(self, message: Any, ctx: Any) -> Any:
        from actors.wasm.limits import limits_from

        def host_call(method: str, params: dict[str, Any]) -> Any:
            return self._submit(self._call(method, {**params, "run": ctx._scope.run}))

        host = ChannelHost(host_call, ctx.log) if self._grants else None
        try:
            result = self._engine.run(self._compiled, json.dumps(message).encode(),
                                      limits=limits_from(self._limits), grants=self._grants,
                                      host=host)
        except NaosError as exc:  # a limit or a trap: an error reply, not a crash
            raise GuestFailed(exc) from None
        if result.stderr:
            ctx.log(result.stderr.decode("utf-8", "replace")[:4096], level="warning")
        if result.exit_code != 0:
            raise GuestFailed(WasmExit(
                f"guest exited with code {result.exit_code}: "
                f"{result.stderr.decode('utf-8', 'replace')[:500]}"))
        ctx.log(f"fuel {result.fuel_used}, cost {result.cost_micro_usd} micro-USD")
        return _decode(result.stdout)


class GuestFailed(Exception):
    """The guest failed or hit a limit: the host answers with the error."""

    def __init__(self, error: NaosError) -> None:
        super().__init__(error.message)
        self.error = error


def _decode(out: bytes) -> Any:
    text = out.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def submitter(loop: asyncio.AbstractEventLoop) -> Callable[[Awaitable[Any]], Any]:
    """Run an awaitable on the host's loop from a worker thread, bounded."""
    def submit(awaitable: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrap(), loop).result(timeout=HOST_CALL_S)

    return submit
