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


def token_bound(text: str) -> int:
    """An upper bound on the tokens of ``text`` for byte-level BPE tokenizers
    (every token is at least one byte), plus one for an end marker."""
    return len(text.encode("utf-8")) + 1


def prompt_token_bound(prompt: str) -> int:
    return token_bound(prompt) + CHAT_OVERHEAD_TOKENS


def cost_micro(input_tokens: int, output_tokens: int, price_in_1k: int, price_out_1k: int) -> int:
    """Cost in micro-dollars, rounded up (never under-charges)."""
    return math.ceil((input_tokens * price_in_1k + output_tokens * price_out_1k) / 1000)


def request_body(model: str, prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def parse_completion(raw: bytes) -> Completion:
    """A non-streaming response body -> Completion, or LlmBadResponse."""
    doc = _json_object(raw)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LlmBadResponse("LLM response has no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise LlmBadResponse("LLM response's first choice has no message content")
    usage = _usage(doc.get("usage"))
    return Completion(content, _model(doc), *usage)


class StreamParser:
    """Feed it the bytes of a ``text/event-stream`` body; it collects the
    deltas and the usage chunk if one comes.  ``done`` once ``[DONE]`` is seen."""

    def __init__(self) -> None:
        self._buffer = b""
        self._parts: list[str] = []
        self.model = ""
        self.usage: tuple[int | None, int | None] = (None, None)
        self.done = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
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
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str):
                self._parts.append(text)

    def result(self) -> Completion:
        if not self.done:
            raise LlmBadResponse("LLM stream ended without [DONE]")
        return Completion("".join(self._parts), self.model, *self.usage)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LlmBadResponse(f"LLM response is not JSON: {_snippet(raw)}") from None
    if not isinstance(doc, dict):
        raise LlmBadResponse(f"LLM response is not a JSON object: {_snippet(raw)}")
    return doc


def _model(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    return model if isinstance(model, str) else ""


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
