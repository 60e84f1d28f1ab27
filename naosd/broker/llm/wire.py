"""The OpenAI chat-completions wire format, sans I/O (stdlib only).

Request bodies, response and stream-chunk parsing, error classification,
Retry-After, backoff and cost arithmetic: everything :mod:`naosd.broker.llm.client` needs
that does not touch a socket, so it is tested directly.  Money is integer
micro-dollars; token counts that a server did not report are replaced by
conservative upper bounds (see :func:`token_bound`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

from naosd.errors import (
    LlmBadResponse,
    LlmQuotaExceeded,
    LlmRateLimited,
    LlmUnavailable,
)

CHAT_OVERHEAD_TOKENS: Final = 64
"""Tokens a chat template may add around one user message (role markers,
BOS/EOS, a default system prompt); SmolLM2's template adds about 30."""
DEFAULT_MAX_TOKENS: Final = 512
"""Sent when the caller gives no max_tokens, so the reservation stays a bound."""
MAX_PROMPT_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Completion:
    """What one successful response said (usage None when it said nothing)."""

    text: str
    model: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """One chat response: the assistant's message, why it stopped, the usage
    the server reported (None when it said nothing), and how it was got."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...]  # {id, type: function, function: {name, arguments}}
    finish_reason: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    attempts: int = 1
    waited_s: float = 0.0

    @property
    def output_bytes(self) -> int:
        """The bytes the model produced: its text and its tool calls as JSON."""
        return output_bytes(self.content, self.tool_calls)

    def completion(self) -> Completion:
        if self.content is None:
            raise LlmBadResponse("LLM response's first choice has no message content")
        return Completion(self.content, self.model, self.input_tokens, self.output_tokens)


def output_bytes(content: str | None, tool_calls: Any) -> int:
    size = len((content or "").encode())
    if tool_calls:
        size += len(json.dumps(list(tool_calls), ensure_ascii=False).encode())
    return size


def token_bound(text: str) -> int:
    """An upper bound on the tokens of ``text`` for byte-level BPE tokenizers
    (every token is at least one byte), plus one for an end marker."""
    return len(text.encode("utf-8")) + 1


def prompt_token_bound(prompt: str) -> int:
    return token_bound(prompt) + CHAT_OVERHEAD_TOKENS


def cost_micro(input_tokens: int, output_tokens: int, price_in_1k: int, price_out_1k: int) -> int:
    """Cost in micro-dollars, rounded up (never under-charges)."""
    return math.ceil((input_tokens * price_in_1k + output_tokens * price_out_1k) / 1000)


def max_tokens_within(granted_micro: int, prompt_tokens: int, asked: int, price_in_1k: int,
                      price_out_1k: int) -> int:
    """The most output tokens (at most ``asked``) whose cost, with
    ``prompt_tokens`` in, stays within ``granted_micro``: the ``max_tokens``
    a call sized to its reservation sends.  0 when even none fits."""
    if price_out_1k == 0:
        return asked if prompt_tokens * price_in_1k <= granted_micro * 1000 else 0
    room = (granted_micro * 1000 - prompt_tokens * price_in_1k) // price_out_1k
    return max(0, min(asked, room))


def request_body(model: str, prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    return chat_body(model, [{"role": "user", "content": prompt}], {}, max_tokens,
                     stream=stream)


def chat_body(model: str, messages: Any, options: dict[str, Any], max_tokens: int, *,
              stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(messages), **options,
                            "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def parse_completion(raw: bytes) -> Completion:
    """A non-streaming response body -> Completion, or LlmBadResponse."""
    return parse_chat(raw).completion()


def parse_chat(raw: bytes) -> ChatAnswer:
    """A non-streaming response body -> ChatAnswer, or LlmBadResponse."""
    doc = _json_object(raw)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LlmBadResponse("LLM response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise LlmBadResponse("LLM response's first choice has no message")
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise LlmBadResponse("LLM response's tool_calls is not a list")
    tool_calls = tuple(_tool_call(c, i) for i, c in enumerate(calls))
    if not isinstance(content, str) and (content is not None or not tool_calls):
        raise LlmBadResponse("LLM response's first choice has no message content")
    return ChatAnswer(content, tool_calls, _str(choices[0].get("finish_reason")), _model(doc),
                      *_usage(doc.get("usage")))


def _tool_call(call: Any, index: int) -> dict[str, Any]:
    """A tool call as servers send it, made regular: arguments as text (some
    servers send an object), a missing id made up from its position."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        raise LlmBadResponse(f"LLM response's tool call {index} has no function")
    arguments = fn.get("arguments")
    if not isinstance(arguments, str):
        arguments = "" if arguments is None else json.dumps(arguments)
    return {"id": _str(call.get("id")) or f"call_{index}", "type": "function",
            "function": {"name": _str(fn.get("name")), "arguments": arguments}}


