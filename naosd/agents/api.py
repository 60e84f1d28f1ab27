"""The agent API: what naosd serves on an agent's channel.

Every method acts as the channel's agent (:class:`~naosd.agents.channels.Channel`
carries the identity; no parameter can change it) and follows one order:
trust gate, then budget reservation, then the work, then settle, then
audit, attributed to the calling agent.  A call made while the agent serves
a message (``run`` in its parameters names the message) inherits that
message's deadline and call chain.

The services it calls are passed in narrow, typed (:class:`Runner`,
:class:`StateStore`, :class:`ChatService`, :class:`TaskBroker`,
:class:`Budgets`); the composition root wires them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from naos.peer import Incoming, Method
from naosd import telemetry
from naosd.agents.channels import AgentChannels, Channel, RunInfo
from naosd.errors import InvalidRequest, NaosError, RequestTimeout
from naosd.errors.agents import CallCycle, CallTooDeep, UnknownTool
from naosd.values import check_values

log = logging.getLogger("naosd.agents.api")

MAX_CHAIN = 16  # nested ctx.ask calls
DEFAULT_ASK_S = 60.0  # a call made outside any message (e.g. from Agent.__init__)
MAX_TELL_QUEUE = 1000  # tells in flight per agent


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call and within what: the agent, its deadline, its chain."""

    agent: str
    deadline: float
    chain: tuple[str, ...]
    trace: Mapping[str, Any]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class Runner(Protocol):
    """:class:`naosd.agents.service.Agents`: run a message on an agent."""

    async def run_as(self, name: str, payload: Any, *, caller: Caller, key: str
                     ) -> dict[str, Any]: ...


class StateStore(Protocol):
    async def load_state(self, agent: str) -> dict[str, Any]: ...

    async def kv_get(self, agent: str, key: str) -> bytes | None: ...

    async def kv_set(self, agent: str, key: str, value: bytes) -> None: ...


class Definitions(Protocol):
    async def handler_spec(self, agent: str) -> dict[str, Any]:
        """What the agent's handler loads: ``kind`` (python, template, wasm),
        ``source`` (a path or template name), ``config``, ``max_concurrency``,
        ``grants``."""
        ...


