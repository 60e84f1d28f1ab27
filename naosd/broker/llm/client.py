"""The LLM client: OpenAI-compatible chat completions over aiohttp.

Works with any server speaking ``POST {base_url}/chat/completions``: a hosted
API, Ollama, vLLM, or llama.cpp's server (the embedded local LLM in
:mod:`naosd.broker.llm.local`).  Retries 429 ``rate_limit_exceeded``, 5xx and
refused connections with exponential backoff, honouring Retry-After; never
retries 429 ``insufficient_quota``, timeouts or malformed answers.  Cost is
usage x price table in integer micro-dollars; when a (streamed) answer has no
usage, a conservative bound is charged and the result says ``estimated``.

The API key is only ever put in the Authorization header: it is never
logged, audited or returned.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from naosd import telemetry
from naosd.broker.llm.chat_request import ChatRequest
from naosd.broker.llm.wire import (
    DEFAULT_MAX_TOKENS,
    MAX_PROMPT_BYTES,
    ChatAnswer,
    Completion,
    StreamParser,
    backoff_s,
    chat_body,
    cost_micro,
    error_for,
    parse_chat,
    prompt_token_bound,
    request_body,
    retry_after_s,
    token_bound,
)
from naosd.errors import (
    ConfigError,
    InvalidRequest,
    LlmBadResponse,
    LlmRateLimited,
    LlmTimeout,
    LlmUnavailable,
)

if TYPE_CHECKING:
    from naosd.config import Config

log = logging.getLogger("naosd.llm")
MAX_BODY_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """Where the LLM is and what it costs (prices: micro-dollars per 1K tokens)."""

    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff: float = 0.5
    price_input_per_1k: int = 0
    price_output_per_1k: int = 0
    stream: bool = False
    max_wait_s: float = 60.0  # a Retry-After longer than this gives up at once
    local: bool = False  # the embedded server naosd manages

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"llm.base_url must be an http(s) URL, got {self.base_url!r}")

    @classmethod
    def from_config(cls, config: Config) -> LlmConfig | None:
        """The configured remote LLM, or None when ``llm.base_url`` is empty.

        Raises:
            ConfigError: a bad URL, or an api_key_file that is unreadable or
                readable by group or others.
        """
        if not config.llm_base_url:
            return None
        key = config.llm_api_key or read_key_file(config.llm_api_key_file, "llm.api_key_file")
        return cls(
            base_url=config.llm_base_url.rstrip("/"), model=config.llm_model, api_key=key,
            timeout_s=config.llm_timeout, max_retries=config.llm_max_retries,
            backoff=config.llm_backoff, price_input_per_1k=config.llm_price_input_per_1k,
            price_output_per_1k=config.llm_price_output_per_1k, stream=config.llm_stream,
        )

    def describe(self) -> dict[str, Any]:
        """Everything but the key (only whether one is set)."""
        return {"base_url": self.base_url, "model": self.model, "api_key_set": bool(self.api_key),
                "timeout_s": self.timeout_s, "max_retries": self.max_retries,
                "backoff_s": self.backoff, "stream": self.stream, "local": self.local,
                "price_input_per_1k_micro": self.price_input_per_1k,
                "price_output_per_1k_micro": self.price_output_per_1k}


def read_key_file(path: Path | None, setting: str) -> str:
    """The key in ``path`` ("" for None); the file must be private (0600)."""
    if path is None:
        return ""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{setting}: {path} is readable by others "
                              f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class LlmResult:
    text: str
    input_tokens: int
    output_tokens: int
    cost_micro: int
    estimated: bool  # True: the server gave no usage; tokens are upper bounds
    model: str
    attempts: int
    waited_s: float = 0.0  # total backoff slept between attempts

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_micro": self.cost_micro,
                "estimated": self.estimated, "model": self.model, "attempts": self.attempts,
                "waited_s": round(self.waited_s, 3)}


def estimate_cost_micro(config: LlmConfig, prompt: str, max_tokens: int | None) -> int:
    """An upper bound on what ``complete(prompt, max_tokens=...)`` will cost:
    reserve this before the call, settle the result's ``cost_micro`` after."""
    out = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return cost_micro(prompt_token_bound(prompt), out, config.price_input_per_1k,
                      config.price_output_per_1k)


