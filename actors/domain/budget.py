"""Budgets as pure values: periods, reservations, alerts, pause (stdlib + naosd.errors only).

A cost controller keeps one :class:`BudgetState` per agent and one global one.
Before a task runs, the shell calls :func:`reserve` with an estimate on every
budget that applies (the agent's and the global one) and keeps the new states
only if none raised; after the task it calls :func:`settle` with the actual
cost, or :func:`release` if the task failed before spending anything. Every
operation returns ``(new_state, events)``; the shell performs the events
(notify, pause the agent, throttle). Nothing here reads a clock: ``now`` is an
aware ``datetime`` for the calendar periods and a float of seconds for the
:class:`TokenBucket`.

Money is always an integer number of micro-dollars (1 USD = 1_000_000), never
a float.

Guarantee (action ``pause``): reservations are refused once
``spent + reserved + amount`` would pass the limit, so as long as every settled
actual is at most its reservation, ``spent`` never exceeds the limit however
reservations and settlements interleave. Decisions to review:

- In-flight reservations survive a period rollover and an operator
  :func:`reset`: their actual cost is settled into the new period, so dropping
  them would let that period overspend.
- Alert levels are crossed by ``spent`` (in :func:`settle`). Under action
  ``alert``, a reservation that takes ``spent + reserved`` past the limit also
  fires every level not yet fired this period (with ``committed_micro`` showing
  the projection). Each level fires at most once per period.
- A pausing budget becomes *paused* (``Paused``, with the time and the reason)
  when ``spent`` goes strictly over the limit, or when it refuses a task that
  does not fit in what is left of the limit after what was spent (``spent +
  amount > limit``). From then on it refuses every task until the period rolls
  over or the operator resets it, and its status says so. A refusal caused only
  by in-flight reservations does not pause (they may be released), nor does a
  task larger than the whole limit (it could never run; smaller ones still can).
- A throttling budget is *throttled* from the first reservation of the period
  that goes past the limit (``Throttle.first``) until rollover or reset.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, TypeAlias, TypeVar

from naosd.errors import BudgetExceeded, Conflict, InvalidRequest

MICRO_PER_USD: Final = 1_000_000
DEFAULT_ALERTS: Final = (50, 80, 100)

_AMOUNT: Final = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_BUDGET_RE: Final = re.compile(
    rf"\s*(?:\$\s*(?P<dollars>{_AMOUNT})|(?P<usd>{_AMOUNT})\s*usd)\s*/\s*(?P<period>\w+)\s*",
    re.IGNORECASE,
)


class Period(enum.StrEnum):
    DAY = "day"  # from 00:00 UTC
    WEEK = "week"  # from Monday 00:00 UTC
    MONTH = "month"  # from the 1st, 00:00 UTC


class Action(enum.StrEnum):
    ALERT = "alert"  # over the limit: allow, fire the alert levels
    THROTTLE = "throttle"  # over the limit: allow, emit Throttle (the shell slows down)
    PAUSE = "pause"  # over the limit: refuse; an overshoot on settle pauses the agent


_E = TypeVar("_E", bound=enum.StrEnum)


def _coerce(kind: type[_E], value: object, what: str) -> _E:
    try:
        return kind(str(value).lower())
    except ValueError:
        options = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"invalid {what} {value!r}: use one of {options}") from None


def _check_micro(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{what} must be a whole number of micro-dollars >= 0, got {value!r}")
    return value


def format_usd(micro: int) -> str:
    """``1_500_000`` -> ``"$1.50"``; sub-cent amounts keep their digits (``"$0.000123"``)."""
    sign, micro = ("-", -micro) if micro < 0 else ("", micro)
    dollars, frac = divmod(micro, MICRO_PER_USD)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars:,}.{digits}"


# -- periods --------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidRequest(f"now must be a timezone-aware datetime, got naive {now!r}")
    return now.astimezone(UTC)


def period_start(period: Period, now: datetime) -> datetime:
    """The UTC start of the period that contains ``now`` (which must be timezone-aware)."""
    day = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    match period:
        case Period.DAY:
            return day
        case Period.WEEK:
            return day - timedelta(days=day.weekday())
        case _:  # Period.MONTH
            return day.replace(day=1)


def next_reset(period: Period, now: datetime) -> datetime:
    """The UTC start of the period after the one that contains ``now``."""
    start = period_start(period, now)
    match period:
        case Period.DAY:
            return start + timedelta(days=1)
        case Period.WEEK:
            return start + timedelta(weeks=1)
        case _:  # Period.MONTH
            return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def parse_budget(text: str) -> tuple[int, Period]:
    """``"$10/day"``, ``"10 USD/week"``, ``"$0.50/month"``, ``"$1,000/day"`` -> (micro, period).

    Raises:
        InvalidRequest: anything else, or an amount finer than a micro-dollar.
    """
    found = _BUDGET_RE.fullmatch(text)
    if found is None:
        raise InvalidRequest(
            f"invalid budget {text!r}: write an amount in dollars per period, "
            'e.g. "$10/day", "10 USD/week", "$0.50/month" or "$1,000/day"'
        )
    try:
        period = Period(found["period"].lower())
    except ValueError:
        raise InvalidRequest(
            f"invalid budget {text!r}: unknown period {found['period']!r}, use day, week or month"
        ) from None
    amount = Decimal((found["dollars"] or found["usd"]).replace(",", "")) * MICRO_PER_USD
    if amount != amount.to_integral_value():
        raise InvalidRequest(f"invalid budget {text!r}: amounts stop at 6 decimals (micro-dollars)")
    return int(amount), period


# -- policy and state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A limit per period, the alert levels (percent of the limit) and the over-limit action.

    ``alert_at`` is normalised to sorted unique percents in 1..100; action
    ``alert`` needs at least one level.
    """

    limit_micro: int
    period: Period
    alert_at: tuple[int, ...] = DEFAULT_ALERTS
    action: Action = Action.PAUSE

    def __post_init__(self) -> None:
        _check_micro(self.limit_micro, "limit_micro")
        object.__setattr__(self, "period", _coerce(Period, self.period, "budget period"))
        object.__setattr__(self, "action", _coerce(Action, self.action, "budget action"))
        object.__setattr__(self, "alert_at", _check_levels(self.alert_at))
        if self.action is Action.ALERT and not self.alert_at:
            raise InvalidRequest("budget action alert needs at least one alert_at level")


