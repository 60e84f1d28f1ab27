"""Methods of the LLM client: ``llm.complete``, ``llm.status`` and ``llm.restart``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from naosd.control.params import Int, Spec, Str
from naosd.control.roles import READ
from naosd.control.table import MethodTable

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("llm")
method = METHODS.method

CLIENT_TIMEOUT = Spec((int, float), None)  # how long the caller waits (s): the deadline


@method("llm.complete", deadline="timeout", prompt=Str(max_len=1 << 20),
        max_tokens=Int(None, lo=1, hi=1_000_000), agent=Str(None, max_len=64),
        timeout=CLIENT_TIMEOUT)
async def llm_complete(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Send one prompt to the configured LLM (or the local one): text, tokens, cost."""
    result = await d.llm.complete(p["prompt"], max_tokens=p["max_tokens"], agent=p["agent"])
    return result.to_dict()


@method("llm.status", role=READ)
async def llm_status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Which LLM naosd would use, and the local server's state."""
    status: dict[str, Any] = d.llm.status()
    return status


@method("llm.restart")
async def llm_restart(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop the local LLM server, forget its crashes and start it again."""
    status: dict[str, Any] = await d.llm.restart()
    return status
