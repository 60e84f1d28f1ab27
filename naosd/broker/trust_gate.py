"""The trust gate: before every execution, may this agent run a task that
costs this much?  A thin shell over the pure :mod:`actors.domain.trust`.

Where an agent's scores come from, in order:

1. the local registry, when the operator set scores (``axis register
   --t-score --c-score``): works offline, never expires;
2. a fresh entry of the AXIS answer cache (younger than ``axis.cache_ttl``);
3. AXIS itself (the answer is cached);
4. AXIS unreachable: a stale cache entry or nothing, and ``decide`` fails
   closed unless ``axis.fail_open``.

Every decision, allow or deny, is audited (``trust.allow``/``trust.deny``)
with its reason before :meth:`TrustGate.check` returns or raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from actors.domain.trust import (
    Decision,
    TrustPolicy,
    TrustRecord,
    TrustSource,
    decide,
    enforce,
    merge,
)
from naosd.broker.axis import AxisClient, AxisConfig
from naosd.errors import AxisUnavailable, AxisUnknownAuid, InvalidRequest, TrustDenied
from naosd.storage import trust as ts
from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.trust")

__all__ = ["TrustDenied", "TrustGate"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """An agent's record as found, with how and how fresh it must be."""

    record: TrustRecord | None
    max_age_s: float
    axis_error: str | None = None


class TrustGate:
    def __init__(self, db: AsyncStore, config: AxisConfig,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.config = config
        self.axis = AxisClient(config)
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self.axis.aclose()

    async def check(self, agent: str | None, cost_micro: int) -> Decision:
        """Allow or deny a task of ``agent`` costing ``cost_micro``; audited.

        Raises:
            TrustDenied: the gate denied (the decision is audited first).
            InvalidRequest: a negative or non-integer cost.
        """
        decision, detail = await self.evaluate(agent, cost_micro)
        await self.db.audit("trust.allow" if decision.allow else "trust.deny", actor="trust",
                            agent=agent, **detail)
        return enforce(decision)

    async def evaluate(self, agent: str | None, cost_micro: int
                       ) -> tuple[Decision, dict[str, Any]]:
        """The decision and its audit detail, without auditing (status previews)."""
        if isinstance(cost_micro, bool) or not isinstance(cost_micro, int) or cost_micro < 0:
            raise InvalidRequest(f"task cost must be micro-dollars >= 0, got {cost_micro!r}")
        if agent is None:
            why = "no agent: an operator's own task; the trust gate checks agents only"
            return _done(Decision(True, why, None, None, None, "no_agent"), cost_micro)
        # One trip to the store thread for all three reads: every agent call
        # passes here, and each trip waits behind any commit being fsynced.
        reg, base, override = await self.db.call(lambda s: (
            ts.get_registration(s, agent), ts.get_policy(s, ts.GLOBAL),
            ts.get_policy(s, agent)))
        if reg is None:
            why = (f"agent {agent!r} is not registered with the trust gate "
                   f"(naosctl axis register {agent})")
            return _done(Decision(False, why, None, None, None, "unregistered"), cost_micro)
        policy = merge(policy_from(base), policy_from(override) if override else None)
        try:
            found = await self.lookup(reg)
        except AxisUnknownAuid as exc:
            return _done(Decision(False, f"{agent}: {exc.message}", None, None, None,
                                  "unknown_auid"), cost_micro, auid=reg.auid)
        if found.record is None and reg.auid.startswith(ts.LOCAL_PREFIX):
            why = (f"{agent} is registered locally without scores and no AXIS AUID: set "
                   "them with naosctl axis register --auid or --t-score/--c-score")
            return _done(Decision(False, why, None, None, None, "no_record"), cost_micro,
                         auid=reg.auid)
        decision = decide(policy, found.record, cost_micro, self._clock(),
                          max_age_s=found.max_age_s, fail_open=self.config.fail_open)
        source = found.record.source.value if found.record else None
        return _done(decision, cost_micro, auid=reg.auid, source=source,
                     axis_error=found.axis_error)

    async def lookup(self, reg: ts.Registration) -> Lookup:
        """Find ``reg``'s record: local scores, fresh cache, AXIS, stale cache."""
        if reg.t_score is not None and reg.c_score is not None:
            return Lookup(TrustRecord(reg.auid, reg.t_score, reg.c_score,
                                      ts.parse_ts(reg.updated_at), TrustSource.LOCAL), math.inf)
        ttl = self.config.cache_ttl_s
        if reg.auid.startswith(ts.LOCAL_PREFIX):
            return Lookup(None, ttl)
        # One AXIS request per AUID at a time: concurrent checks of an agent
        # whose entry expired wait for the first one's answer in the cache.
        async with self._locks.setdefault(reg.auid, asyncio.Lock()):
            cached = await self.db.call(lambda s: ts.cache_get(s, reg.auid))
            if cached is not None and self._age_s(cached) <= ttl:
                return Lookup(from_cache(cached), ttl)
            try:
                return Lookup(await self.refresh(reg.auid), ttl)
            except AxisUnavailable as exc:
                log.warning("trust gate: %s", exc.message)
                return Lookup(from_cache(cached) if cached else None, ttl, exc.message)

    async def refresh(self, auid: str) -> TrustRecord:
        """Ask AXIS about ``auid`` now and cache the answer."""
        t_score, c_score = await self.axis.fetch(auid)
        await self.db.call(lambda s: ts.cache_put(s, auid, t_score, c_score))
        return TrustRecord(auid, t_score, c_score, self._clock(), TrustSource.AXIS)

    async def policy_for(self, agent: str | None) -> TrustPolicy:
        """The global policy merged with ``agent``'s override (the stricter wins)."""
        base = await self.db.call(lambda s: ts.get_policy(s, ts.GLOBAL))
        override = await self.db.call(lambda s: ts.get_policy(s, agent)) if agent else None
        return merge(policy_from(base), policy_from(override) if override else None)

    def _age_s(self, cached: ts.Cached) -> float:
        return (self._clock() - ts.parse_ts(cached.fetched_at)).total_seconds()


def policy_from(doc: dict[str, Any] | None) -> TrustPolicy:
    """A stored policy document -> TrustPolicy (raises InvalidRequest if bad)."""
    if not doc:
        return TrustPolicy()
    return TrustPolicy(min_tier=doc.get("min_tier", "T1"),
                       min_t_score=doc.get("min_t_score", 0),
                       min_rating=doc.get("min_rating", "D"), caps=doc.get("caps") or {})


def policy_doc(policy: TrustPolicy) -> dict[str, Any]:
    return {"min_tier": policy.min_tier.name, "min_t_score": policy.min_t_score,
            "min_rating": policy.min_rating.value,
            "caps": {rating.value: cap for rating, cap in policy.caps.items()}}


def from_cache(cached: ts.Cached) -> TrustRecord:
    return TrustRecord(cached.auid, cached.t_score, cached.c_score,
                       ts.parse_ts(cached.fetched_at), TrustSource.CACHE)


def _done(decision: Decision, cost_micro: int, **extra: Any
          ) -> tuple[Decision, dict[str, Any]]:
    detail = {"allow": decision.allow, "code": decision.code, "reason": decision.reason,
              "cost_micro": cost_micro,
              "tier": decision.tier.name if decision.tier else None,
              "rating": decision.rating.value if decision.rating else None,
              "cap_micro": decision.cap_micro}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return decision, detail
