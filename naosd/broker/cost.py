"""The cost controller: budgets per agent and one global budget, held by naosd.

The maths is :mod:`actors.domain.budget` (pure); this module keeps the current
:class:`BudgetState` of every scope in memory and turns the domain's events into
audit rows and log warnings. It is owned by naosd's event loop: every method is
plain synchronous code, so a reservation (check both budgets, then hold the
amount on both) can never interleave with another one. That is what makes
"many concurrent tasks never overspend" hold without a lock.

Nothing here touches the database: what must be persisted (changed budget rows,
audit events) accumulates and is taken with :meth:`CostController.drain` by the
caller, who writes it in the same transaction as the ledger row. Reservations
live only in memory: a daemon that stops takes its in-flight tasks with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from actors.domain import budget as b
from naosd.errors import BudgetExceeded, NotFound, Throttled
from naosd.storage.ledger import Event  # the audit rows this controller accumulates

__all__ = ["GLOBAL", "CostController", "Event", "Hold", "Throttled"]

log = logging.getLogger("naosd.broker.cost")

GLOBAL: Final = "*"
DEFAULT_RATE: Final = 1.0  # throttled tasks per second
DEFAULT_BURST: Final = 1


@dataclass(slots=True)
class Scope:
    state: b.BudgetState
    bucket: b.TokenBucket


@dataclass(frozen=True, slots=True)
class Hold:
    """What one task reserved, per scope."""

    agent: str | None
    amount: int
    scopes: tuple[str, ...]  # the budgets holding it (none when no budget applies)


@dataclass(slots=True)
class Pending:
    events: list[Event] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)


class CostController:
    def __init__(self, *, mono: Callable[[], float] = time.monotonic) -> None:
        self._scopes: dict[str, Scope] = {}
        self._pending = Pending()
        self._mono = mono

    # -- loading and configuring ---------------------------------------------------
    def load(self, rows: Iterable[dict[str, Any]]) -> None:
        """Restore budgets as persisted (see :func:`naosd.storage.ledger.list_budgets`:
        ``paused_since``, ``pause_reason`` and ``throttled_since`` come from the audit
        rows written with the budget row)."""
        for row in rows:
            policy = b.BudgetPolicy(row["limit_micro"], row["period"],
                                    tuple(row["alert_at"]), row["action"])
            state = b.BudgetState(policy, row["period_start"], row["spent_micro"], 0,
                                  frozenset(row["alerted"]), row["paused_since"],
                                  row["pause_reason"], row["throttled_since"])
            self._scopes[row["scope"]] = Scope(
                state, b.TokenBucket(row["throttle_rate"], row["throttle_burst"]))

    def set_budget(self, scope: str, policy: b.BudgetPolicy, now: datetime, *,
                   rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        """Create or change a budget. Spending of the current period is kept when the
        period length is unchanged; in-flight reservations are always kept."""
        old = self._scopes.get(scope)
        state = b.initial(policy, now)
        if old is not None:
            keep = old.state.policy.period is policy.period
            state = replace(state, reserved_micro=old.state.reserved_micro,
                            spent_micro=old.state.spent_micro if keep else 0,
                            alerted=old.state.alerted if keep else frozenset())
        self._scopes[scope] = Scope(state, b.TokenBucket(rate, burst))
        self._pending.dirty.add(scope)
        self._emit(scope, "cost.set", limit_micro=policy.limit_micro, period=policy.period.value,
                   alert_at=list(policy.alert_at), action=policy.action.value,
                   throttle_rate=rate, throttle_burst=burst)

    def reset(self, scope: str, now: datetime) -> None:
        """Operator reset: a fresh period, not paused; reservations are kept."""
        entry = self._get(scope)
        entry.state, events = b.reset(entry.state, now)
        entry.bucket = b.TokenBucket(entry.bucket.rate_per_s, entry.bucket.burst)
        self._pending.dirty.add(scope)
        self._apply_events(scope, events)

    def remove(self, scope: str) -> bool:
        """Forget a budget (its agent was deleted); whether there was one.
        Holds on it settle and release as if it had never been."""
        if self._scopes.pop(scope, None) is None:
            return False
        self._pending.dirty.discard(scope)
        self._emit(scope, "cost.removed")
        return True

    def has(self, scope: str) -> bool:
        return scope in self._scopes

    # -- the request path -----------------------------------------------------------
    def reserve(self, agent: str | None, amount: int, now: datetime, *,
                floor: int | None = None) -> Hold:
        """Hold ``amount`` on the agent's budget and the global one (those that exist).

        Either every budget holds it or none does.  With ``floor``, a pausing
        budget with less than ``amount`` left holds what it has left (at least
        ``floor``): the hold's ``amount`` says what was granted, and the caller
        sizes its work to it (``max_tokens``, fuel) so it cannot spend more.

        Raises:
            BudgetExceeded: a pausing budget would pass its limit, or is paused (a
                refusal may pause the budget: that is kept, the reservation is not).
            Throttled: a throttling budget is over its limit and out of tokens.
        """
        scopes = [s for s in (agent, GLOBAL) if s is not None and s in self._scopes]
        if floor is not None:
            for scope in scopes:
                amount = min(amount, b.grantable(self._scopes[scope].state, amount, floor, now))
        staged: list[tuple[str, b.BudgetState, list[b.BudgetEvent]]] = []
        for scope in scopes:  # raises before any reservation is kept
            try:
                state, events = b.reserve(self._scopes[scope].state, amount, now)
            except BudgetExceeded as exc:
                if exc.outcome is not None:  # paused by this refusal, or rolled over
                    self._scopes[scope].state, events = exc.outcome
                    self._pending.dirty.add(scope)
                    self._apply_events(scope, events)
                # An agent with its own budget and the global one: say which refused.
                raise BudgetExceeded(f"{_whose(scope)} {exc}", exc.outcome) from None
            staged.append((scope, state, events))
        buckets = self._take_tokens(staged)
        for scope, state, events in staged:
            entry = self._scopes[scope]
            entry.state = state
            entry.bucket = buckets.get(scope, entry.bucket)
            self._apply_events(scope, events)
        return Hold(agent, amount, tuple(scopes))

    def settle(self, hold: Hold, actual: int, now: datetime) -> None:
        """Record ``actual`` against every budget the hold reserved on."""
        for scope in hold.scopes:
            entry = self._scopes.get(scope)
            if entry is None:  # the budget was removed meanwhile
                continue
            entry.state, events = b.settle(entry.state, hold.amount, actual, now)
            self._pending.dirty.add(scope)
            self._apply_events(scope, events)

    def release(self, hold: Hold) -> None:
        """Give a hold back (the task failed before spending)."""
        for scope in hold.scopes:
            entry = self._scopes.get(scope)
            if entry is not None:
                entry.state, _ = b.release(entry.state, hold.amount)

    def drain(self) -> tuple[list[Event], list[tuple[str, b.BudgetState, b.TokenBucket]]]:
        """Take the audit events and the changed budgets to persist now."""
        pending, self._pending = self._pending, Pending()
        rows = [(s, self._scopes[s].state, self._scopes[s].bucket)
                for s in sorted(pending.dirty) if s in self._scopes]
        return pending.events, rows

    def status_of(self, scope: str, now: datetime) -> dict[str, Any]:
        """One budget's status; NotFound names the scope."""
        return _status(scope, self._get(scope), now)

    def status(self, now: datetime) -> list[dict[str, Any]]:
        return [_status(scope, entry, now) for scope, entry in sorted(self._scopes.items())]

    # -- internals -------------------------------------------------------------------
    def _get(self, scope: str) -> Scope:
        entry = self._scopes.get(scope)
        if entry is None:
            what = "global budget" if scope == GLOBAL else f"budget for agent {scope!r}"
            raise NotFound(f"no {what} is set (see naosctl cost status)")
        return entry

    def _take_tokens(
        self, staged: list[tuple[str, b.BudgetState, list[b.BudgetEvent]]]
    ) -> dict[str, b.TokenBucket]:
        buckets: dict[str, b.TokenBucket] = {}
        for scope, _, events in staged:
            if not any(isinstance(e, b.Throttle) for e in events):
                continue
            bucket, allowed, wait = self._scopes[scope].bucket.take(self._mono())
            if not allowed:
                self._scopes[scope].bucket = bucket
                who = "the global budget" if scope == GLOBAL else f"agent {scope!r}'s budget"
                raise Throttled(f"throttled: {who} is over its limit; retry in {wait:.2f}s "
                                "(or raise the budget, or naosctl cost reset)")
            buckets[scope] = bucket
        return buckets

    def _apply_events(self, scope: str, events: list[b.BudgetEvent]) -> None:
        for event in events:
            self._pending.dirty.add(scope)
            match event:
                case b.AlertLevel():
                    log.warning("budget %s reached %d%% of its limit (%s spent of %s)",
                                scope, event.percent, b.format_usd(event.spent_micro),
                                b.format_usd(event.limit_micro))
                    self._emit(scope, "cost.alert", percent=event.percent,
                               spent_micro=event.spent_micro, limit_micro=event.limit_micro,
                               committed_micro=event.committed_micro)
                case b.Paused():
                    log.warning("budget %s paused: %s", scope, event.reason)
                    self._emit(scope, "cost.paused", spent_micro=event.spent_micro,
                               limit_micro=event.limit_micro, reason=event.reason,
                               since=event.since.isoformat())
                case b.Throttle(first=True):
                    self._note_throttle(scope, event)
                case b.PeriodRolled():
                    self._emit(scope, "cost.period", reason=event.reason,
                               previous_start=event.previous_start.isoformat(),
                               period_start=event.period_start.isoformat(),
                               spent_micro=event.spent_micro)

    def _note_throttle(self, scope: str, event: b.Throttle) -> None:
        entry = self._scopes[scope]  # audited once per period: the first Throttle
        log.warning("budget %s over its limit: throttling", scope)
        since = entry.state.throttled_since
        self._emit(scope, "cost.throttled", committed_micro=event.committed_micro,
                   limit_micro=event.limit_micro, rate_per_s=entry.bucket.rate_per_s,
                   burst=entry.bucket.burst, since=since.isoformat() if since else None)

    def _emit(self, scope: str, type_: str, **detail: Any) -> None:
        agent = None if scope == GLOBAL else scope
        self._pending.events.append(Event(type_, agent, {"scope": scope, **detail}))


