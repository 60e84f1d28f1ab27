"""The LLM for agents: ``ctx.llm.chat`` and ``ctx.llm.stream`` behind the
spender's gates (:mod:`naosd.broker.spend`: trust, reserve, run, settle,
record), attributed to the calling agent.

What a call may spend is decided before it runs (:class:`Plan`): it reserves
a conservative bound on its prompt tokens at the input price plus its
``max_tokens`` (the caller's, or :data:`DEFAULT_MAX_TOKENS`) at the output
price; near the end of a pausing budget the spender may grant less, down to
the prompt plus :data:`MIN_OUTPUT_TOKENS`, and the ``max_tokens`` sent to the
server is what the grant pays for.  It is settled at the server's reported
usage, capped at the grant by the spender (a server reporting more is an
audited ``llm.usage_overrun``, not spend); an answer without usage is charged
its bounds, marked ``estimated``.  Tool calls naming a tool that was not
offered come back under ``invalid_tool_calls`` with a reason, never as calls
to act on.  Audit rows name the agent, the model and the tokens, never the
prompt or the answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from naosd import telemetry
from naosd.broker.llm.chat_request import (
    ChatRequest,
    check_chat,
    prompt_token_bound,
    split_tool_calls,
)
from naosd.broker.llm.client import LlmConfig, OnChunk
from naosd.broker.llm.wire import DEFAULT_MAX_TOKENS, ChatAnswer, cost_micro, max_tokens_within
from naosd.broker.spend import Charge, Charged, Receipt, Spender, Spent
from naosd.errors import InvalidRequest, NaosError, NoLlm, RequestTimeout
from naosd.errors.agents import Cancelled

log = logging.getLogger("naosd.broker.chat")

MIN_OUTPUT_TOKENS: Final = 16
"""The least output a call shrunk to the end of a budget may still ask for."""
STREAM_QUEUE: Final = 64  # text pieces waiting for a slow consumer
CLOSE_WAIT_S: Final = 10.0


class ChatBackend(Protocol):
    """:class:`naosd.broker.llm.service.LlmService`."""

    why_none: str

    def estimate_config(self) -> LlmConfig | None: ...

    async def chat(self, request: ChatRequest, *, max_tokens: int, deadline: float
                   ) -> ChatAnswer: ...

    async def chat_stream(self, request: ChatRequest, *, max_tokens: int, deadline: float,
                          on_chunk: OnChunk) -> ChatAnswer: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What one call may spend, decided before it runs (pure)."""

    request: ChatRequest
    model: str
    prompt_tokens: int  # an upper bound
    asked: int  # the max_tokens the caller asked for, or the default
    price_in: int
    price_out: int

    @property
    def reservation(self) -> int:
        return cost_micro(self.prompt_tokens, self.asked, self.price_in, self.price_out)

    @property
    def floor(self) -> int:
        return cost_micro(self.prompt_tokens, min(self.asked, MIN_OUTPUT_TOKENS),
                          self.price_in, self.price_out)

    def max_tokens(self, granted: int) -> int:
        """The max_tokens to send for a grant (never more than asked)."""
        return max_tokens_within(granted, self.prompt_tokens, self.asked, self.price_in,
                                 self.price_out)

    def spent(self, answer: ChatAnswer, max_tokens: int, granted: int) -> Spent:
        """What an answer costs (its usage, else its bounds) and what the agent
        gets; the ledger's LLM estimate is what it may cost, at most ``granted``."""
        tokens_in = answer.input_tokens
        tokens_out = answer.output_tokens
        estimated = tokens_in is None or tokens_out is None
        if tokens_in is None:
            tokens_in = self.prompt_tokens
        if tokens_out is None:
            tokens_out = min(max_tokens, answer.output_bytes + 1)
        cost = cost_micro(tokens_in, tokens_out, self.price_in, self.price_out)
        valid, invalid = split_tool_calls(answer.tool_calls, self.request.tool_names)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if valid:
            message["tool_calls"] = valid
        result = {"model": answer.model or self.model, "message": message, "tool_calls": valid,
                  "invalid_tool_calls": invalid, "finish_reason": answer.finish_reason,
                  "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                            "total_tokens": tokens_in + tokens_out, "estimated": estimated},
                  "max_tokens": max_tokens, "max_tokens_asked": self.asked}
        detail = {"model": answer.model or self.model, "input_tokens": tokens_in,
                  "output_tokens": tokens_out, "estimated": estimated, "max_tokens": max_tokens,
                  "attempts": answer.attempts, "finish_reason": answer.finish_reason,
                  "tool_calls": len(valid), "invalid_tool_calls": len(invalid)}
        return Spent(result, cost, estimated, detail, estimate_micro=min(cost, granted))

    def partial(self, output_bytes: int, max_tokens: int) -> Spent:
        """A stream its consumer left midway: what it streamed, at its bounds."""
        tokens_out = min(max_tokens, output_bytes + 1)
        cost = cost_micro(self.prompt_tokens, tokens_out, self.price_in, self.price_out)
        return Spent(None, cost, True, {"model": self.model, "input_tokens": self.prompt_tokens,
                                        "output_tokens": tokens_out, "estimated": True,
                                        "max_tokens": max_tokens, "cancelled": True},
                     estimate_micro=cost)