def _check_levels(levels: Iterable[object]) -> tuple[int, ...]:
    checked: set[int] = set()
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 100:
            raise InvalidRequest(f"alert levels are whole percents from 1 to 100, got {level!r}")
        checked.add(level)
    return tuple(sorted(checked))


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's ledger for the current period."""

    policy: BudgetPolicy
    period_start: datetime
    spent_micro: int = 0
    reserved_micro: int = 0
    alerted: frozenset[int] = field(default_factory=frozenset)
    paused_since: datetime | None = None  # set: every reservation is refused
    pause_reason: str = ""
    throttled_since: datetime | None = None  # the first reservation past a throttle limit

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    @property
    def period_end(self) -> datetime:
        return next_reset(self.policy.period, self.period_start)

    @property
    def committed_micro(self) -> int:
        return self.spent_micro + self.reserved_micro

    @property
    def remaining_micro(self) -> int:
        """What can still be reserved before the limit (0 when at or over it)."""
        return max(0, self.policy.limit_micro - self.committed_micro)


def initial(policy: BudgetPolicy, now: datetime) -> BudgetState:
    """A fresh ledger for the period containing ``now``."""
    return BudgetState(policy, period_start(policy.period, now))


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertLevel:
    """``percent`` of the limit was reached: by ``spent_micro`` (settle) or, under action
    alert, by ``committed_micro`` = spent + reserved including the new reservation."""

    percent: int
    spent_micro: int
    limit_micro: int
    committed_micro: int


@dataclass(frozen=True, slots=True)
class Paused:
    """A pausing budget ran out (overspent, or refused a task that no longer fits):
    every task is refused until reset/rollover."""

    spent_micro: int
    limit_micro: int
    since: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Throttle:
    """A throttling budget allowed a reservation past its limit: slow the agent down.
    ``first``: the first one this period (the budget became throttled)."""

    committed_micro: int
    limit_micro: int
    first: bool = False


