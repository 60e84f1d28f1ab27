"""Budgets as pure values (actors/domain/budget.py).

The hypothesis test at the end is the "no overspend under concurrency"
guarantee: any interleaving of reserve/settle/release/reset and clock ticks,
with every actual at most its reservation, keeps spent within the limit.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain import budget as bd
from actors.domain.budget import (
    Action,
    AlertLevel,
    BudgetExceeded,
    BudgetPolicy,
    BudgetState,
    Paused,
    Period,
    PeriodRolled,
    Throttle,
    TokenBucket,
)
from naosd.errors import Conflict, InvalidRequest, from_wire

USD = bd.MICRO_PER_USD
T0 = datetime(2024, 5, 15, 13, 45, tzinfo=UTC)  # a Wednesday


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def fresh(limit_usd: int = 10, action: Action = Action.PAUSE, **kw: Any) -> BudgetState:
    policy = BudgetPolicy(limit_usd * USD, Period.DAY, action=action, **kw)
    return bd.initial(policy, T0)


# -- money and periods ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        pytest.param(0, "$0.00", id="zero"),
        pytest.param(1_500_000, "$1.50", id="cents"),
        pytest.param(123, "$0.000123", id="sub-cent"),
        pytest.param(1_000 * USD, "$1,000.00", id="thousands"),
        pytest.param(-2_500_000, "-$2.50", id="negative"),
    ],
)
def test_format_usd(micro: int, text: str) -> None:
    assert bd.format_usd(micro) == text


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        pytest.param(Period.DAY, T0, utc(2024, 5, 15), utc(2024, 5, 16), id="day"),
        pytest.param(
            Period.DAY, utc(2024, 12, 31, 23, 59), utc(2024, 12, 31), utc(2025, 1, 1), id="day-nye"
        ),
        pytest.param(
            Period.WEEK,
            utc(2024, 6, 9, 23, 59, 59),  # Sunday
            utc(2024, 6, 3),
            utc(2024, 6, 10),
            id="week-sunday-2359",
        ),
        pytest.param(
            Period.WEEK, utc(2024, 6, 10), utc(2024, 6, 10), utc(2024, 6, 17), id="monday"
        ),
        pytest.param(
            Period.MONTH,
            utc(2028, 2, 29, 23, 59),
            utc(2028, 2, 1),
            utc(2028, 3, 1),
            id="feb-29-2028",
        ),
        pytest.param(
            Period.MONTH, utc(2027, 2, 28, 12), utc(2027, 2, 1), utc(2027, 3, 1), id="feb-2027"
        ),
        pytest.param(
            Period.MONTH,
            utc(2027, 12, 31, 23, 59),
            utc(2027, 12, 1),
            utc(2028, 1, 1),
            id="december",
        ),
        pytest.param(Period.MONTH, utc(2024, 1, 1), utc(2024, 1, 1), utc(2024, 2, 1), id="first"),
        pytest.param(
            Period.WEEK,
            datetime(2024, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2))),  # Sun 23:00 UTC
            utc(2024, 6, 3),
            utc(2024, 6, 10),
            id="week-in-utc-not-local",
        ),
    ],
)
def test_period_boundaries(period: Period, now: datetime, start: datetime, reset: datetime) -> None:
    assert bd.period_start(period, now) == start
    assert bd.next_reset(period, now) == reset
    assert bd.period_start(period, start) == start  # a boundary starts its own period


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        bd.period_start(Period.DAY, datetime(2024, 1, 1))


def test_sunday_2359_rolls_over_to_monday() -> None:
    sunday = utc(2024, 6, 9, 23, 59)
    state = bd.initial(BudgetPolicy(5 * USD, Period.WEEK), sunday)
    state, _ = bd.reserve(state, 4 * USD, sunday)
    state, _ = bd.settle(state, 4 * USD, 4 * USD, sunday)
    with pytest.raises(BudgetExceeded):
        bd.reserve(state, 2 * USD, sunday + timedelta(seconds=59))
    state, events = bd.reserve(state, 2 * USD, utc(2024, 6, 10))
    assert events == [PeriodRolled(utc(2024, 6, 3), utc(2024, 6, 10), 4 * USD, "elapsed")]
    assert (state.period_start, state.spent_micro, state.reserved_micro) == (
        utc(2024, 6, 10),
        0,
        2 * USD,
    )
    assert state.period_end == utc(2024, 6, 17)


# -- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("$10/day", (10 * USD, Period.DAY), id="dollars"),
        pytest.param("10 USD/week", (10 * USD, Period.WEEK), id="usd"),
        pytest.param("$0.50/month", (500_000, Period.MONTH), id="cents"),
        pytest.param("$1,000/day", (1_000 * USD, Period.DAY), id="thousands"),
        pytest.param("$1,234,567.25/day", (1_234_567_250_000, Period.DAY), id="millions"),
        pytest.param("  $ 3 / Day ", (3 * USD, Period.DAY), id="spaces-case"),
        pytest.param("7usd/month", (7 * USD, Period.MONTH), id="usd-lowercase"),
        pytest.param("$0.000001/day", (1, Period.DAY), id="one-micro"),
        pytest.param("$0/day", (0, Period.DAY), id="zero"),
    ],
)
def test_parse_budget(text: str, expected: tuple[int, Period]) -> None:
    assert bd.parse_budget(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("10/day", "invalid budget", id="no-currency"),
        pytest.param("$10", "invalid budget", id="no-period"),
        pytest.param("$10/year", "unknown period 'year', use day", id="bad-period"),
        pytest.param("€10/day", "invalid budget", id="euro"),
        pytest.param("$-5/day", "invalid budget", id="negative"),
        pytest.param("$1,00/day", "invalid budget", id="bad-grouping"),
        pytest.param("$10 USD/day", "invalid budget", id="both"),
        pytest.param("$.5/day", "invalid budget", id="no-leading-digit"),
        pytest.param("$0.0000001/day", "6 decimals", id="sub-micro"),
        pytest.param("", "invalid budget", id="empty"),
    ],
)
def test_parse_budget_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        bd.parse_budget(text)


# -- policy ---------------------------------------------------------------------------


def test_policy_coerces_and_normalises() -> None:
    policy = BudgetPolicy(5, "week", [80, 50, 80], "throttle")  # type: ignore[arg-type]
    assert (policy.period, policy.alert_at, policy.action) == (
        Period.WEEK,
        (50, 80),
        Action.THROTTLE,
    )
    assert BudgetPolicy(5, Period.DAY).alert_at == (50, 80, 100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"limit_micro": -1}, "limit_micro must be", id="negative-limit"),
        pytest.param({"limit_micro": 1.5}, "limit_micro must be", id="float-limit"),
        pytest.param({"limit_micro": True}, "limit_micro must be", id="bool-limit"),
        pytest.param({"period": "year"}, "invalid budget period", id="period"),
        pytest.param({"action": "explode"}, "invalid budget action", id="action"),
        pytest.param({"alert_at": (0,)}, "whole percents from 1 to 100", id="zero-level"),
        pytest.param({"alert_at": (101,)}, "whole percents", id="over-100"),
        pytest.param({"alert_at": (50.0,)}, "whole percents", id="float-level"),
        pytest.param({"alert_at": (), "action": "alert"}, "at least one", id="alert-no-level"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"limit_micro": USD, "period": Period.DAY} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        BudgetPolicy(**args)


# -- reserve --------------------------------------------------------------------------


def test_reserve_up_to_the_limit_then_refuse_under_pause() -> None:
    state, events = bd.reserve(fresh(), 6 * USD, T0)
    state, more = bd.reserve(state, 4 * USD, T0)  # exactly at the limit: allowed
    assert events == more == []
    assert (state.reserved_micro, state.remaining_micro, state.committed_micro) == (
        10 * USD,
        0,
        10 * USD,
    )
    with pytest.raises(BudgetExceeded) as err:
        bd.reserve(state, 1, T0)
    assert str(err.value) == (
        "budget exceeded: reserving $0.000001 would commit $10.000001 of the $10.00/day limit "
        "($0.00 spent, $10.00 reserved)"
    )
    assert bd.reserve(state, 0, T0)[0] == state  # a free task still fits


def test_throttle_allows_past_the_limit_and_emits_throttle_each_time() -> None:
    state, _ = bd.reserve(fresh(action=Action.THROTTLE), 9 * USD, T0)
    assert state.throttled_since is None
    state, events = bd.reserve(state, 2 * USD, T0)
    assert events == [Throttle(11 * USD, 10 * USD, first=True)]
    assert state.throttled_since == T0  # throttled from the first one past the limit
    state, events = bd.reserve(state, 1 * USD, T0 + timedelta(hours=1))
    assert events == [Throttle(12 * USD, 10 * USD)]
    assert state.reserved_micro == 12 * USD and state.remaining_micro == 0
    assert state.throttled_since == T0
    assert bd.reset(state, T0 + timedelta(hours=2))[0].throttled_since is None


def test_alert_allows_past_the_limit_and_fires_each_level_once() -> None:
    state, _ = bd.settle(
        *bd.reserve(fresh(action=Action.ALERT), 6 * USD, T0)[:1], 6 * USD, 6 * USD, T0
    )
    assert state.alerted == {50}
    state, events = bd.reserve(state, 5 * USD, T0)
    assert events == [
        AlertLevel(80, 6 * USD, 10 * USD, 11 * USD),
        AlertLevel(100, 6 * USD, 10 * USD, 11 * USD),
    ]
    state, events = bd.reserve(state, 5 * USD, T0)
    assert events == [] and state.reserved_micro == 10 * USD
    state, events = bd.settle(state, 10 * USD, 10 * USD, T0)
    assert events == [] and not state.paused  # every level already fired; alert never pauses


@pytest.mark.parametrize(
    "amount",
    [pytest.param(-1, id="negative"), pytest.param(0.5, id="float"), pytest.param(True, id="bool")],
)
def test_amounts_must_be_whole_micro_dollars(amount: Any) -> None:
    with pytest.raises(InvalidRequest, match="whole number of micro-dollars"):
        bd.reserve(fresh(), amount, T0)
    with pytest.raises(InvalidRequest, match="whole number of micro-dollars"):
        bd.settle(fresh(), 0, amount, T0)
    with pytest.raises(InvalidRequest, match="whole number of micro-dollars"):
        bd.release(fresh(), amount)


# -- settle, release, reset -----------------------------------------------------------


def test_settle_records_overshoot_alerts_once_and_pauses() -> None:
    state, _ = bd.reserve(fresh(), 4 * USD, T0)
    state, events = bd.settle(state, 4 * USD, 5 * USD, T0)  # costs more than reserved
    assert events == [AlertLevel(50, 5 * USD, 10 * USD, 5 * USD)]
    state, _ = bd.reserve(state, 3 * USD, T0)
    state, events = bd.settle(state, 3 * USD, 7 * USD, T0)
    assert events == [
        AlertLevel(80, 12 * USD, 10 * USD, 12 * USD),
        AlertLevel(100, 12 * USD, 10 * USD, 12 * USD),
        Paused(12 * USD, 10 * USD, T0, "overspent: $12.00 spent of the $10.00/day limit"),
    ]
    assert state.paused and state.spent_micro == 12 * USD and state.reserved_micro == 0
    assert (state.paused_since, state.pause_reason) == (
        T0, "overspent: $12.00 spent of the $10.00/day limit")
    with pytest.raises(BudgetExceeded, match=r"budget paused since 2024-05-15T13:45:00\+00:00 "
                       r"\(overspent: \$12.00 spent of the \$10.00/day limit\)") as err:
        bd.reserve(state, 0, T0)
    assert err.value.outcome is None  # nothing changed
    state, events = bd.settle(state, 0, 1, T0)  # a late settle while paused: no repeat
    assert events == [] and state.spent_micro == 12 * USD + 1


def test_a_task_that_no_longer_fits_pauses_the_budget() -> None:
    state, _ = bd.settle(*bd.reserve(fresh(alert_at=()), 9_500_000, T0)[:1], 9_500_000,
                         9_500_000, T0)  # 95 % spent, nothing reserved
    later = T0 + timedelta(minutes=5)
    with pytest.raises(BudgetExceeded, match="budget exceeded") as err:
        bd.reserve(state, USD, later)
    assert err.value.outcome is not None
    paused, events = err.value.outcome
    reason = "limit reached: $9.50 spent of the $10.00/day limit, a task needing $1.00 was refused"
    assert events == [Paused(9_500_000, 10 * USD, later, reason)]
    assert (paused.paused, paused.paused_since, paused.pause_reason) == (True, later, reason)
    assert paused.reserved_micro == 0 and paused.spent_micro == 9_500_000
    with pytest.raises(BudgetExceeded, match="budget paused since") as again:
        bd.reserve(paused, 1, later)  # a small task no longer runs either
    assert again.value.outcome is None
    assert not bd.reset(paused, later)[0].paused


def test_a_refusal_for_in_flight_reservations_does_not_pause() -> None:
    state, _ = bd.reserve(fresh(), 8 * USD, T0)  # in flight: may still be released
    with pytest.raises(BudgetExceeded) as err:
        bd.reserve(state, 3 * USD, T0)
    assert err.value.outcome == (state, [])


def test_a_task_larger_than_the_whole_limit_does_not_pause() -> None:
    with pytest.raises(BudgetExceeded) as err:
        bd.reserve(fresh(), 11 * USD, T0)
    assert err.value.outcome == (fresh(), [])


def test_a_refusal_after_a_rollover_keeps_the_new_period() -> None:
    state, _ = bd.reserve(fresh(), 6 * USD, T0)
    tomorrow = T0 + timedelta(days=1)
    with pytest.raises(BudgetExceeded) as err:
        bd.reserve(state, 5 * USD, tomorrow)  # the in-flight 6 counts in the new period
    assert err.value.outcome is not None
    rolled, events = err.value.outcome
    assert rolled.period_start == utc(2024, 5, 16) and [type(e) for e in events] == [PeriodRolled]


def test_spending_exactly_the_limit_does_not_pause() -> None:
    state, _ = bd.reserve(fresh(alert_at=()), 10 * USD, T0)
    state, events = bd.settle(state, 10 * USD, 10 * USD, T0)
    assert events == [] and not state.paused


def test_throttle_never_pauses() -> None:
    state, _ = bd.reserve(fresh(action=Action.THROTTLE, alert_at=(100,)), USD, T0)
    state, events = bd.settle(state, USD, 20 * USD, T0)
    assert events == [AlertLevel(100, 20 * USD, 10 * USD, 20 * USD)] and not state.paused


def test_zero_limit_alerts_only_on_real_spending() -> None:
    state = fresh(0, action=Action.THROTTLE)
    state, events = bd.settle(state, 0, 0, T0)
    assert events == []
    state, events = bd.settle(state, 0, 1, T0)
    assert [e.percent for e in events if isinstance(e, AlertLevel)] == [50, 80, 100]


@pytest.mark.parametrize(
    "give_back",
    [
        pytest.param(lambda s, r: bd.release(s, r), id="release"),
        pytest.param(lambda s, r: bd.settle(s, r, 0, T0), id="settle"),
    ],
)
def test_giving_back_more_than_reserved_is_a_conflict(give_back: Any) -> None:
    state, _ = bd.reserve(fresh(), USD, T0)
    with pytest.raises(Conflict, match=r"cannot release \$1.000001: only \$1.00 is reserved"):
        give_back(state, USD + 1)


def test_release_gives_the_reservation_back() -> None:
    state, _ = bd.reserve(fresh(), 10 * USD, T0)
    state, events = bd.release(state, 10 * USD)
    assert events == [] and state.remaining_micro == 10 * USD


def test_settle_after_a_rollover_lands_in_the_new_period() -> None:
    state, _ = bd.reserve(fresh(), 3 * USD, T0)
    tomorrow = T0 + timedelta(days=1)
    state, events = bd.settle(state, 3 * USD, 2 * USD, tomorrow)
    assert events == [PeriodRolled(utc(2024, 5, 15), utc(2024, 5, 16), 0, "elapsed")]
    assert (state.spent_micro, state.reserved_micro) == (2 * USD, 0)


def test_rollover_and_reset_keep_in_flight_reservations() -> None:
    state, _ = bd.reserve(fresh(), 6 * USD, T0)
    state, _ = bd.settle(*bd.reserve(state, 4 * USD, T0)[:1], 4 * USD, 11 * USD, T0)
    assert state.paused and state.reserved_micro == 6 * USD
    later = T0 + timedelta(days=3)
    reset, events = bd.reset(state, later)
    assert events == [PeriodRolled(utc(2024, 5, 15), utc(2024, 5, 18), 11 * USD, "reset")]
    assert reset == BudgetState(state.policy, utc(2024, 5, 18), 0, 6 * USD, frozenset(), None)
    rolled, events = bd.reserve(state, 4 * USD, later)
    assert [type(e) for e in events] == [PeriodRolled]
    assert (rolled.spent_micro, rolled.reserved_micro, rolled.alerted, rolled.paused) == (
        0,
        10 * USD,
        frozenset(),
        False,
    )
    with pytest.raises(BudgetExceeded):  # the in-flight 6 still counts in the new period
        bd.reserve(rolled, 1, later)


def test_a_clock_going_back_does_not_roll() -> None:
    state, events = bd.reserve(fresh(), USD, T0 - timedelta(days=2))
    assert events == [] and state.period_start == utc(2024, 5, 15)


def test_budget_exceeded_has_a_wire_code_and_pickles() -> None:
    assert BudgetExceeded.code == "budget_exceeded"
    assert type(from_wire("budget_exceeded", "x")) is BudgetExceeded
    state = bd.reserve(fresh(), USD, T0)[0]
    assert pickle.loads(pickle.dumps(state)) == state


# -- the guarantee --------------------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 4 * USD)),
        st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.integers(0, 3 * 86_400)),
        st.tuples(st.just("reset")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(0, 10 * USD), ops=_OPS)
def test_pause_never_overspends_when_actuals_stay_within_reservations(
    limit: int, ops: list[tuple[Any, ...]]
) -> None:
    state = bd.initial(BudgetPolicy(limit, Period.DAY, action=Action.PAUSE), T0)
    now, holds = T0, list[int]()
    for op in ops:
        match op:
            case ("reserve", amount):
                try:
                    state, _ = bd.reserve(state, amount, now)
                    holds.append(amount)
                except BudgetExceeded as exc:
                    state = exc.outcome[0] if exc.outcome is not None else state
            case ("settle", index, share) if holds:
                held = holds.pop(index % len(holds))
                state, _ = bd.settle(state, held, int(held * share), now)
            case ("release", index) if holds:
                state, _ = bd.release(state, holds.pop(index % len(holds)))
            case ("tick", seconds):
                now += timedelta(seconds=seconds)
            case ("reset",):
                state, _ = bd.reset(state, now)
        assert state.spent_micro <= limit
        assert state.committed_micro <= limit
        assert state.reserved_micro == sum(holds)
        if state.paused and now < state.period_end:  # refuses everything until reset
            with pytest.raises(BudgetExceeded):
                bd.reserve(state, 0, now)


# -- token bucket ---------------------------------------------------------------------


def test_token_bucket_burst_then_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    allowed = []
    for _ in range(4):
        bucket, ok, wait = bucket.take(100.0)
        allowed.append((ok, wait))
    assert allowed == [(True, 0.0), (True, 0.0), (True, 0.0), (False, 0.5)]
    bucket, ok, wait = bucket.take(100.25)  # half a token back
    assert (ok, wait) == (False, 0.25)
    bucket, ok, _ = bucket.take(100.5)
    assert ok
    bucket, ok, _ = bucket.take(1_000.0)  # a long idle refills only up to burst
    assert ok and bucket.tokens == 2.0


def test_token_bucket_ignores_a_clock_going_back() -> None:
    bucket, _, _ = TokenBucket(1.0, 1).take(10.0)
    bucket, ok, wait = bucket.take(5.0)
    assert (ok, wait, bucket.updated_at) == (False, 1.0, 10.0)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        pytest.param(0, 1, "rate_per_s", id="zero-rate"),
        pytest.param(-1.0, 1, "rate_per_s", id="negative-rate"),
        pytest.param(float("inf"), 1, "rate_per_s", id="inf-rate"),
        pytest.param(float("nan"), 1, "rate_per_s", id="nan-rate"),
        pytest.param(True, 1, "rate_per_s", id="bool-rate"),
        pytest.param("1", 1, "rate_per_s", id="str-rate"),
        pytest.param(1, 0, "burst", id="zero-burst"),
        pytest.param(1, 1.5, "burst", id="float-burst"),
        pytest.param(1, True, "burst", id="bool-burst"),
    ],
)
def test_token_bucket_validation(rate: Any, burst: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=80),
)
def test_token_bucket_never_exceeds_its_rate(rate: float, burst: int, gaps: list[float]) -> None:
    bucket, now, allowed = TokenBucket(rate, burst), 0.0, 0
    for gap in gaps:
        now += gap
        bucket, ok, wait = bucket.take(now)
        allowed += ok
        assert ok == (wait == 0.0) and wait >= 0
    assert allowed <= burst + rate * now + 1e-6


# -- granting part of a reservation (a call sized to what is left) -------------------


def test_grantable_is_the_whole_want_while_it_fits() -> None:
    assert bd.grantable(fresh(), 4 * USD, 1, T0) == 4 * USD


def test_grantable_shrinks_to_what_is_left_above_the_floor() -> None:
    state, _ = bd.reserve(fresh(), 9 * USD + 500_000, T0)  # $0.50 left
    assert bd.grantable(state, 2 * USD, 100_000, T0) == 500_000
    # below the floor: the whole want, so that reserve refuses it as any task
    assert bd.grantable(state, 2 * USD, 600_000, T0) == 2 * USD


def test_an_exhausted_or_paused_budget_is_left_to_reserve_to_refuse() -> None:
    state, _ = bd.reserve(fresh(), 10 * USD, T0)
    assert bd.grantable(state, 1, 0, T0) == 1
    with pytest.raises(BudgetExceeded):
        bd.reserve(state, bd.grantable(state, 1, 0, T0), T0)
    paused = bd.settle(bd.reserve(fresh(), 1, T0)[0], 1, 11 * USD, T0)[0]
    assert paused.paused
    assert bd.grantable(paused, 1, 0, T0) == 1


@pytest.mark.parametrize("action", [Action.ALERT, Action.THROTTLE])
def test_grantable_never_shrinks_a_budget_that_does_not_pause(action: Action) -> None:
    state, _ = bd.reserve(fresh(action=action), 10 * USD, T0)
    assert bd.grantable(state, 3 * USD, 1, T0) == 3 * USD


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 20 * USD), st.integers(1, 5 * USD), st.integers(0, 5 * USD))
def test_a_granted_hold_never_passes_a_pausing_limit(spent: int, want: int, floor: int) -> None:
    state = bd.initial(BudgetPolicy(10 * USD, Period.DAY), T0)
    state = replace_spent(state, min(spent, 10 * USD))
    granted = bd.grantable(state, want, floor, T0)
    assert granted == want or floor <= granted < want
    if granted < want:  # shrunk: exactly what fits
        assert state.committed_micro + granted <= 10 * USD


def replace_spent(state: BudgetState, spent: int) -> BudgetState:
    from dataclasses import replace

    return replace(state, spent_micro=spent)
