"""``ctx``: what an agent's handler gets besides its message.

An ``async def handle(message, ctx)`` gets an :class:`AsyncContext`; a plain
``def handle(message, ctx)`` (run on a worker thread) gets a
:class:`Context` with the same calls, blocking.  Every call goes over the
agent's channel and acts as this agent: trust gate, budget, run, settle and
audit happen in naosd (docs/agents.md lists each call, its errors and its
cost).  Calls made while serving a message inherit what is left of that
message's deadline.

State (``ctx.state``) is a dict of JSON values that survives restarts: it is
loaded when the handler starts, and the changes a handler makes are
committed by naosd together with its reply (a handler that crashes commits
nothing).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LOG_LINE_LIMIT = 8192
LOG_LINES_PER_RUN = 1000
STATE_VALUE_LIMIT = 1 << 20  # bytes of JSON per key

CallFn = Callable[[str, dict[str, Any]], Awaitable[Any]]
StreamFn = Callable[[str, dict[str, Any]], AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One chat completion, as naosd charged it."""

    message: dict[str, Any]
    tool_calls: list[dict[str, Any]]
    usage: dict[str, Any]
    cost_micro_usd: int
    model: str = ""
    finish_reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""

    @property
    def invalid_tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls naming a tool that was not offered: never to act on."""
        return list(self.raw.get("invalid_tool_calls") or [])

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChatResult:
        return cls(dict(data.get("message") or {}), list(data.get("tool_calls") or []),
                   dict(data.get("usage") or {}), int(data.get("cost_micro_usd") or 0),
                   str(data.get("model") or ""), str(data.get("finish_reason") or ""), data)


class State(MutableMapping[str, Any]):
    """The agent's durable key/value state (JSON values)."""

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial or {})
        self._dirty: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError("state keys are non-empty strings")
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.state[{key!r}]: not a JSON value: {exc}") from None
        if len(encoded) > STATE_VALUE_LIMIT:
            raise ValueError(f"ctx.state[{key!r}]: {len(encoded)} bytes of JSON "
                             f"(limit {STATE_VALUE_LIMIT})")
        self._data[key] = json.loads(encoded)  # a copy: later mutation is not hidden state
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def take_changes(self) -> dict[str, Any] | None:
        """What changed since the last call: ``{"set": {...}, "delete": [...]}``."""
        if not self._dirty:
            return None
        keys, self._dirty = self._dirty, set()
        return {"set": {k: self._data[k] for k in keys if k in self._data},
                "delete": sorted(k for k in keys if k not in self._data)}

    def restore(self, values: dict[str, Any]) -> None:
        """Forget local changes that naosd refused: its values win."""
        self._data = dict(values)
        self._dirty.clear()


class RunScope:
    """Per message: ids, deadline, log lines, the stop flag."""

    def __init__(self, run: int | None, request_id: str = "", key: str = "",
                 deadline_s: float | None = None) -> None:
        self.run = run
        self.request_id = request_id
        self.idempotency_key = key
        self.deadline = time.monotonic() + deadline_s if deadline_s is not None else None
        self.lines: list[tuple[str, str, str]] = []
        self.stop_requested = False

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def log(self, parts: tuple[Any, ...], level: str) -> None:
        if len(self.lines) >= LOG_LINES_PER_RUN:
            return
        text = " ".join(p if isinstance(p, str) else json.dumps(p, default=str) for p in parts)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.lines.append((now, level, text[:LOG_LINE_LIMIT]))


class _Base:
    """What both contexts share: identity, config, state, logs, stop."""

    def __init__(self, name: str, config: dict[str, Any], state: State, scope: RunScope,
                 call: CallFn, stream: StreamFn) -> None:
        self.name = name
        self.config = config
        self.state = state
        self._scope = scope
        self._call = call
        self._stream = stream

    @property
    def request_id(self) -> str:
        return self._scope.request_id

    @property
    def idempotency_key(self) -> str:
        return self._scope.idempotency_key

    @property
    def deadline(self) -> float | None:
        """Seconds left to answer this message (None outside a message)."""
        return self._scope.remaining()

    def log(self, *parts: Any, level: str = "info") -> None:
        """Append a line to this agent's log (``naosctl logs NAME``)."""
        self._scope.log(parts, level)

    def stop(self) -> None:
        """Exit normally once this message is answered."""
        self._scope.stop_requested = True

    def _params(self, **params: Any) -> dict[str, Any]:
        return {**{k: v for k, v in params.items() if v is not None}, "run": self._scope.run}