class ChatService:
    """``llm.chat`` and ``llm.stream`` of the agent API (naosd.agents.api.ChatService).

    ``models`` names the models an agent may ask for besides the configured
    one (``llm.models``), charged at the same prices; the local LLM serves
    its own model only.
    """

    def __init__(self, spender: Spender, llm: ChatBackend, *, models: tuple[str, ...] = ()
                 ) -> None:
        self._spender = spender
        self._llm = llm
        self._models = frozenset(models)
        self._running: set[asyncio.Task[Any]] = set()

    def plan(self, request: dict[str, Any]) -> Plan:
        """Check ``request`` and decide what it may spend.

        Raises:
            InvalidRequest: a bad field (named), or a model that is not offered.
            NoLlm: no LLM is configured.
        """
        checked = check_chat(request)
        config = self._llm.estimate_config()
        if config is None:
            raise NoLlm(f"no LLM: {self._llm.why_none}")
        model = checked.model or config.model
        offered = {config.model} if config.local else {config.model, *self._models}
        if model not in offered:
            raise InvalidRequest(
                f"model: {model!r} is not offered to agents (naosd uses {config.model!r}"
                + ("; llm.models lists any others" if not config.local else "") + ")")
        return Plan(checked, model, prompt_token_bound(checked),
                    checked.max_tokens or DEFAULT_MAX_TOKENS, config.price_input_per_1k,
                    config.price_output_per_1k)

    async def chat(self, agent: str, request: dict[str, Any], *, deadline: float
                   ) -> dict[str, Any]:
        """One chat completion for ``agent``, by ``deadline`` (``time.monotonic()``).

        A caller that gives up (cancels) before the request is sent stops it;
        once sent, the request runs on to its answer (by the deadline) and is
        settled at the usage the server reports: an agent cannot make the LLM
        work for nothing by cancelling its calls."""
        plan = self.plan(request)
        _check_time(deadline)
        gone = asyncio.Event()

        async def work(granted: int) -> Spent:
            if gone.is_set():
                raise Cancelled("the caller went away before the LLM was asked")
            max_tokens = plan.max_tokens(granted)
            answer = await self._llm.chat(plan.request, max_tokens=max_tokens,
                                          deadline=deadline)
            return plan.spent(answer, max_tokens, granted)

        call = self._detach(self._spender.charge(agent, _charge(plan, stream=False), work))
        try:
            spent, receipt = await asyncio.shield(call)
        except asyncio.CancelledError:
            gone.set()
            raise
        return _reply(spent, receipt)

    async def stream(self, agent: str, request: dict[str, Any], *, deadline: float,
                     trace: Mapping[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """``{"delta": text}`` as the answer arrives, then ``{"done": true, ...}``
        with what :meth:`chat` returns.  Settled once, at the end; a consumer
        that goes away midway has what was streamed settled at its bounds.
        ``trace`` is the caller's trace context (a generator cannot inherit it:
        it runs in its consumer's)."""
        plan = self.plan(request)
        _check_time(deadline)
        run = _Stream()
        work = functools.partial(self._stream_work, plan, run, deadline)
        with telemetry.attached(trace or {}):  # the producer task copies it; no yield inside
            producer = self._detach(self._spender.charge(agent, _charge(plan, stream=True),
                                                         work))
        try:
            while (text := await run.next(producer)) is not None:
                yield {"delta": text}
            spent, receipt = producer.result()
        finally:
            if not producer.done():
                run.stop()  # the producer settles what was streamed and records it
        yield {"done": True, **_reply(spent, receipt)}

    async def _stream_work(self, plan: Plan, run: _Stream, deadline: float, granted: int
                           ) -> Spent:
        if run.stopped:
            raise Cancelled("the stream's consumer went away before it started")
        max_tokens = plan.max_tokens(granted)
        reader = asyncio.get_running_loop().create_task(self._llm.chat_stream(
            plan.request, max_tokens=max_tokens, deadline=deadline, on_chunk=run.take))
        run.reader = reader
        try:
            await asyncio.wait({reader})
        finally:
            if not reader.done():  # this work itself was cancelled
                reader.cancel()
        if reader.cancelled():
            return plan.partial(run.output_bytes, max_tokens)
        try:
            answer = reader.result()
        except NaosError as exc:
            if run.output_bytes:  # it broke off midway: what came is charged
                raise Charged(plan.partial(run.output_bytes, max_tokens).cost_micro,
                              exc) from None
            raise
        return plan.spent(answer, max_tokens, granted)

    def _detach(self, charge: Coroutine[Any, Any, tuple[Spent, Receipt]]
                ) -> asyncio.Task[tuple[Spent, Receipt]]:
        """Run a charged call in a task of its own: it settles and records
        whatever its caller does."""
        task = asyncio.get_running_loop().create_task(charge)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("an LLM call ended with %r", task.exception())

    async def aclose(self) -> None:
        """Wait (briefly) for calls still settling."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=CLOSE_WAIT_S)


class _Stream:
    """One stream's pieces between its reader (the LLM) and its consumer."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(STREAM_QUEUE)
        self.reader: asyncio.Task[ChatAnswer] | None = None
        self.stopped = False
        self.output_bytes = 0

    async def take(self, text: str, output_bytes: int) -> None:
        self.output_bytes = output_bytes
        if text:
            await self.queue.put(text)

    def stop(self) -> None:
        self.stopped = True
        if self.reader is not None:
            self.reader.cancel()

    async def next(self, producer: asyncio.Task[Any]) -> str | None:
        """The next piece, or None once the producer is done and all were taken."""
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait()
            if producer.done():
                return None
            getter = asyncio.ensure_future(self.queue.get())
            try:
                await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()


def _charge(plan: Plan, *, stream: bool) -> Charge:
    return Charge("llm", plan.model, plan.reservation, "llm.chat", floor_micro=plan.floor,
                  detail={"model": plan.model, "stream": stream,
                          "prompt_token_bound": plan.prompt_tokens,
                          "max_tokens_asked": plan.asked})


def _reply(spent: Spent, receipt: Receipt) -> dict[str, Any]:
    reply = {**spent.result, "task_id": receipt.task_id, "cost_micro_usd": receipt.cost_micro,
             "reserved_micro_usd": receipt.granted_micro}
    if receipt.overrun_micro:
        reply["overrun_micro_usd"] = receipt.overrun_micro
    return reply


def _check_time(deadline: float) -> None:
    if deadline - time.monotonic() <= 0:
        raise RequestTimeout("no time left for an LLM call")
