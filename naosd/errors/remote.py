"""Errors of the remote services naosd calls: the LLM server and AXIS (a leaf
module: stdlib only, collected by ``naosd.errors``)."""

from __future__ import annotations

from typing import ClassVar

from naosd.errors.core import NaosError, NotFound


class LlmUnavailable(NaosError, ConnectionError):
    """The LLM server could not be reached, or answered 5xx after every retry.

    Unlike LlmBadResponse, trying again later may work."""

    code: ClassVar[str] = "llm_unavailable"


class LlmStarting(LlmUnavailable):
    """The embedded local LLM was still starting (or waiting out its backoff
    after a crash) when the caller's deadline came; unlike LlmCrashed, the
    start goes on and a later call finds it ready."""

    code: ClassVar[str] = "llm_starting"


class LlmCrashed(LlmUnavailable):
    """The embedded local LLM's process died (a signal, an exit, or no answer
    while starting) during this call, or crashed so often that naosd stopped
    restarting it until ``naosctl llm restart``."""

    code: ClassVar[str] = "llm_crashed"


class LlmRateLimited(NaosError):
    """The LLM server answered 429 rate_limit_exceeded on every attempt; retry later.

    Also when it asked to wait longer than we may; unlike LlmQuotaExceeded it
    clears with time."""

    code: ClassVar[str] = "llm_rate_limited"


class LlmQuotaExceeded(NaosError):
    """The LLM account is out of quota (429 insufficient_quota).

    Never retried: waiting does not help."""

    code: ClassVar[str] = "llm_quota_exceeded"


class LlmBadResponse(NaosError):
    """The LLM server answered, but not with a usable chat completion.

    A malformed body, a 4xx other than 429, no choices."""

    code: ClassVar[str] = "llm_bad_response"


class LlmTimeout(NaosError, TimeoutError):
    """One LLM request took longer than llm.timeout (not retried).

    The server may still be working on it."""

    code: ClassVar[str] = "llm_timeout"


class NoLlm(NaosError):
    """No LLM is configured and the embedded local one is not running."""

    code, exit_code = "llm_not_configured", 6


class AxisUnavailable(NaosError, ConnectionError):
    """AXIS could not be reached or answered with an error or garbage."""

    code: ClassVar[str] = "axis_unavailable"


class AxisUnknownAuid(NotFound):
    """AXIS answered 404: it has no agent with this AUID."""

    code = "axis_unknown_auid"