class AsyncContext(_Base):
    """``ctx`` for ``async def handle(message, ctx)``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.llm = AsyncLlm(self)
        self.tools = AsyncTools(self)

    async def ask(self, agent: str, message: Any,
                  timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the API contract
        """Send ``message`` to ``agent`` and return its reply's output."""
        result = await self._call("agent.ask", self._params(agent=agent, input=message,
                                                            timeout=timeout))
        return result.get("output") if isinstance(result, dict) else result

    async def tell(self, agent: str, message: Any) -> None:
        """Send ``message`` to ``agent`` without waiting for its reply."""
        await self._call("agent.tell", self._params(agent=agent, input=message))

    async def execute(self, task: str, route: str | None = None) -> dict[str, Any]:
        """Run a task through the broker (``route`` pins it: ``"skill:NAME"``,
        ``"wasm:NAME"`` or ``"llm"``)."""
        result: dict[str, Any] = await self._call("broker.execute",
                                                  self._params(task=task, route=route))
        return result

    async def budget(self) -> dict[str, Any]:
        """This agent's budget: limit, spent and what is left (µ$)."""
        result: dict[str, Any] = await self._call("budget.get", self._params())
        return result


class AsyncLlm:
    def __init__(self, ctx: AsyncContext) -> None:
        self._ctx = ctx

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> ChatResult:
        """One chat completion (OpenAI-compatible ``messages``; options:
        ``tools``, ``tool_choice``, ``response_format``, ``temperature``,
        ``max_tokens``, ``model``)."""
        data = await self._ctx._call("llm.chat", self._ctx._params(messages=messages, **options))
        return ChatResult.from_wire(data)

    async def stream(self, messages: list[dict[str, Any]], **options: Any
                     ) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives."""
        async for event in self._ctx._stream("llm.stream",
                                             self._ctx._params(messages=messages, **options)):
            if isinstance(event, dict) and event.get("delta"):
                yield str(event["delta"])


class AsyncTools:
    def __init__(self, ctx: AsyncContext) -> None:
        self._ctx = ctx

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> Any:
        """Call a tool naos offers (``server.tool`` for registered tool servers)."""
        return await self._ctx._call("tools.call", self._ctx._params(tool=tool, args=args or {}))

    async def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._ctx._call("tools.list", self._ctx._params())
        return result


class Context(_Base):
    """``ctx`` for a plain ``def handle(message, ctx)``: the same calls, blocking.

    ``run_sync(coro)`` hands a coroutine to the handler process's event loop
    and waits for it (a sync handler runs on a worker thread)."""

    def __init__(self, *args: Any, run_sync: Callable[[Awaitable[Any]], Any]) -> None:
        super().__init__(*args)
        self._async = AsyncContext(*args)
        self._run_sync = run_sync
        self.llm = SyncLlm(self)
        self.tools = SyncTools(self)

    def ask(self, agent: str, message: Any, timeout: float | None = None) -> Any:
        return self._run_sync(self._async.ask(agent, message, timeout))

    def tell(self, agent: str, message: Any) -> None:
        self._run_sync(self._async.tell(agent, message))

    def execute(self, task: str, route: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._run_sync(self._async.execute(task, route))
        return result

    def budget(self) -> dict[str, Any]:
        result: dict[str, Any] = self._run_sync(self._async.budget())
        return result


class SyncLlm:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def chat(self, messages: list[dict[str, Any]], **options: Any) -> ChatResult:
        result: ChatResult = self._ctx._run_sync(self._ctx._async.llm.chat(messages, **options))
        return result

    def stream(self, messages: list[dict[str, Any]], **options: Any) -> list[str]:
        """The answer's text pieces (a sync handler gets them all at the end)."""
        async def collect() -> list[str]:
            return [d async for d in self._ctx._async.llm.stream(messages, **options)]

        result: list[str] = self._ctx._run_sync(collect())
        return result


class SyncTools:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def call(self, tool: str, args: dict[str, Any] | None = None) -> Any:
        return self._ctx._run_sync(self._ctx._async.tools.call(tool, args))

    def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._ctx._run_sync(self._ctx._async.tools.list())
        return result


def wait_for_loop(loop: asyncio.AbstractEventLoop, scope: RunScope
                  ) -> Callable[[Awaitable[Any]], Any]:
    """``run_sync`` for a worker thread: run on ``loop``, wait at most until
    the message's deadline."""
    def run_sync(awaitable: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrap(), loop)
        return future.result(timeout=scope.remaining())

    return run_sync