def _status(scope: str, entry: Scope, now: datetime) -> dict[str, Any]:
    state = entry.state
    if now.astimezone(UTC) >= state.period_end:  # shown as the new period would start
        state = b.initial(state.policy, now)
        state = replace(state, reserved_micro=entry.state.reserved_micro)
    policy = state.policy
    limit = policy.limit_micro
    throttled = policy.action is b.Action.THROTTLE and (
        state.throttled_since is not None or state.committed_micro > limit)
    since = state.paused_since if state.paused else state.throttled_since if throttled \
        else None
    return {
        "scope": scope, "limit_micro": limit, "period": policy.period.value,
        "spent_micro": state.spent_micro, "reserved_micro": state.reserved_micro,
        "remaining_micro": state.remaining_micro,
        "percent": round(100 * state.spent_micro / limit, 2) if limit else None,
        "alert_at": list(policy.alert_at), "alerted": sorted(state.alerted),
        "action": policy.action.value, "paused": state.paused, "throttled": throttled,
        "state": "paused" if state.paused else "throttled" if throttled
        else "alerting" if state.alerted else "ok",
        "since": since.isoformat() if since else None,
        "reason": state.pause_reason if state.paused
        else "over its limit: tasks run at the throttle rate" if throttled else None,
        "throttle_rate": entry.bucket.rate_per_s, "throttle_burst": entry.bucket.burst,
        "period_start": state.period_start.isoformat(),
        "period_end": state.period_end.isoformat(),
    }


def _whose(scope: str) -> str:
    return "global:" if scope == GLOBAL else f"agent {scope!r}:"
