"""Cron expressions (actors/domain/cron.py): what they name, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.domain import cron
from naosd.errors import InvalidRequest


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M %a")


START = "2026-03-14 10:07:30"  # a Saturday


@pytest.mark.parametrize(("expr", "after", "nxt"), [
    pytest.param("* * * * *", START, "2026-03-14 10:08 Sat", id="every-minute"),
    pytest.param("*/5 * * * *", START, "2026-03-14 10:10 Sat", id="step"),
    pytest.param("*/5 * * * *", "2026-03-14 10:10:00", "2026-03-14 10:15 Sat",
                 id="strictly-after"),
    pytest.param("0 9 * * mon-fri", START, "2026-03-16 09:00 Mon", id="weekdays-by-name"),
    pytest.param("30 8 1,15 * *", START, "2026-03-15 08:30 Sun", id="list"),
    pytest.param("0 0 1 jan *", START, "2027-01-01 00:00 Fri", id="yearly-by-name"),
    pytest.param("0 12 * * 7", START, "2026-03-15 12:00 Sun", id="seven-is-sunday"),
    pytest.param("0 12 * * 0", START, "2026-03-15 12:00 Sun", id="zero-is-sunday"),
    pytest.param("15 10-12/2 * * *", START, "2026-03-14 10:15 Sat", id="range-step"),
    pytest.param("59 23 31 * *", START, "2026-03-31 23:59 Tue", id="month-end"),
    pytest.param("0 0 31 * *", "2026-04-01 00:00:00", "2026-05-31 00:00 Sun",
                 id="skips-short-months"),
    pytest.param("0 0 29 feb *", START, "2028-02-29 00:00 Tue", id="leap-day"),
    pytest.param("0 0 29 FEB *", "2096-03-01 00:00:00", "2104-02-29 00:00 Fri",
                 id="no-leap-day-in-2100"),
    # both day fields restricted: either matches (Vixie cron)
    pytest.param("0 0 13 * fri", START, "2026-03-20 00:00 Fri", id="dom-or-dow"),
    # a day field starting with * counts as unrestricted: both must match
    pytest.param("0 0 */2 * mon", START, "2026-03-23 00:00 Mon", id="star-step-is-and"),
    pytest.param("0 0 * 12 sun", START, "2026-12-06 00:00 Sun", id="month-and-weekday"),
])
def test_next_after(expr: str, after: str, nxt: str):
    assert iso(cron.parse(expr).next_after(at(after))) == nxt


@pytest.mark.parametrize(("expr", "before", "prev"), [
    pytest.param("* * * * *", START, "2026-03-14 10:07 Sat", id="this-minute"),
    pytest.param("*/5 * * * *", "2026-03-14 10:10:00", "2026-03-14 10:10 Sat",
                 id="at-or-before"),
    pytest.param("0 9 * * mon-fri", START, "2026-03-13 09:00 Fri", id="weekdays"),
    pytest.param("0 0 31 * *", "2026-05-01 00:00:00", "2026-03-31 00:00 Tue",
                 id="skips-short-months"),
    pytest.param("0 0 1 jan *", START, "2026-01-01 00:00 Thu", id="yearly"),
])
def test_previous(expr: str, before: str, prev: str):
    assert iso(cron.parse(expr).previous(at(before))) == prev


@pytest.mark.parametrize(("expr", "message"), [
    pytest.param("", "five fields", id="empty"),
    pytest.param("* * * *", "has 4 fields; it needs 5", id="four-fields"),
    pytest.param("0 * * * * *", "has 6 fields", id="seconds-field"),
    pytest.param("@daily", "nicknames like @daily are not supported", id="nickname"),
    pytest.param("60 * * * *", "minute field: 60 is out of range 0-59", id="minute-range"),
    pytest.param("* 24 * * *", "hour field: 24 is out of range 0-23", id="hour-range"),
    pytest.param("* * 0 * *", "day-of-month field: 0 is out of range 1-31", id="dom-range"),
    pytest.param("* * * 13 *", "month field: 13 is out of range 1-12", id="month-range"),
    pytest.param("* * * * 8", "day-of-week field: 8 is out of range 0-7", id="dow-range"),
    pytest.param("* * * foo *", "month field: 'foo' is not a number or a name (jan-dec)",
                 id="bad-name"),
    pytest.param("* * * * monday", "'monday' is not a number or a name (sun-sat)",
                 id="long-name"),
    pytest.param("* * * jan-mon *", "month field: 'mon' is not a number or a name",
                 id="day-name-in-month"),
    pytest.param("5/15 * * * *", "a step needs a range or * (write 5-59/15)", id="bare-step"),
    pytest.param("*/0 * * * *", "step 0 in '*/0' must be 1 to 60", id="step-zero"),
    pytest.param("*/61 * * * *", "must be 1 to 60", id="step-too-big"),
    pytest.param("30-10 * * * *", "range '30-10' runs backwards", id="backwards"),
    pytest.param("* * ? * *", "?, L, W and # are not supported", id="quartz-question"),
    pytest.param("* * L * *", "?, L, W and # are not supported", id="quartz-last"),
    pytest.param("* * * * 5#3", "?, L, W and # are not supported", id="quartz-nth"),
    pytest.param("1-2-3 * * * *", "is not a number, name, range", id="double-range"),
    pytest.param("0 0 30 feb *", "day 30 never comes in feb", id="never-comes"),
    pytest.param("0 0 31 apr,jun *", "day 31 never comes in apr, jun", id="never-comes-2"),
    pytest.param("*," * 200 + "*", "at most 256 characters", id="too-long"),
])
def test_refused_by_name(expr: str, message: str):
    with pytest.raises(InvalidRequest, match=message.replace("?", r"\?").replace("*", r"\*")
                       .replace("(", r"\(").replace(")", r"\)")):
        cron.parse(expr)


def test_the_text_is_normalised_and_sets_are_exact():
    c = cron.parse("  0,30  9-17/4 * JAN,jul  Mon-Fri ")
    assert c.text == "0,30 9-17/4 * JAN,jul Mon-Fri"
    assert (c.minutes, c.hours, c.months) == ({0, 30}, {9, 13, 17}, {1, 7})
    assert c.weekdays == {1, 2, 3, 4, 5} and c.any_day and not c.any_weekday


@given(st.sampled_from(["*/7 * * * *", "0 9 * * mon-fri", "0 0 13 * fri", "15 */6 1-10 * *",
                        "0 0 29 2 *"]),
       st.integers(min_value=int(at("2000-01-01 00:00:00")),
                   max_value=int(at("2099-01-01 00:00:00"))))
def test_next_and_previous_agree(expr: str, moment: int):
    c = cron.parse(expr)
    nxt = c.next_after(moment)
    assert nxt > moment and c.previous(nxt) == nxt  # a slot is its own previous
    assert c.previous(nxt - 1) <= moment  # nothing in between
    prev = c.previous(moment)
    assert prev <= moment and c.next_after(prev) == nxt