@dataclass(frozen=True, slots=True)
class PeriodRolled:
    """A new period began (``reason`` "elapsed") or the operator reset it ("reset")."""

    previous_start: datetime
    period_start: datetime
    spent_micro: int  # what the closed period spent
    reason: str


BudgetEvent: TypeAlias = AlertLevel | Paused | Throttle | PeriodRolled
Outcome: TypeAlias = tuple[BudgetState, list[BudgetEvent]]


# -- operations -----------------------------------------------------------------------


def reserve(state: BudgetState, amount: int, now: datetime) -> Outcome:
    """Hold ``amount`` (an estimate) before executing; roll the period over first if due.

    Raises:
        BudgetExceeded: action pause and ``spent + reserved + amount`` would pass the
            limit (its ``outcome`` may pause the budget), or the budget is paused.
        InvalidRequest: ``amount`` is not a whole number of micro-dollars >= 0.
    """
    _check_micro(amount, "amount")
    state, events = _roll(state, now)
    policy = state.policy
    committed = state.committed_micro + amount
    if state.paused_since is not None:
        raise BudgetExceeded(
            f"budget paused since {state.paused_since.isoformat()} ({state.pause_reason}); "
            f"wait for {state.period_end.isoformat()} or reset it"
        )  # a rollover above would have lifted the pause: nothing changed
    if committed <= policy.limit_micro:
        return replace(state, reserved_micro=state.reserved_micro + amount), events
    match policy.action:
        case Action.PAUSE:
            message = (
                f"budget exceeded: reserving {format_usd(amount)} would commit "
                f"{format_usd(committed)} of the {_limit_text(policy)} limit "
                f"({format_usd(state.spent_micro)} spent, "
                f"{format_usd(state.reserved_micro)} reserved)"
            )
            raise BudgetExceeded(message, _refused(state, events, amount, now))
        case Action.THROTTLE:
            first = state.throttled_since is None
            state = replace(state, reserved_micro=state.reserved_micro + amount,
                            throttled_since=state.throttled_since or _utc(now))
            events.append(Throttle(committed, policy.limit_micro, first))
            return state, events
        case _:  # Action.ALERT
            state = replace(state, reserved_micro=state.reserved_micro + amount)
            return _alert(state, events, committed)


def grantable(state: BudgetState, want: int, floor: int, now: datetime) -> int:
    """How much of ``want`` a reservation may hold now.

    All of it, unless a pausing budget has less than ``want`` left: then what
    is left, as long as that is at least ``floor`` (a call shrinks to fit the
    end of a budget instead of being refused while 5 % of it is unspent).
    When even ``floor`` does not fit (or the budget is paused) it answers
    ``want`` and lets :func:`reserve` refuse, and pause, as for any task.

    Raises:
        InvalidRequest: an amount is not a whole number of micro-dollars >= 0.
    """
    _check_micro(want, "amount")
    _check_micro(floor, "floor")
    state, _ = _roll(state, now)
    if state.paused or state.policy.action is not Action.PAUSE:
        return want
    left = max(state.policy.limit_micro - state.committed_micro, 0)
    if left >= want or left < max(floor, 1):
        return want
    return left


def _refused(state: BudgetState, events: list[BudgetEvent], amount: int, now: datetime
             ) -> Outcome:
    """A pausing budget refused ``amount``: pause it if the task no longer fits in
    what spending left (not if in-flight reservations alone were in the way, nor
    if the task is larger than the whole limit)."""
    limit = state.policy.limit_micro
    if amount > limit or state.spent_micro + amount <= limit:
        return state, events
    reason = (f"limit reached: {format_usd(state.spent_micro)} spent of the "
              f"{_limit_text(state.policy)} limit, a task needing {format_usd(amount)} "
              "was refused")
    return _pause(state, events, now, reason)


def _pause(state: BudgetState, events: list[BudgetEvent], now: datetime, reason: str
           ) -> Outcome:
    since = _utc(now)
    events.append(Paused(state.spent_micro, state.policy.limit_micro, since, reason))
    return replace(state, paused_since=since, pause_reason=reason), events


