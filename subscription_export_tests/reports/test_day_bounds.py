"""Local business days as UTC ranges: 23-, 24-, 25-hour (and stranger) days come out right."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subscription_export.reports.daily_activity import local_day_bounds
from subscription_export_tests.reports.factories import utc

NY = "America/New_York"
ZONES = [
    "UTC",
    NY,
    "Europe/Berlin",
    "America/Santiago",  # springs forward at midnight: local 00:00 does not exist
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "Asia/Kolkata",  # no DST, half-hour offset
]


def test_spring_forward_day_in_new_york_is_23_hours() -> None:
    start, end = local_day_bounds(dt.date(2026, 3, 8), NY)
    assert (start, end) == (utc("2026-03-08T05:00:00"), utc("2026-03-09T04:00:00"))
    assert end - start == dt.timedelta(hours=23)


def test_fall_back_day_in_new_york_is_25_hours() -> None:
    start, end = local_day_bounds(dt.date(2026, 11, 1), NY)
    assert (start, end) == (utc("2026-11-01T04:00:00"), utc("2026-11-02T05:00:00"))
    assert end - start == dt.timedelta(hours=25)


def test_ordinary_days_around_dst_are_24_hours() -> None:
    for day in (dt.date(2026, 3, 7), dt.date(2026, 3, 9), dt.date(2026, 10, 31)):
        start, end = local_day_bounds(day, NY)
        assert end - start == dt.timedelta(hours=24)


@pytest.mark.parametrize(
    ("tz", "day", "start", "hours"),
    [
        ("America/Santiago", dt.date(2026, 9, 6), "2026-09-06T04:00:00", 23),
        ("Australia/Lord_Howe", dt.date(2026, 10, 4), "2026-10-03T13:30:00", 23.5),
        ("Pacific/Apia", dt.date(2011, 12, 30), "2011-12-30T10:00:00", 0),
        ("Asia/Kolkata", dt.date(2026, 3, 8), "2026-03-07T18:30:00", 24),
    ],
)
def test_unusual_zones(tz: str, day: dt.date, start: str, hours: float) -> None:
    lo, hi = local_day_bounds(day, tz)
    assert lo == utc(start)
    assert (hi - lo).total_seconds() / 3600 == hours


def test_unknown_timezone_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown IANA timezone 'Mars/Olympus'"):
        local_day_bounds(dt.date(2026, 1, 1), "Mars/Olympus")


@settings(max_examples=300, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    instant=st.datetimes(
        min_value=dt.datetime(1995, 1, 1),
        max_value=dt.datetime(2040, 12, 31),
        timezones=st.just(dt.UTC),
    ),
)
def test_an_instant_falls_in_the_day_of_its_local_date_and_no_neighbour(
    tz: str, instant: dt.datetime
) -> None:
    day = instant.astimezone(ZoneInfo(tz)).date()
    start, end = local_day_bounds(day, tz)
    assert start <= instant < end
    assert local_day_bounds(day - dt.timedelta(days=1), tz)[1] == start  # days tile time
    assert local_day_bounds(day + dt.timedelta(days=1), tz)[0] == end