class ChatService(Protocol):
    """The LLM behind the gates (trust, budget, settle, audit) for an agent."""

    async def chat(self, agent: str, request: dict[str, Any], *, deadline: float
                   ) -> dict[str, Any]: ...

    def stream(self, agent: str, request: dict[str, Any], *, deadline: float,
               trace: Mapping[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]: ...


class TaskBroker(Protocol):
    async def execute(self, task: str, agent: str | None, *, route: str | None = None
                      ) -> dict[str, Any]: ...


class Budgets(Protocol):
    def remaining(self, agent: str) -> dict[str, Any]: ...


class Tools(Protocol):
    async def call(self, agent: str, tool: str, args: dict[str, Any], *, deadline: float
                   ) -> Any: ...

    async def list(self, agent: str) -> list[dict[str, Any]]: ...


class AgentApi:
    def __init__(self, *, channels: AgentChannels, runner: Runner, states: StateStore,
                 definitions: Definitions, chat: ChatService | None, broker: TaskBroker | None,
                 budgets: Budgets | None, tools: Tools | None = None) -> None:
        self._channels = channels
        self._definitions = definitions
        self._runner = runner
        self._states = states
        self._chat = chat
        self._broker = broker
        self._budgets = budgets
        self._tools = tools
        self._tells: dict[str, set[asyncio.Task[Any]]] = {}  # per telling agent

    def methods_for(self, channel: Channel) -> dict[str, Method]:
        """The methods one channel serves, bound to its agent."""
        def bind(fn: Any, stream: bool = False) -> Method:
            async def unary(call: Incoming) -> Any:
                # A call made for a run continues that run's trace (a ctx.ask
                # chain is one trace; the LLM and tool spans are its children).
                info = channel.run_info(call.params.get("run"))
                with telemetry.attached(info.trace if info is not None else {}):
                    return await fn(channel, call)

            def many(call: Incoming) -> AsyncIterator[Any]:
                return fn(channel, call)  # type: ignore[no-any-return]

            return Method(many if stream else unary, stream)

        return {
            "agent.start": bind(self._start),
            "agent.loaded": bind(self._loaded),
            "agent.ask": bind(self._ask),
            "agent.tell": bind(self._tell),
            "llm.chat": bind(self._llm_chat),
            "llm.stream": bind(self._llm_stream, stream=True),
            "broker.execute": bind(self._execute),
            "budget.get": bind(self._budget),
            "tools.call": bind(self._tool_call),
            "tools.list": bind(self._tool_list),
            "kv.get": bind(self._kv_get),
            "kv.set": bind(self._kv_set),
        }

    # -- the caller -------------------------------------------------------------
    def caller(self, channel: Channel, call: Incoming, timeout: Any = None) -> Caller:
        """The calling agent (the channel's), with the deadline and chain of
        the message it serves; ``timeout`` can only shorten the deadline."""
        info: RunInfo | None = channel.run_info(call.params.get("run"))
        now = time.monotonic()
        deadline = info.deadline if info is not None else now + DEFAULT_ASK_S
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise InvalidRequest("timeout must be a positive number of seconds")
            deadline = min(deadline, now + float(timeout))
        chain = (*info.chain, channel.agent) if info is not None else (channel.agent,)
        # identity: the channel's; a pool's clone pays and is gated as its pool's
        # agent (the chain keeps the real names, for cycles)
        return Caller(channel.acts_as, deadline, chain, dict(info.trace) if info else {})

    # -- lifecycle --------------------------------------------------------------
    async def _start(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        """The handler's first call: what to load, and the agent's state."""
        return {"agent": channel.agent, **await self._definitions.handler_spec(channel.agent),
                "state": await self._states.load_state(channel.agent)}

    async def _loaded(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        pid = call.params.get("pid")
        if call.params.get("ok") and isinstance(pid, int):
            self._channels.mark_ready(channel, pid)
        else:
            channel.load_error = str(call.params.get("error") or "unknown load error")[:2000]
        return {}

    # -- a WASM agent's raw key/value store (naos.kv_get / naos.kv_set) ----------
    async def _kv_get(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        value = await self._states.kv_get(channel.agent, _kv_key(call.params))
        return {"value": None if value is None else base64.b64encode(value).decode()}

    async def _kv_set(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        raw = call.params.get("value")
        if not isinstance(raw, str):
            raise InvalidRequest("value: base64 text is required")
        try:
            value = base64.b64decode(raw, validate=True)
        except ValueError:
            raise InvalidRequest("value: not base64") from None
        if len(value) > KV_VALUE_LIMIT:
            raise InvalidRequest(f"value: {len(value)} bytes (limit {KV_VALUE_LIMIT})")
        await self._states.kv_set(channel.agent, _kv_key(call.params), value)
        return {}

    # -- other agents -----------------------------------------------------------
    async def _ask(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        target, payload = self._target(call)
        caller = self.caller(channel, call, call.params.get("timeout"))
        _check_chain(caller, target)
        return await self._runner.run_as(target, payload, caller=caller,
                                         key=_own_key(channel.agent, call.params))

    async def _tell(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        target, payload = self._target(call)
        caller = self.caller(channel, call)
        _check_chain(caller, target)
        # Counted per agent: one agent's flood must not refuse every other agent's tells.
        mine = self._tells.setdefault(channel.agent, set())
        if len(mine) >= MAX_TELL_QUEUE:
            raise InvalidRequest(f"agent {channel.agent!r} has too many tells in flight "
                                 f"({MAX_TELL_QUEUE})")
        # A tell outlives the caller's message: its own deadline, no chain to wait in.
        detached = Caller(caller.agent, time.monotonic() + DEFAULT_ASK_S, (channel.agent,),
                          caller.trace)
        task = asyncio.get_running_loop().create_task(
            self._runner.run_as(target, payload, caller=detached, key=""))
        mine.add(task)
        task.add_done_callback(functools.partial(self._told, channel.agent))
        return {"queued": True, "agent": target}

    def _told(self, agent: str, task: asyncio.Task[Any]) -> None:
        mine = self._tells.get(agent, set())
        mine.discard(task)
        if not mine:
            self._tells.pop(agent, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.info("tell failed: %s", exc.message if isinstance(exc, NaosError) else exc)

    @staticmethod
    def _target(call: Incoming) -> tuple[str, Any]:
        target = call.params.get("agent")
        if not isinstance(target, str) or not target:
            raise InvalidRequest("agent: the name of the agent to call is required")
        payload = call.params.get("input")
        check_values({"input": payload})
        return target, payload

    # -- the LLM, the broker, budgets, tools --------------------------------------
    async def _llm_chat(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        if self._chat is None:
            raise _no("an LLM")
        caller = self.caller(channel, call)
        return await self._chat.chat(caller.agent, _llm_request(call.params),
                                     deadline=caller.deadline)

    async def _llm_stream(self, channel: Channel, call: Incoming
                          ) -> AsyncIterator[dict[str, Any]]:
        if self._chat is None:
            raise _no("an LLM")
        caller = self.caller(channel, call)
        async for event in self._chat.stream(caller.agent, _llm_request(call.params),
                                             deadline=caller.deadline, trace=caller.trace):
            yield event

    async def _execute(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        if self._broker is None:
            raise _no("a broker")
        task = call.params.get("task")
        if not isinstance(task, str):
            raise InvalidRequest("task: a string is required")
        route = call.params.get("route")
        if route is not None and not isinstance(route, str):
            raise InvalidRequest("route: a string like 'wasm:NAME' is expected")
        caller = self.caller(channel, call)
        async with asyncio.timeout(max(caller.remaining(), 0)):
            return await self._broker.execute(task, caller.agent, route=route)

    async def _budget(self, channel: Channel, call: Incoming) -> dict[str, Any]:
        if self._budgets is None:
            raise _no("budgets")
        return self._budgets.remaining(channel.acts_as)

    async def _tool_call(self, channel: Channel, call: Incoming) -> Any:
        tool = call.params.get("tool")
        if not isinstance(tool, str) or not tool:
            raise InvalidRequest("tool: a tool name is required")
        args = call.params.get("args") or {}
        if not isinstance(args, dict):
            raise InvalidRequest("args: a map is expected")
        if self._tools is None:
            raise UnknownTool(f"no tool named {tool!r}: no tool servers are registered")
        caller = self.caller(channel, call)
        return await self._tools.call(caller.agent, tool, args, deadline=caller.deadline)

    async def _tool_list(self, channel: Channel, call: Incoming) -> list[dict[str, Any]]:
        return [] if self._tools is None else await self._tools.list(channel.acts_as)


LLM_KEYS = frozenset({"messages", "tools", "tool_choice", "response_format", "temperature",
                      "max_tokens", "model", "top_p", "stop", "seed"})


def _llm_request(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - LLM_KEYS - {"run"}
    if unknown:
        raise InvalidRequest(f"llm: unknown option(s) {', '.join(sorted(unknown))}")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: a non-empty list of {role, content} maps is required")
    return {k: v for k, v in params.items() if k in LLM_KEYS}


def _own_key(agent: str, params: dict[str, Any]) -> str:
    """An agent's idempotency key, in its own namespace (``agent/key``): a
    callee dedups by key, so a key an agent could choose freely would let it
    claim a saga step's key (``run:step:do``, which a step's agent sees) and
    pre-empt that step with its own message."""
    raw = params.get("idempotency_key")
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str) or len(raw) > 256:
        raise InvalidRequest("idempotency_key: a string of at most 256 characters is expected")
    return f"{agent}/{raw}"


def _check_chain(caller: Caller, target: str) -> None:
    if target in caller.chain:
        raise CallCycle(f"call cycle: {' -> '.join((*caller.chain, target))}")
    if len(caller.chain) >= MAX_CHAIN:
        raise CallTooDeep(f"calls nested deeper than {MAX_CHAIN}: "
                          f"{' -> '.join((*caller.chain, target))}")
    if caller.remaining() <= 0:
        raise RequestTimeout(f"no time left to call {target!r}")


KV_KEY_LIMIT = 1024
KV_VALUE_LIMIT = 1 << 20


def _kv_key(params: dict[str, Any]) -> str:
    key = params.get("key")
    if not isinstance(key, str) or not key or len(key.encode()) > KV_KEY_LIMIT:
        raise InvalidRequest(f"key: a string of 1 to {KV_KEY_LIMIT} bytes is required")
    return key


def _no(what: str) -> NaosError:
    return InvalidRequest(f"naosd has no {what} configured for agents")
