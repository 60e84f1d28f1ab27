"""The cost controller's bookkeeping, driven directly with explicit times (no daemon)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.domain.budget import BudgetExceeded, BudgetPolicy
from naosd.broker.cost import GLOBAL, CostController, Throttled
from naosd.errors import NotFound

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def controller(**budgets: BudgetPolicy) -> tuple[CostController, Clock]:
    clock = Clock()
    cost = CostController(mono=clock)
    for scope, policy in budgets.items():
        cost.set_budget(GLOBAL if scope == "everyone" else scope, policy, NOW,
                        rate=0.5, burst=1)
    cost.drain()
    return cost, clock


def test_a_reservation_holds_on_both_budgets_or_neither():
    cost, _ = controller(ann=BudgetPolicy(100, "day"), everyone=BudgetPolicy(150, "day"))
    hold = cost.reserve("ann", 80, NOW)
    assert hold.scopes == ("ann", GLOBAL)
    with pytest.raises(BudgetExceeded):
        cost.reserve("ann", 30, NOW)  # ann: 80 + 30 > 100
    bob = cost.reserve("bob", 60, NOW)  # only the global budget applies to bob
    with pytest.raises(BudgetExceeded):
        cost.reserve("bob", 20, NOW)  # global: 140 + 20 > 150
    status = {s["scope"]: s for s in cost.status(NOW)}
    assert status["ann"]["reserved_micro"] == 80 and status[GLOBAL]["reserved_micro"] == 140
    cost.settle(hold, 70, NOW)
    cost.release(bob)
    status = {s["scope"]: s for s in cost.status(NOW)}
    assert (status["ann"]["spent_micro"], status["ann"]["reserved_micro"]) == (70, 0)
    assert (status[GLOBAL]["spent_micro"], status[GLOBAL]["reserved_micro"]) == (70, 0)


def test_events_become_audit_rows_once_and_budgets_are_marked_dirty():
    cost, _ = controller(ann=BudgetPolicy(100, "day", (50, 90), "pause"))
    cost.settle(cost.reserve("ann", 60, NOW), 60, NOW)
    cost.settle(cost.reserve("ann", 10, NOW), 10, NOW)
    events, rows = cost.drain()
    assert [(e.type, e.detail["percent"]) for e in events] == [("cost.alert", 50)]
    assert [scope for scope, _, _ in rows] == ["ann"]
    assert cost.drain() == ([], [])


def test_the_period_rolls_over_at_the_utc_boundary():
    cost, _ = controller(ann=BudgetPolicy(100, "day", (50,), "pause"))
    cost.settle(cost.reserve("ann", 100, NOW), 100, NOW)
    with pytest.raises(BudgetExceeded):
        cost.reserve("ann", 1, NOW)
    cost.drain()
    tomorrow = NOW.replace(hour=0) + timedelta(days=1)
    hold = cost.reserve("ann", 1, tomorrow)
    cost.settle(hold, 1, tomorrow)
    events, _ = cost.drain()
    assert [e.type for e in events] == ["cost.period"]
    assert events[0].detail["reason"] == "elapsed" and events[0].detail["spent_micro"] == 100
    assert cost.status_of("ann", tomorrow)["spent_micro"] == 1


def test_throttle_takes_tokens_from_the_bucket():
    cost, clock = controller(ann=BudgetPolicy(10, "day", (100,), "throttle"))
    cost.settle(cost.reserve("ann", 10, NOW), 10, NOW)  # at the limit: no token needed
    cost.settle(cost.reserve("ann", 5, NOW), 5, NOW)  # over: takes the one token
    with pytest.raises(Throttled, match=r"retry in 2\.00s"):
        cost.reserve("ann", 5, NOW)
    clock.t += 2.0  # rate 0.5/s: one token back
    cost.release(cost.reserve("ann", 5, NOW))
    types = [e.type for e in cost.drain()[0]]
    assert types.count("cost.throttled") == 1


def test_changing_a_budget_keeps_this_periods_spending_and_reset_clears_it():
    cost, _ = controller(ann=BudgetPolicy(100, "day"))
    cost.settle(cost.reserve("ann", 40, NOW), 40, NOW)
    cost.set_budget("ann", BudgetPolicy(50, "day"), NOW)
    assert cost.status_of("ann", NOW)["spent_micro"] == 40
    cost.set_budget("ann", BudgetPolicy(50, "week"), NOW)
    assert cost.status_of("ann", NOW)["spent_micro"] == 0
    cost.settle(cost.reserve("ann", 50, NOW), 50, NOW)
    cost.reset("ann", NOW)
    assert cost.status_of("ann", NOW)["spent_micro"] == 0
    with pytest.raises(NotFound, match="no budget for agent 'bob'"):
        cost.reset("bob", NOW)
    with pytest.raises(NotFound, match="no global budget"):
        cost.status_of(GLOBAL, NOW)


def test_load_restores_what_drain_persisted():
    cost, _ = controller(ann=BudgetPolicy(100, "day", (50,), "pause"))
    cost.settle(cost.reserve("ann", 60, NOW), 60, NOW)
    cost.set_budget("ann", BudgetPolicy(100, "day", (50,), "pause"), NOW, rate=2.0, burst=3)
    _, rows = cost.drain()
    [(scope, state, bucket)] = rows
    restored = CostController()
    restored.load([{
        "scope": scope, "limit_micro": state.policy.limit_micro,
        "period": state.policy.period.value, "alert_at": list(state.policy.alert_at),
        "action": state.policy.action.value, "throttle_rate": bucket.rate_per_s,
        "throttle_burst": bucket.burst, "period_start": state.period_start,
        "spent_micro": state.spent_micro, "alerted": sorted(state.alerted),
        "paused": state.paused, "paused_since": state.paused_since,
        "pause_reason": state.pause_reason, "throttled_since": state.throttled_since}])
    assert restored.status_of("ann", NOW) == cost.status_of("ann", NOW)


def test_a_refusal_that_pauses_is_kept_persisted_and_shown():
    cost, _ = controller(ann=BudgetPolicy(100, "day", (50,), "pause"))
    cost.settle(cost.reserve("ann", 95, NOW), 95, NOW)
    cost.drain()
    assert cost.status_of("ann", NOW)["state"] == "alerting"  # 95 %: not paused yet
    later = NOW + timedelta(minutes=1)
    with pytest.raises(BudgetExceeded, match="budget exceeded"):
        cost.reserve("ann", 10, later)
    status = cost.status_of("ann", later)
    assert (status["state"], status["paused"], status["since"]) == (
        "paused", True, later.isoformat())
    assert status["reason"].startswith("limit reached: $0.000095 spent")
    events, rows = cost.drain()  # the refusal's record persists the pause with it
    assert [e.type for e in events] == ["cost.paused"]
    assert events[0].detail["since"] == later.isoformat()
    assert [(scope, state.paused) for scope, state, _ in rows] == [("ann", True)]
    with pytest.raises(BudgetExceeded, match="budget paused since"):
        cost.reserve("ann", 1, later)  # even a task that would fit
    cost.reset("ann", later)
    assert cost.status_of("ann", later)["state"] == "ok"


def test_a_refusal_of_the_global_budget_keeps_no_agent_reservation():
    cost, _ = controller(ann=BudgetPolicy(1_000, "day"), everyone=BudgetPolicy(100, "day"))
    cost.settle(cost.reserve("ann", 90, NOW), 90, NOW)
    with pytest.raises(BudgetExceeded):
        cost.reserve("ann", 20, NOW)
    status = {s["scope"]: s for s in cost.status(NOW)}
    assert status[GLOBAL]["state"] == "paused" and status["ann"]["state"] == "ok"
    assert status["ann"]["reserved_micro"] == 0


def test_a_throttled_budget_says_so_from_its_first_task_past_the_limit():
    cost, _ = controller(ann=BudgetPolicy(100, "day", (100,), "throttle"))
    cost.settle(cost.reserve("ann", 60, NOW), 40, NOW)
    assert cost.status_of("ann", NOW)["state"] == "ok"
    cost.settle(cost.reserve("ann", 70, NOW), 10, NOW)  # past the limit: the bucket allowed it
    status = cost.status_of("ann", NOW)
    assert (status["state"], status["since"]) == ("throttled", NOW.isoformat())
    assert status["spent_micro"] == 50  # under the limit again, still throttled this period
    events, _ = cost.drain()
    assert [e.type for e in events] == ["cost.throttled"]
