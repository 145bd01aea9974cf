"""Calendar rules for scheduled jobs: "the first Saturday of the month" and its kin (pure).

Why pgvault needs this at all: cron cannot say "first Saturday".  When both day fields of a cron
schedule are restricted, cron runs the job when *either* matches, so ``0 10 1-7 * 6`` fires on
the 1st to the 7th *and* on every Saturday; Kubernetes CronJobs use the same rule.  The portable
fix is to schedule every Saturday and let the job decide whether today is the one:
``pgvault drill --only-on 'first saturday'`` exits 0 with "skipped: not due" on the others.
(systemd's ``OnCalendar=Sat *-*-01..07`` ANDs the fields and needs no help.)

The day is a calendar date in UTC: the caller turns its clock into one (:func:`utc_day`), so a
job scheduled at 10:00 UTC judges the same day wherever the host's time zone is.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")  # index = date.weekday()
_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
             "fifth": 5, "5th": 5, "last": -1}
_ORDINAL_NAMES = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last"}
RULE_SYNTAX = ("'<first|second|third|fourth|fifth|last> <weekday>', e.g. 'first saturday' "
               "(a hyphen may join the words: first-saturday)")


@dataclass(frozen=True)
class MonthlyWeekday:
    """The N-th (or last) given weekday of every month; ``ordinal`` 1..5 or -1 (last), ``weekday``
    0 = Monday .. 6 = Sunday as :meth:`datetime.date.weekday` counts."""

    ordinal: int
    weekday: int

    def __post_init__(self) -> None:
        if self.ordinal not in _ORDINAL_NAMES or not 0 <= self.weekday <= 6:
            raise ValueError(f"not a monthly weekday rule: ordinal {self.ordinal}, weekday {self.weekday}")

    def __str__(self) -> str:
        return f"{_ORDINAL_NAMES[self.ordinal]} {WEEKDAYS[self.weekday]}"

    def is_due(self, day: dt.date) -> bool:
        """Whether ``day`` is such a day: the right weekday, in the right week of its month (the
        first seven days hold the first of each weekday, days 8..14 the second, ...)."""
        if day.weekday() != self.weekday:
            return False
        if self.ordinal == -1:
            return (day + dt.timedelta(days=7)).month != day.month
        return (day.day - 1) // 7 + 1 == self.ordinal

    def next_due(self, day: dt.date) -> dt.date:
        """The first due day on or after ``day`` (a fifth weekday may skip months; every month
        has at least four of each weekday, and any 14 consecutive months hold a fifth)."""
        candidate = day + dt.timedelta(days=(self.weekday - day.weekday()) % 7)
        while not self.is_due(candidate):
            candidate += dt.timedelta(days=7)
        return candidate


def parse_day_rule(text: str) -> MonthlyWeekday:
    """``'first saturday'``, ``'last sunday'``, ``'2nd tue'``, ``'first-saturday'`` (case and
    extra blanks do not matter); ValueError naming the valid syntax otherwise."""
    words = [w for w in re.split(r"[\s_-]+", text.strip().lower()) if w]
    if len(words) == 2 and words[0] in _ORDINALS:
        weekday = [i for i, name in enumerate(WEEKDAYS) if len(words[1]) >= 3 and name.startswith(words[1])]
        if len(weekday) == 1:
            return MonthlyWeekday(_ORDINALS[words[0]], weekday[0])
    raise ValueError(f"{text!r} is not a day rule: expected {RULE_SYNTAX}")


def utc_day(moment: dt.datetime) -> dt.date:
    """The calendar day in UTC of ``moment`` (a naive datetime is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(dt.UTC).date()