class StreamParser:
    """Feed it the bytes of a ``text/event-stream`` body; it collects the
    text deltas, the tool calls' fragments (by index), the finish reason and
    the usage chunk if one comes.  ``done`` once ``[DONE]`` is seen."""

    def __init__(self) -> None:
        self._buffer = b""
        self._parts: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.model = ""
        self.finish_reason = ""
        self.usage: tuple[int | None, int | None] = (None, None)
        self.done = False
        self.output_bytes = 0  # text and tool-call fragments received so far

    def feed(self, data: bytes) -> list[str]:
        """Take ``data``; return the text pieces it completed, one per chunk."""
        self._buffer += data
        new: list[str] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line.strip(), new)
        return new

    def _line(self, line: bytes, new: list[str]) -> None:
        if not line.startswith(b"data:") or self.done:
            return  # comments, event names, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        chunk = _json_object(payload)
        self.model = self.model or _model(chunk)
        if chunk.get("usage") is not None:
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            self.finish_reason = _str(choice.get("finish_reason")) or self.finish_reason
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, new)

    def _delta(self, delta: dict[str, Any], new: list[str]) -> None:
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._parts.append(text)
            new.append(text)
            self.output_bytes += len(text.encode())
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict):
                self._fragment(fragment)

    def _fragment(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            index = len(self._calls)
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        fn = fragment.get("function")
        if not isinstance(fn, dict):
            fn = {}
        for key, value in (("id", fragment.get("id")), ("name", fn.get("name")),
                           ("arguments", fn.get("arguments"))):
            if isinstance(value, str):
                call[key] += value
                self.output_bytes += len(value.encode())

    def result(self) -> Completion:
        return self.answer().completion()

    def answer(self) -> ChatAnswer:
        if not self.done:
            raise LlmBadResponse("LLM stream ended without [DONE]")
        calls = tuple(_tool_call({"id": c["id"], "function": {
            "name": c["name"], "arguments": c["arguments"]}}, i)
            for i, c in (sorted(self._calls.items())))
        content = "".join(self._parts)
        return ChatAnswer(content if content or not calls else None, calls,
                          self.finish_reason, self.model, *self.usage)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LlmBadResponse(f"LLM response is not JSON: {_snippet(raw)}") from None
    if not isinstance(doc, dict):
        raise LlmBadResponse(f"LLM response is not a JSON object: {_snippet(raw)}")
    return doc


def _model(doc: dict[str, Any]) -> str:
    return _str(doc.get("model"))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _usage(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _snippet(raw: bytes) -> str:
    text = raw[:120].decode("utf-8", "replace")
    return repr(text + ("..." if len(raw) > 120 else ""))


# -- errors and retries ------------------------------------------------------


def error_for(status: int, raw: bytes) -> tuple[Exception, bool]:
    """The error an HTTP error answer means, and whether to retry it."""
    kind, message = _error_detail(raw)
    text = f"LLM server answered {status}" + (f": {message}" if message else "")
    if status == 429 and kind == "insufficient_quota":
        return LlmQuotaExceeded(f"{text} (out of quota; not retried)"), False
    if status == 429:
        return LlmRateLimited(text), True
    if status >= 500:
        return LlmUnavailable(text), True
    return LlmBadResponse(text), False


def _error_detail(raw: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "", raw[:200].decode("utf-8", "replace").strip()
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str):
        return "", error[:200]
    if not isinstance(error, dict):
        return "", ""
    kind = error.get("code") or error.get("type") or ""
    message = error.get("message") or ""
    return (str(kind), str(message)[:200])


def retry_after_s(header: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date);
    None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempt: int, base: float, retry_after: float | None, cap: float = 60.0) -> float:
    """The wait before retry number ``attempt`` (1 = the first retry):
    the server's Retry-After if it gave one, else ``base * 2**(attempt-1)``,
    at most ``cap``."""
    if retry_after is not None:
        return retry_after
    return min(cap, base * 2 ** (attempt - 1))