class _Retry(Exception):
    def __init__(self, error: Exception, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


T = TypeVar("T")
Reader = Callable[[aiohttp.ClientResponse], Awaitable[T]]
OnChunk = Callable[[str, int], Awaitable[None]]
"""Told of each piece of a streamed answer: its new text (may be empty) and
the bytes of output (text and tool-call fragments) received so far."""


class LlmClient:
    """One connection pool to one LLM server; ``aclose()`` it when done."""

    def __init__(self, config: LlmConfig,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       timeout_s: float | None = None) -> LlmResult:
        """Ask for one completion of ``prompt`` (a single user message); each
        attempt may take ``llm.timeout`` seconds, or less when what is left of
        ``timeout_s`` (the caller's deadline) is shorter.

        Raises:
            InvalidRequest: an empty or oversized prompt, or a bad max_tokens.
            LlmRateLimited, LlmUnavailable: still failing after every retry.
            LlmQuotaExceeded, LlmBadResponse, LlmTimeout: not retried.
        """
        limit = check_request(prompt, max_tokens)
        body = request_body(self.config.model, prompt, limit, stream=self.config.stream)
        deadline = None if timeout_s is None else time.monotonic() + max(0.001, timeout_s)
        reader = _read_stream if self.config.stream else _read_answer
        answer = await self._send(body, deadline, reader)
        return self._settle(prompt, limit, answer.completion(), answer.attempts,
                            answer.waited_s)

    async def chat(self, request: ChatRequest, *, max_tokens: int, deadline: float
                   ) -> ChatAnswer:
        """One chat completion of a checked request, not streamed; every attempt
        ends by ``deadline`` (a ``time.monotonic()`` value).  Errors as
        :meth:`complete`'s."""
        body = chat_body(request.model or self.config.model, request.messages,
                         request.options, max_tokens, stream=False)
        return await self._send(body, deadline, _read_answer)

    async def chat_stream(self, request: ChatRequest, *, max_tokens: int, deadline: float,
                          on_chunk: OnChunk) -> ChatAnswer:
        """:meth:`chat`, streamed: ``on_chunk`` hears each piece as it comes.
        Only an attempt that received nothing is retried; a stream that breaks
        off after its first piece is an error (LlmBadResponse, or LlmTimeout at
        the deadline), never sent again."""
        body = chat_body(request.model or self.config.model, request.messages,
                         request.options, max_tokens, stream=True)

        async def read(resp: aiohttp.ClientResponse) -> ChatAnswer:
            return await _read_chunks(resp, on_chunk)

        return await self._send(body, deadline, read)

    async def _send(self, body: dict[str, Any], deadline: float | None,
                    reader: Reader[ChatAnswer]) -> ChatAnswer:
        """Post ``body``, retrying as the module says; each attempt gets
        ``llm.timeout`` or what is left until ``deadline``, whichever is less."""
        attempts, waited = 0, 0.0
        while True:
            attempts += 1
            timeout = self._attempt_timeout(deadline)
            try:
                answer = await self._attempt(body, timeout, reader)
            except _Retry as retry:
                delay = self._retry_delay(retry, attempts, deadline)
                log.warning("LLM attempt %d failed (%s); retrying in %.2fs",
                            attempts, retry.error, delay)
                await self._sleep(delay)
                waited += delay
                continue
            return replace(answer, attempts=attempts, waited_s=waited)

    def _attempt_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.config.timeout_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise LlmTimeout(f"no time left to ask the LLM at {self.config.base_url}")
        return min(self.config.timeout_s, left)

    def _retry_delay(self, retry: _Retry, attempts: int, deadline: float | None) -> float:
        """The wait before the next attempt, or the error to give up with."""
        if attempts > self.config.max_retries:
            raise _after(retry.error, attempts) from None
        delay = backoff_s(attempts, self.config.backoff, retry.retry_after)
        if delay > self.config.max_wait_s:
            raise LlmRateLimited(f"{retry.error}; server asks to wait {delay:.0f}s, "
                                 f"more than {self.config.max_wait_s:g}s") from None
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise type(retry.error)(f"{retry.error} (not retried: the caller's deadline "
                                    f"comes before the next attempt, {delay:.2f}s away)"
                                    ) from None
        return delay

    def _settle(self, prompt: str, limit: int, done: Completion, attempts: int,
                waited: float) -> LlmResult:
        estimated = done.input_tokens is None or done.output_tokens is None
        tokens_in = done.input_tokens
        if tokens_in is None:
            tokens_in = prompt_token_bound(prompt)
        tokens_out = done.output_tokens
        if tokens_out is None:
            tokens_out = min(limit, token_bound(done.text))
        cost = cost_micro(tokens_in, tokens_out, self.config.price_input_per_1k,
                          self.config.price_output_per_1k)
        return LlmResult(done.text, tokens_in, tokens_out, cost, estimated,
                         done.model or self.config.model, attempts, waited)

    async def _attempt(self, body: dict[str, Any], timeout_s: float, reader: Reader[T]) -> T:
        session = self._http()
        url = f"{self.config.base_url}/chat/completions"
        try:
            async with session.post(url, json=body, headers=self._headers(),
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status >= 400:
                    raw = await resp.content.read(64 * 1024)
                    error, retry = error_for(resp.status, raw)
                    if retry:
                        raise _Retry(error, retry_after_s(resp.headers.get("Retry-After")))
                    raise error
                return await reader(resp)
        except TimeoutError:
            raise LlmTimeout(f"LLM at {self.config.base_url} did not answer within "
                             f"{timeout_s:.3g}s") from None
        except aiohttp.ClientConnectionError as exc:
            error = LlmUnavailable(f"cannot reach the LLM at {self.config.base_url}: {exc}")
            raise _Retry(error, None) from None
        except aiohttp.ClientPayloadError as exc:
            raise LlmBadResponse(f"LLM response broke off: {exc}") from None
        except aiohttp.ClientError as exc:  # e.g. HTTP that does not parse
            raise LlmBadResponse(f"LLM at {self.config.base_url} answered with broken "
                                 f"HTTP: {exc}") from None

    def _headers(self) -> dict[str, str]:
        """The key, and the trace context (``traceparent``: the server's spans
        join the call's trace)."""
        headers = telemetry.carrier()
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            # The local server is ours and one hop away: a fresh connection per
            # request, so a connection its previous process kept alive is never reused.
            connector = aiohttp.TCPConnector(force_close=self.config.local)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session


def _after(error: Exception, attempts: int) -> Exception:
    return type(error)(f"{error} (gave up after {attempts} attempts)")


def check_request(prompt: object, max_tokens: object) -> int:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("prompt must be a non-empty string")
    if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise InvalidRequest(f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
    if max_tokens is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
            or not 1 <= max_tokens <= 1_000_000:
        raise InvalidRequest(f"max_tokens must be a whole number from 1 to 1000000, "
                             f"got {max_tokens!r}")
    return max_tokens


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    raw = await resp.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise LlmBadResponse(f"LLM response is larger than {MAX_BODY_BYTES} bytes")
    return raw


async def _read_answer(resp: aiohttp.ClientResponse) -> ChatAnswer:
    return parse_chat(await _read_limited(resp))


async def _read_stream(resp: aiohttp.ClientResponse) -> ChatAnswer:
    async def ignore(text: str, size: int) -> None:
        pass

    return await _read_chunks(resp, ignore)


async def _read_chunks(resp: aiohttp.ClientResponse, on_chunk: OnChunk) -> ChatAnswer:
    parser = StreamParser()
    total = 0
    try:
        async for data in resp.content.iter_any():
            total += len(data)
            if total > MAX_BODY_BYTES:
                raise LlmBadResponse(f"LLM stream is larger than {MAX_BODY_BYTES} bytes")
            for text in parser.feed(data) or [""]:
                await on_chunk(text, parser.output_bytes)
    except aiohttp.ClientError as exc:  # nothing is sent twice once a piece arrived
        if total == 0:
            raise
        raise LlmBadResponse(f"LLM stream broke off after {total} bytes: {exc}") from None
    for text in parser.feed(b"\n"):  # a last line without its newline
        await on_chunk(text, parser.output_bytes)
    return parser.answer()
