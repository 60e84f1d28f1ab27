"""A WASM agent inside the handler host: the module runs once per message in
a fresh instance (wasmtime, fuel-metered), the message as JSON on stdin, the
reply from stdout (JSON if it parses, else text).

The ``naos`` host functions a definition grants (``log``, ``kv_get``,
``kv_set``, and the channel functions ``llm_chat``, ``agent_ask``,
``agent_tell``, ``execute``, ``state_get``, ``state_set``; see
docs/wasm-abi.md) reach naosd over the agent's channel, as this agent,
exactly as a Python agent's ``ctx`` does: the guest runs on a worker thread,
and each host call waits for naosd's answer (the engine's host services are
synchronous), at most until the run's or the message's deadline.  A guest
that exits non-zero or hits a limit is an error reply, not a crash: the
next message gets a fresh instance anyway.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from actors.domain.wasm_abi import KV_FUNCTIONS
from actors.wasm.limits import wasm_limits
from naos.context import STATE_VALUE_LIMIT
from naosd.errors import InvalidRequest, NaosError, NotFound, WasmExit

LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}
HOST_CALL_S = 30.0  # one host call's wait for naosd


class ChannelHost:
    """The engine's ``HostServices`` for one message, over the channel.

    ``call`` serves the channel functions (docs/wasm-abi.md) as this agent,
    exactly as ``ctx`` does: ``llm_chat`` is ``ctx.llm.chat``, ``agent_ask``
    ``ctx.ask``, ``agent_tell`` ``ctx.tell``, ``execute`` ``ctx.execute``;
    ``state_get``/``state_set`` read and write ``ctx.state``, but the writes
    are held here and applied (by :meth:`commit`) only when the guest
    succeeds: a guest that fails commits nothing, like a handler that crashes.
    """

    def __init__(self, call: Callable[[str, dict[str, Any], float], Any],
                 log: Callable[..., None], state: MutableMapping[str, Any]) -> None:
        self._call = call
        self._log = log
        self._state = state
        self._writes: dict[str, Any] = {}  # key -> value, or _DELETED

    def kv_get(self, key: bytes) -> bytes | None:
        result = self._call("kv.get", {"key": key.decode("utf-8", "replace")}, HOST_CALL_S)
        value = result.get("value") if isinstance(result, dict) else None
        return None if value is None else base64.b64decode(value)

    def kv_set(self, key: bytes, value: bytes) -> None:
        self._call("kv.set", {"key": key.decode("utf-8", "replace"),
                              "value": base64.b64encode(value).decode()}, HOST_CALL_S)

    def log(self, level: int, text: str) -> None:
        self._log(text, level=LEVELS.get(level, "info"))

    def call(self, name: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``{"ok": value}`` or ``{"error": {"code", "message"}}``; never raises
        for what the guest asked or naosd answered."""
        try:
            return {"ok": _CALLS[name](self, request, timeout_s)}
        except NaosError as exc:
            return {"error": {"code": exc.code, "message": f"naos.{name}: {exc.message}"}}
        except TimeoutError:
            return {"error": {"code": "timeout", "message": (
                f"naos.{name}: no answer within the run's {timeout_s:.1f} s left")}}

    def commit(self) -> None:
        """Apply the guest's state writes to ``ctx.state`` (it succeeded)."""
        for key, value in self._writes.items():
            if value is _DELETED:
                self._state.pop(key, None)
            else:
                self._state[key] = value

    # -- the channel functions ----------------------------------------------------
    def _llm_chat(self, request: dict[str, Any], timeout_s: float) -> Any:
        return self._call("llm.chat", request, timeout_s)

    def _agent_ask(self, request: dict[str, Any], timeout_s: float) -> Any:
        agent, message = _fields(request, "agent_ask", {"timeout"})
        timeout = request.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, int | float) or timeout <= 0):
            raise InvalidRequest("timeout must be a positive number of seconds")
        limit = timeout_s if timeout is None else min(float(timeout), timeout_s)
        result = self._call("agent.ask", {"agent": agent, "input": message,
                                          "timeout": limit}, limit)
        return result.get("output") if isinstance(result, dict) else result

    def _agent_tell(self, request: dict[str, Any], timeout_s: float) -> Any:
        agent, message = _fields(request, "agent_tell", set())
        return self._call("agent.tell", {"agent": agent, "input": message}, timeout_s)

    def _execute(self, request: dict[str, Any], timeout_s: float) -> Any:
        _only(request, "execute", {"task", "route"})
        return self._call("broker.execute", {"task": request.get("task"),
                                             "route": request.get("route")}, timeout_s)

    def _state_get(self, request: dict[str, Any], timeout_s: float) -> Any:
        _only(request, "state_get", {"key"})
        key = _state_key(request)
        value = self._writes.get(key, self._state.get(key, _DELETED))
        if value is _DELETED:
            raise NotFound(f"state key {key!r} is not set")
        return value

    def _state_set(self, request: dict[str, Any], timeout_s: float) -> Any:
        _only(request, "state_set", {"key", "value", "delete"})
        key = _state_key(request)
        if request.get("delete") is True:
            self._writes[key] = _DELETED
            return None
        if "value" not in request:
            raise InvalidRequest("state_set: give value (any JSON) or delete: true")
        size = len(json.dumps(request["value"]))
        if size > STATE_VALUE_LIMIT:
            raise InvalidRequest(f"state_set: {size} bytes of JSON for {key!r} "
                                 f"(limit {STATE_VALUE_LIMIT})")
        self._writes[key] = request["value"]
        return None


