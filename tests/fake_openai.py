"""A small OpenAI-compatible chat-completions server for tests: a double of
a REMOTE service, scripted per request, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


def ok(text: str = "hello", prompt_tokens: int = 7, completion_tokens: int = 3) -> Step:
    return Step(body={"id": "c1", "object": "chat.completion", "model": "fake-1",
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": text}}],
                      "usage": {"prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens}})


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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        self.headers.append(dict(request.headers))
        self.requests.append(await request.json())
        step = self.script.pop(0) if self.script else ok()
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if step.stream is not None:
            return await self._stream(request, step.stream)
        if step.raw is not None:
            return web.Response(status=step.status, body=step.raw, headers=step.headers)
        return web.json_response(step.body, status=step.status, headers=step.headers)

    async def _stream(self, request: web.Request, payloads: list[str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for payload in payloads:
            await resp.write(f"data: {payload}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
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
