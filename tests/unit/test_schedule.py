"""The day rules of scheduled jobs (policy/schedule.py): 'first saturday' and its kin, checked on
every day of eleven years against a reference built independently from the stdlib's calendar."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest

from pgvault.policy.schedule import WEEKDAYS, MonthlyWeekday, parse_day_rule, utc_day

YEARS = range(2020, 2031)  # leap years 2020, 2024, 2028; 2100 (not leap) is checked on its own
FIRST_SATURDAY = MonthlyWeekday(1, 5)


def _days(years: range) -> list[dt.date]:
    start, end = dt.date(years.start, 1, 1), dt.date(years.stop, 1, 1)
    return [start + dt.timedelta(days=n) for n in range((end - start).days)]


def _reference(year: int, month: int, ordinal: int, weekday: int) -> dt.date | None:
    """The N-th weekday of the month from calendar.monthcalendar (weeks as rows, 0 = not in month)."""
    found = [week[weekday] for week in calendar.monthcalendar(year, month) if week[weekday]]
    index = -1 if ordinal == -1 else ordinal - 1
    return dt.date(year, month, found[index]) if -len(found) <= index < len(found) else None


def test_first_saturday_on_every_day_of_eleven_years() -> None:
    days = _days(YEARS)
    assert len(days) == 11 * 365 + 3  # 2020, 2024, 2028
    due = [d for d in days if FIRST_SATURDAY.is_due(d)]
    expected = [_reference(y, m, 1, 5) for y in YEARS for m in range(1, 13)]
    assert due == expected
    assert all(d.weekday() == 5 and d.day <= 7 for d in due)
    # Exactly one a month: cron's '0 10 1-7 * 6' would have fired on ~11 days a month.
    assert len(due) == 11 * 12


@pytest.mark.parametrize("ordinal", [1, 2, 3, 4, 5, -1])
@pytest.mark.parametrize("weekday", range(7))
def test_every_rule_on_every_day_matches_the_calendar(ordinal: int, weekday: int) -> None:
    rule = MonthlyWeekday(ordinal, weekday)
    due = {d for d in _days(YEARS) if rule.is_due(d)}
    expected = {r for y in YEARS for m in range(1, 13) if (r := _reference(y, m, ordinal, weekday))}
    assert due == expected
    if ordinal != 5:
        assert len(due) == len(YEARS) * 12  # every month has at least four of each weekday


@pytest.mark.parametrize(("year", "month", "first_saturday"), [
    (2025, 2, 1),    # February 2025 starts on a Saturday: the 1st itself
    (2025, 3, 1),    # so does March 2025
    (2026, 8, 1),    # and August 2026
    (2024, 9, 7),    # September 2024 starts on a Sunday: the first Saturday is the 7th, the latest possible
    (2026, 3, 7),    # March 2026 starts on a Sunday
    (2024, 2, 3),    # leap February
    (2028, 2, 5),    # leap February starting on a Tuesday
    (2100, 2, 6),    # 2100 is not a leap year
])
def test_months_starting_on_saturday_or_sunday_and_leap_years(year: int, month: int, first_saturday: int) -> None:
    month_days = [dt.date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]
    assert [d.day for d in month_days if FIRST_SATURDAY.is_due(d)] == [first_saturday]
    start = dt.date(year, month, 1).weekday()
    assert first_saturday == (1 if start == 5 else 7 if start == 6 else first_saturday)


def test_the_last_weekday_across_leap_february_and_year_ends() -> None:
    last_thursday = MonthlyWeekday(-1, 3)
    assert last_thursday.is_due(dt.date(2024, 2, 29))  # Feb 29 2024 was a Thursday
    assert not last_thursday.is_due(dt.date(2024, 2, 22))
    last_sunday = MonthlyWeekday(-1, 6)
    assert last_sunday.is_due(dt.date(2028, 12, 31)) and last_sunday.next_due(dt.date(2029, 1, 1)) == dt.date(2029, 1, 28)


def test_next_due_is_the_first_due_day_on_or_after() -> None:
    for day in _days(range(2024, 2027)):
        nxt = FIRST_SATURDAY.next_due(day)
        assert nxt >= day and FIRST_SATURDAY.is_due(nxt)
        assert not any(FIRST_SATURDAY.is_due(day + dt.timedelta(days=n)) for n in range((nxt - day).days))
    # A fifth Saturday skips months without one.
    fifth = MonthlyWeekday(5, 5)
    assert fifth.next_due(dt.date(2026, 1, 1)) == dt.date(2026, 1, 31)
    assert fifth.next_due(dt.date(2026, 2, 1)) == dt.date(2026, 5, 30)


@pytest.mark.parametrize(("text", "rule"), [
    ("first saturday", FIRST_SATURDAY),
    ("First Saturday", FIRST_SATURDAY),
    ("  first   saturday ", FIRST_SATURDAY),
    ("first-saturday", FIRST_SATURDAY),
    ("1st_sat", FIRST_SATURDAY),
    ("last sunday", MonthlyWeekday(-1, 6)),
    ("2nd tue", MonthlyWeekday(2, 1)),
    ("fifth friday", MonthlyWeekday(5, 4)),
])
def test_parse(text: str, rule: MonthlyWeekday) -> None:
    assert parse_day_rule(text) == rule
    assert parse_day_rule(str(rule)) == rule


@pytest.mark.parametrize("text", ["", "saturday", "first", "sixth saturday", "first sa", "first t",
                                  "first saturday of the month", "0 10 1-7 * 6", "first caturday"])
def test_parse_refuses_with_the_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="expected '<first|second|third|fourth|fifth|last> <weekday>'"):
        parse_day_rule(text)


def test_str_names_every_rule() -> None:
    assert str(FIRST_SATURDAY) == "first saturday"
    assert {str(MonthlyWeekday(-1, w)) for w in range(7)} == {f"last {n}" for n in WEEKDAYS}
    with pytest.raises(ValueError):
        MonthlyWeekday(0, 5)
    with pytest.raises(ValueError):
        MonthlyWeekday(1, 7)


def test_the_day_is_judged_in_utc() -> None:
    # 01:00 on Saturday 5 December 2026 in UTC+5 is still Friday the 4th in UTC: not due.
    east = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert utc_day(east) == dt.date(2026, 12, 4) and not FIRST_SATURDAY.is_due(utc_day(east))
    # 22:00 on Friday the 4th in UTC-3 is already Saturday the 5th in UTC: due.
    west = dt.datetime(2026, 12, 4, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    assert utc_day(west) == dt.date(2026, 12, 5) and FIRST_SATURDAY.is_due(utc_day(west))
    assert utc_day(dt.datetime(2026, 12, 5, 23, 59)) == dt.date(2026, 12, 5)  # naive: already UTC