def settle(state: BudgetState, reserved: int, actual: int, now: datetime) -> Outcome:
    """Release a reservation of ``reserved`` and record the ``actual`` cost (it may be more).

    Raises:
        Conflict: ``reserved`` is more than this budget holds in reservations.
        InvalidRequest: an amount is not a whole number of micro-dollars >= 0.
    """
    _check_micro(actual, "actual")
    state, events = _roll(release(state, reserved)[0], now)
    state = replace(state, spent_micro=state.spent_micro + actual)
    state, events = _alert(state, events, state.spent_micro)
    limit = state.policy.limit_micro
    if state.policy.action is Action.PAUSE and state.spent_micro > limit and not state.paused:
        reason = (f"overspent: {format_usd(state.spent_micro)} spent of the "
                  f"{_limit_text(state.policy)} limit")
        return _pause(state, events, now, reason)
    return state, events


def release(state: BudgetState, reserved: int) -> Outcome:
    """Give back a reservation that will not be spent (the task failed before spending).

    Raises:
        Conflict: ``reserved`` is more than this budget holds in reservations.
        InvalidRequest: ``reserved`` is not a whole number of micro-dollars >= 0.
    """
    _check_micro(reserved, "reserved")
    if reserved > state.reserved_micro:
        raise Conflict(
            f"cannot release {format_usd(reserved)}: only "
            f"{format_usd(state.reserved_micro)} is reserved"
        )
    return replace(state, reserved_micro=state.reserved_micro - reserved), []


def reset(state: BudgetState, now: datetime) -> Outcome:
    """Operator reset: a new period from the start of ``now``'s; reservations are kept."""
    return _restart(state, now, "reset")


def _roll(state: BudgetState, now: datetime) -> Outcome:
    if _utc(now) < state.period_end:
        return state, []
    return _restart(state, now, "elapsed")


def _restart(state: BudgetState, now: datetime, reason: str) -> Outcome:
    start = period_start(state.policy.period, now)
    rolled = PeriodRolled(state.period_start, start, state.spent_micro, reason)
    # reserved_micro is kept on purpose: those tasks settle into the new period.
    fresh = BudgetState(state.policy, start, reserved_micro=state.reserved_micro)
    return fresh, [rolled]


def _alert(state: BudgetState, events: list[BudgetEvent], amount: int) -> Outcome:
    """Fire every level ``amount`` reaches that has not fired this period."""
    limit = state.policy.limit_micro
    crossed = [
        level
        for level in state.policy.alert_at
        if level not in state.alerted and amount > 0 and amount * 100 >= level * limit
    ]
    events.extend(AlertLevel(lv, state.spent_micro, limit, state.committed_micro) for lv in crossed)
    return replace(state, alerted=state.alerted | set(crossed)), events


def _limit_text(policy: BudgetPolicy) -> str:
    return f"{format_usd(policy.limit_micro)}/{policy.period}"


# -- rate limiting --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; each allowed call takes one.

    ``now`` is a monotonic float of seconds; a new bucket starts full.
    """

    rate_per_s: float
    burst: int
    tokens: float | None = None  # None: full (never used)
    updated_at: float | None = None

    def __post_init__(self) -> None:
        _check_bucket(self.rate_per_s, self.burst)

    def take(self, now: float) -> tuple[TokenBucket, bool, float]:
        """Take one token: (new bucket, allowed, seconds to wait before one is available)."""
        tokens = self._level(now)
        updated = now if self.updated_at is None else max(now, self.updated_at)
        if tokens >= 1:
            return replace(self, tokens=tokens - 1, updated_at=updated), True, 0.0
        wait = (1 - tokens) / self.rate_per_s
        return replace(self, tokens=tokens, updated_at=updated), False, wait

    def _level(self, now: float) -> float:
        if self.tokens is None or self.updated_at is None:
            return float(self.burst)
        elapsed = max(0.0, now - self.updated_at)  # a clock going back refills nothing
        return min(float(self.burst), self.tokens + elapsed * self.rate_per_s)


def _check_bucket(rate: object, burst: object) -> None:
    if not _positive_finite(rate):
        raise InvalidRequest(f"rate_per_s must be a finite number > 0, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise InvalidRequest(f"burst must be a whole number >= 1, got {burst!r}")


def _positive_finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0
