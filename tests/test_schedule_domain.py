"""Schedules (actors/domain/schedule.py): when a schedule fires, and what a
late start does with the slots it missed; the clock is an argument."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.domain import schedule as sch
from naosd.errors import InvalidRequest


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def spec(when: str = "*/5 * * * *", missed: str = "skip", **kw) -> sch.ScheduleSpec:
    return sch.ScheduleSpec("nightly", "saga", "order", {"n": 1}, cron=when, missed=missed,
                            **kw)


def every(seconds: int, missed: str = "skip") -> sch.ScheduleSpec:
    return sch.ScheduleSpec("tick", "agent", "pinger", None, every_s=seconds, missed=missed)


def test_the_first_slot_is_the_first_after_now():
    assert sch.first_due(spec(), at("2026-03-14 10:07:30")) == at("2026-03-14 10:10:00")
    assert sch.first_due(every(2), 101.5) == 102.0
    assert sch.first_due(every(2), 102.0) == 104.0  # strictly after


def test_nothing_fires_before_the_slot():
    due = at("2026-03-14 10:10:00")
    firing = sch.plan(spec(), due, due - 0.001)
    assert firing == sch.Firing((), None, due)


@pytest.mark.parametrize("missed", ["skip", "catch-up"])
def test_on_time_both_policies_fire_the_one_slot(missed: str):
    due = at("2026-03-14 10:10:00")
    firing = sch.plan(spec(missed=missed), due, due + 0.4)
    assert firing == sch.Firing((due,), None, at("2026-03-14 10:15:00"))


def test_skip_fires_once_for_the_newest_missed_slot():
    due = at("2026-03-14 10:10:00")  # naosd was down from before 10:10 until 10:32
    firing = sch.plan(spec(), due, at("2026-03-14 10:32:10"))
    assert firing.slots == (at("2026-03-14 10:30:00"),)
    assert firing.skipped == (due, at("2026-03-14 10:25:00"))  # 10:10 .. 10:25: four
    assert firing.next_due == at("2026-03-14 10:35:00")


def test_catch_up_fires_each_missed_slot_oldest_first():
    due = at("2026-03-14 10:10:00")
    firing = sch.plan(spec(missed="catch-up"), due, at("2026-03-14 10:32:10"))
    assert firing.slots == tuple(at(f"2026-03-14 10:{m}:00") for m in (10, 15, 20, 25, 30))
    assert firing.skipped is None and firing.next_due == at("2026-03-14 10:35:00")


def test_catch_up_is_bounded_to_the_newest_slots():
    firing = sch.plan(every(1, "catch-up"), 100.0, 1000.0, limit=5)
    assert firing.slots == (996.0, 997.0, 998.0, 999.0, 1000.0)
    assert firing.skipped == (100.0, 995.0) and firing.next_due == 1001.0
    big = sch.plan(every(60, "catch-up"), 0.0, 365 * 86400.0)
    assert len(big.slots) == sch.CATCH_UP_MAX and big.slots[-1] == 365 * 86400.0


def test_a_long_downtime_with_a_minute_cron_is_planned_quickly():
    firing = sch.plan(spec("* * * * *", missed="catch-up"), at("2026-01-01 00:00:00"),
                      at("2026-03-01 00:00:30"))
    assert len(firing.slots) == sch.CATCH_UP_MAX
    assert firing.slots[-1] == at("2026-03-01 00:00:00")
    assert firing.skipped == (at("2026-01-01 00:00:00"), at("2026-02-28 22:20:00"))


def test_a_restart_after_firing_does_not_fire_the_slot_again():
    """What naosd stores with a firing is next_due; planned again from it, at
    the same moment (a restart right after), nothing is due."""
    due = at("2026-03-14 10:10:00")
    first = sch.plan(spec(), due, due + 1)
    assert sch.plan(spec(), first.next_due, due + 2).slots == ()
    assert sch.plan(spec(), first.next_due, first.next_due).slots == (first.next_due,)


@pytest.mark.parametrize(("kw", "message"), [
    ({"target_kind": "pool"}, "a saga, a workflow or an agent, not a 'pool'"),
    ({"target": "Bad Name"}, "invalid saga name"),
    ({"name": "no/slash"}, "invalid schedule name"),
    ({"cron": None}, "either a cron expression or --every"),
    ({"every_s": 5}, "either a cron expression or --every"),
    ({"cron": "61 * * * *"}, "minute field: 61 is out of range"),
    ({"missed": "later"}, "missed must be skip or catch-up"),
    ({"timeout_s": 0}, "timeout must be more than 0"),
    ({"timeout_s": 86401}, "at most 86400"),
])
def test_bad_schedules_are_refused_by_name(kw: dict, message: str):
    args = {"name": "nightly", "target_kind": "saga", "target": "order",
            "cron": "*/5 * * * *"} | kw
    with pytest.raises(InvalidRequest, match=message):
        sch.ScheduleSpec(**args)


@pytest.mark.parametrize("seconds", [0, -1, 1.5, True, sch.EVERY_MAX_S + 1])
def test_every_is_whole_seconds(seconds):
    with pytest.raises(InvalidRequest, match="every must be a whole number of seconds"):
        sch.ScheduleSpec("t", "agent", "a", every_s=seconds)


def test_a_spec_round_trips_and_a_corrupt_one_is_named():
    s = spec(missed="catch-up", timeout_s=5.0)
    assert sch.ScheduleSpec.from_dict(s.to_dict()) == s
    with pytest.raises(InvalidRequest, match="corrupt schedule"):
        sch.ScheduleSpec.from_dict({**s.to_dict(), "colour": "red"})