_DELETED: Any = object()
_CALLS: dict[str, Callable[[ChannelHost, dict[str, Any], float], Any]] = {
    "llm_chat": ChannelHost._llm_chat, "agent_ask": ChannelHost._agent_ask,
    "agent_tell": ChannelHost._agent_tell, "execute": ChannelHost._execute,
    "state_get": ChannelHost._state_get, "state_set": ChannelHost._state_set,
}


def _only(request: dict[str, Any], name: str, allowed: set[str]) -> None:
    unknown = set(request) - allowed
    if unknown:
        raise InvalidRequest(f"{name}: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"expected {', '.join(sorted(allowed))}")


def _fields(request: dict[str, Any], name: str, extra: set[str]) -> tuple[str, Any]:
    _only(request, name, {"agent", "input", *extra})
    agent = request.get("agent")
    if not isinstance(agent, str) or not agent:
        raise InvalidRequest(f"{name}: agent: the name of the agent to call is required")
    return agent, request.get("input")


def _state_key(request: dict[str, Any]) -> str:
    key = request.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidRequest("key: a non-empty string is required")
    return key


def wasm_grants(spec: dict[str, Any], config: dict[str, Any]) -> frozenset[str]:
    """The host functions this agent's definition grants: its execution
    ``grants`` (naosd hands over the WASM ones), and, the older form, the
    KV and log functions named in ``config.grants``."""
    legacy = {str(g) for g in config.get("grants", ()) if g in KV_FUNCTIONS}
    return frozenset({str(g) for g in spec.get("grants", ())} | legacy)


class WasmAgent:
    """``handle(message, ctx)`` for a sync host slot (runs on a worker thread)."""

    def __init__(self, source: str, config: dict[str, Any], grants: frozenset[str],
                 submit: Callable[[Awaitable[Any], float], Any],
                 call: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        from actors.wasm import WasmEngine
        from actors.wasm.files import read_module

        self._module = read_module(Path(source))
        self._engine = WasmEngine(None, reserve_address_space=False)
        self._compiled = self._engine.compile(self._module)
        self._grants = grants
        self._limits = wasm_limits(config)
        self._submit = submit
        self._call = call

    def handle(self, message: Any, ctx: Any) -> Any:
        from actors.wasm.limits import limits_from

        scope = ctx._scope

        def host_call(method: str, params: dict[str, Any], timeout_s: float) -> Any:
            left = scope.remaining()
            wait = timeout_s if left is None else min(timeout_s, left)
            # "run" last: a guest cannot name another message's run (its chain)
            return self._submit(self._call(method, {**params, "run": scope.run}), wait)

        host = ChannelHost(host_call, ctx.log, ctx.state) if self._grants else None
        try:
            result = self._engine.run(self._compiled, json.dumps(message).encode(),
                                      limits=limits_from(self._limits), grants=self._grants,
                                      host=host)
        except NaosError as exc:  # a limit or a trap: an error reply, not a crash
            raise GuestFailed(exc) from None
        if result.stderr:
            ctx.log(result.stderr.decode("utf-8", "replace")[:4096], level="warning")
        for problem in result.host_errors:
            ctx.log(problem, level="error")
        if result.exit_code != 0:
            raise GuestFailed(WasmExit(
                f"guest exited with code {result.exit_code}: "
                f"{result.stderr.decode('utf-8', 'replace')[:500]}"))
        if host is not None:
            host.commit()
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


def submitter(loop: asyncio.AbstractEventLoop) -> Callable[[Awaitable[Any], float], Any]:
    """Run an awaitable on the host's loop from a worker thread, waiting at
    most ``timeout_s``; past it the call is cancelled and TimeoutError raised."""
    def submit(awaitable: Awaitable[Any], timeout_s: float) -> Any:
        async def wrap() -> Any:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrap(), loop)
        try:
            return future.result(timeout=max(timeout_s, 0.0))
        except TimeoutError:
            future.cancel()
            raise

    return submit
