"""A small OpenAI-compatible chat-completions server for tests: a double of
a REMOTE service, scripted per request, on 127.0.0.1.

Each request takes the next scripted :class:`Step`, else what ``answer``
makes of the request (by default :func:`ok`).  Steps cover plain answers,
tool calls, streams (text and tool-call fragments, a usage chunk or none),
lying usage, slow answers, answers held until a number of requests are in
flight, and streams held midway until the test lets go.

:func:`fake_openai_in_thread` runs the server on its own event loop in a
thread, for a daemon under test (a subprocess) to call."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Step:
    """One scripted answer: an HTTP status with a JSON body, a stream, a
    raw body or a delay longer than the client's timeout."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    stream: list[str] | None = None  # SSE data payloads
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0  # between stream payloads
    hold: asyncio.Event | None = None  # a stream waits for it after hold_after payloads
    hold_after: int = 0
    until_in_flight: int = 0  # answer once this many requests are in flight (60 s at most)


def ok(text: str = "hello", prompt_tokens: int = 7, completion_tokens: int = 3) -> Step:
    return Step(body={"id": "c1", "object": "chat.completion", "model": "fake-1",
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": text}}],
                      "usage": {"prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens}})


def answer(content: str | None = "hello", *, tool_calls: list[dict[str, Any]] | None = None,
           usage: tuple[int, int] | None = (7, 3), finish_reason: str = "stop",
           model: str = "fake-1") -> Step:
    """A chat answer; ``usage`` None leaves it out (some servers do)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "message": message,
                                         "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                         "total_tokens": sum(usage)}
    return Step(body=body)


def tool_call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def streamed(pieces: list[str], *, usage: tuple[int, int] | None = None,
             tool_fragments: list[dict[str, Any]] | None = None, **kw: Any) -> Step:
    """A stream of text ``pieces``, then tool-call fragments (``delta.tool_calls``
    entries), a finish reason and, with ``usage``, the usage chunk
    ``stream_options.include_usage`` asks for."""
    payloads = [chunk(p) for p in pieces]
    payloads += [json.dumps({"model": "fake-1", "choices": [
        {"index": 0, "delta": {"tool_calls": [f]}}]}) for f in tool_fragments or ()]
    payloads.append(json.dumps({"model": "fake-1", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_fragments
         else "stop"}]}))
    if usage is not None:
        payloads.append(json.dumps({"model": "fake-1", "choices": [], "usage": {
            "prompt_tokens": usage[0], "completion_tokens": usage[1]}}))
    return Step(stream=payloads, **kw)


def error(status: int, code: str, message: str = "nope", **headers: str) -> Step:
    return Step(status=status, body={"error": {"message": message, "type": code,
                                               "code": code}}, headers=dict(headers))


def chunk(text: str) -> str:
    return json.dumps({"model": "fake-1", "choices": [{"index": 0,
                                                       "delta": {"content": text}}]})


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: list[Step] = []
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self.answer: Callable[[dict[str, Any]], Step] = lambda body: ok()
        self.in_flight = 0
        self.most_in_flight = 0
        self.cut_off = 0  # streams whose client left before the end
        self._arrivals = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        self.headers.append(dict(request.headers))
        body = await request.json()
        self.requests.append(body)
        step = self.script.pop(0) if self.script else self.answer(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        async with self._arrivals:
            self._arrivals.notify_all()
        try:
            return await self._answer(request, step)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, step: Step) -> web.StreamResponse:
        if step.until_in_flight:
            async with self._arrivals:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._arrivals.wait_for(
                        lambda: self.most_in_flight >= step.until_in_flight), 60)
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if step.stream is not None:
            return await self._stream(request, step)
        if step.raw is not None:
            return web.Response(status=step.status, body=step.raw, headers=step.headers)
        return web.json_response(step.body, status=step.status, headers=step.headers)

    async def _stream(self, request: web.Request, step: Step) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, payload in enumerate(step.stream or ()):
                if step.hold is not None and i == step.hold_after:
                    await step.hold.wait()
                if step.chunk_delay_s:
                    await asyncio.sleep(step.chunk_delay_s)
                await resp.write(f"data: {payload}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client went away midway
            self.cut_off += 1
        return resp


@asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


@contextmanager
def fake_openai_in_thread() -> Iterator[FakeOpenAI]:
    """The fake server on its own event loop in a thread (its script and
    ``answer`` may be set from the test's thread)."""
    ready = threading.Event()
    holder: list[FakeOpenAI] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with serve_fake_openai() as server:
            holder.append(server)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the fake LLM server did not start"
    try:
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
