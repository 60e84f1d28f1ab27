"""Cron expressions: parsing and the times they name (pure; stdlib + naosd.errors).

Five fields, separated by blanks::

    minute   hour   day-of-month   month          day-of-week
    0-59     0-23   1-31           1-12, jan-dec  0-7 (0 and 7: Sunday), sun-sat

Each field is a comma-separated list of items: ``*``, a number or name, a range
``a-b``, and a step over either, ``*/n`` or ``a-b/n``.  Names are
case-insensitive three-letter English month and day names, also in ranges
(``mon-fri``).  As in Vixie cron (cronie, the BSDs): when both day fields
are restricted (neither starts with ``*``), a day matches if EITHER does;
otherwise both must.  Anything else is refused with its field and why: the
``@daily``-style nicknames, seconds or year fields, Quartz's ``?``, ``L``,
``W`` and ``#``, a step without a range (``5/15``; write ``5-59/15``), values
out of range, backwards ranges, and a day of the month that never comes in
the months given (``0 0 30 feb *``).

Times are UTC, to the minute: no time zone and no daylight-saving gaps to
guess about.  :meth:`Cron.next_after` and :meth:`Cron.previous` take and
give seconds since the epoch, which is what the schedules keep.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from naosd.errors import InvalidRequest

MINUTE: Final = timedelta(minutes=1)
MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                 "dec")
DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: Final = (  # name, lowest, highest, names (the first is worth ``lowest``)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day-of-week", 0, 7, DAYS),
)
_ITEM: Final = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>[0-9]+))?$")
_QUARTZ: Final = re.compile(r"[?#]|^l|[0-9]l$|w$")  # ?, L, 15W, 5L, 6#3: no month name is like it
_GUARD: Final = 100_000  # search steps: a satisfiable expression needs a few hundred at most
_LONGEST: Final = 256


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # the day-of-month field starts with "*"
    any_weekday: bool  # the day-of-week field starts with "*"

    def matches_day(self, when: datetime) -> bool:
        in_month = when.day in self.days
        in_week = (when.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week  # both restricted: either will do (Vixie cron)

    def next_after(self, epoch: float) -> float:
        """The first time this expression names strictly after ``epoch``."""
        t = _minute(epoch) + MINUTE
        for _ in range(_GUARD):
            if t.month not in self.months:
                t = _first_of_next_month(t)
            elif not self.matches_day(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += MINUTE
            else:
                return t.timestamp()
        raise InvalidRequest(f"cron {self.text!r} names no time after {epoch}")  # see parse

    def previous(self, epoch: float) -> float:
        """The last time this expression names at or before ``epoch``."""
        t = _minute(epoch)
        for _ in range(_GUARD):
            if t.month not in self.months:
                t = t.replace(day=1, hour=0, minute=0) - MINUTE
            elif not self.matches_day(t):
                t = t.replace(hour=0, minute=0) - MINUTE
            elif t.hour not in self.hours:
                t = t.replace(minute=0) - MINUTE
            elif t.minute not in self.minutes:
                t -= MINUTE
            else:
                return t.timestamp()
        raise InvalidRequest(f"cron {self.text!r} names no time before {epoch}")  # see parse


def parse(text: object) -> Cron:
    """``text`` as a :class:`Cron`; InvalidRequest names the field and what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("a cron expression must be five fields like '*/5 * * * *'")
    if len(text) > _LONGEST:
        raise InvalidRequest(f"a cron expression is at most {_LONGEST} characters")
    if text.strip().startswith("@"):
        raise InvalidRequest(f"cron {text.strip()!r}: nicknames like @daily are not supported: "
                             "write the five fields (e.g. '0 0 * * *')")
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise InvalidRequest(f"cron {text!r} has {len(parts)} fields; it needs 5: "
                             "minute hour day-of-month month day-of-week")
    values = [_field(part.lower(), *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    cron = Cron(" ".join(parts), minutes, hours, days, months,
                frozenset(d % 7 for d in weekdays), parts[2].startswith("*"),
                parts[4].startswith("*"))
    _check_days_come(cron)
    return cron


def _field(part: str, name: str, lo: int, hi: int, names: tuple[str, ...]) -> frozenset[int]:
    out: set[int] = set()
    for item in part.split(","):
        match = None if _QUARTZ.search(item) else _ITEM.match(item)
        if match is None:
            raise InvalidRequest(f"cron {name} field: {item!r} is not a number, name, range, "
                                 "* or a step over one (e.g. */5, 1-5, mon-fri, 0-30/10); "
                                 "?, L, W and # are not supported")
        first, last = _range(match["range"], name, lo, hi, names)
        step = int(match["step"]) if match["step"] is not None else 1
        if match["step"] is not None and match["range"] != "*" and "-" not in match["range"]:
            raise InvalidRequest(f"cron {name} field: {item!r}: a step needs a range or * "
                                 f"(write {match['range']}-{hi}/{step})")
        if not 1 <= step <= hi - lo + 1:
            raise InvalidRequest(f"cron {name} field: step {step} in {item!r} must be 1 to "
                                 f"{hi - lo + 1}")
        out.update(range(first, last + 1, step))
    return frozenset(out)


def _range(text: str, name: str, lo: int, hi: int, names: tuple[str, ...]) -> tuple[int, int]:
    if text == "*":
        return lo, hi
    ends = [_value(v, name, lo, hi, names) for v in text.split("-")]
    if ends[-1] < ends[0]:
        raise InvalidRequest(f"cron {name} field: range {text!r} runs backwards")
    return ends[0], ends[-1]


def _value(text: str, name: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    elif text in names:
        value = names.index(text) + lo
    else:
        known = f" or a name ({names[0]}-{names[-1]})" if names else ""
        raise InvalidRequest(f"cron {name} field: {text!r} is not a number{known}")
    if not lo <= value <= hi:
        raise InvalidRequest(f"cron {name} field: {value} is out of range {lo}-{hi}")
    return value


def _check_days_come(cron: Cron) -> None:
    """Refuse a day of the month that none of the months has (``30 feb``):
    such an expression would name no time at all."""
    if cron.any_day or not cron.any_weekday:
        return  # any day, or the day of the week may match instead
    longest = max(calendar.monthrange(2024, m)[1] for m in cron.months)  # 2024: a leap year
    if min(cron.days) > longest:
        months = ", ".join(MONTHS[m - 1] for m in sorted(cron.months))
        raise InvalidRequest(f"cron {cron.text!r}: day {min(cron.days)} never comes in "
                             f"{months}")


def _minute(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(second=0, microsecond=0)


def _first_of_next_month(t: datetime) -> datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0)
