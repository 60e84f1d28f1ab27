"""The AXIS client: an agent's T-Score and C-Score by AUID over HTTP (aiohttp).

The endpoint (see docs/trust.md) is ``GET {base_url}/agents/{auid}`` with the
key in the ``X-AXIS-API-Key`` header, answering
``{"auid": ..., "t_score": 0-1000, "c_score": 0-1000}``.  Every failure
(unreachable, timeout, 5xx, garbage) is an :class:`AxisUnavailable`; a 404 is
:class:`AxisUnknownAuid`, which is an answer, not an outage.  The key is
never logged, audited or returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from naosd.broker.llm.client import read_key_file
from naosd.errors import AxisUnavailable, AxisUnknownAuid, ConfigError

if TYPE_CHECKING:
    from naosd.config import Config

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class AxisConfig:
    base_url: str = ""  # empty: no AXIS, the local registry and cache only
    api_key: str = field(default="", repr=False)
    timeout_s: float = 5.0
    cache_ttl_s: float = 3600.0
    fail_open: bool = False

    def __post_init__(self) -> None:
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"axis.base_url must be an http(s) URL, got {self.base_url!r}")

    @classmethod
    def from_config(cls, config: Config) -> AxisConfig:
        key = config.axis_api_key or read_key_file(config.axis_api_key_file, "axis.api_key_file")
        return cls(config.axis_base_url.rstrip("/"), key, config.axis_timeout,
                   config.axis_cache_ttl, config.axis_fail_open)

    def describe(self) -> dict[str, Any]:
        return {"base_url": self.base_url or None, "api_key_set": bool(self.api_key),
                "timeout_s": self.timeout_s, "cache_ttl_s": self.cache_ttl_s,
                "fail_open": self.fail_open}


class AxisClient:
    def __init__(self, config: AxisConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, auid: str) -> tuple[int, int]:
        """``(t_score, c_score)`` for ``auid``.

        Raises:
            AxisUnavailable: AXIS is not configured, unreachable, slow, or
                answered with an error status or an unreadable body.
            AxisUnknownAuid: AXIS does not know ``auid``.
        """
        if not self.config.base_url:
            raise AxisUnavailable("no AXIS configured (axis.base_url)")
        url = f"{self.config.base_url}/agents/{quote(auid, safe='')}"
        try:
            async with self._http().get(url, headers=self._headers()) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status = resp.status
        except TimeoutError:
            raise AxisUnavailable(f"AXIS at {self.config.base_url} did not answer within "
                                  f"{self.config.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise AxisUnavailable(f"cannot reach AXIS at {self.config.base_url}: {exc}") from None
        return _scores(auid, status, raw)

    def _headers(self) -> dict[str, str]:
        return {"X-AXIS-API-Key": self.config.api_key} if self.config.api_key else {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session


def _scores(auid: str, status: int, raw: bytes) -> tuple[int, int]:
    if status == 404:
        raise AxisUnknownAuid(f"AXIS knows no agent with AUID {auid!r}")
    if status != 200:
        raise AxisUnavailable(f"AXIS answered {status} for {auid!r}")
    if len(raw) > MAX_ANSWER_BYTES:
        raise AxisUnavailable(f"AXIS answer for {auid!r} is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AxisUnavailable(f"AXIS answer for {auid!r} is not JSON") from None
    if not isinstance(doc, dict):
        raise AxisUnavailable(f"AXIS answer for {auid!r} is not a JSON object")
    if doc.get("auid", auid) != auid:
        raise AxisUnavailable(f"AXIS answered for {doc.get('auid')!r}, not {auid!r}")
    return _score(doc, "t_score", auid), _score(doc, "c_score", auid)


def _score(doc: dict[str, Any], name: str, auid: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise AxisUnavailable(f"AXIS answer for {auid!r} has no valid {name}: {value!r}")
    return value
