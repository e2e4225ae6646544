"""Which changes belong to which local day, the counts, churn, and guarding the input order."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscription_export.reports.daily_activity import (
    scan,
    summarize_day,
    summarize_days,
    window_files,
)
from subscription_export_tests.reports.factories import row, table, utc, write_window

NY = "America/New_York"
OCT31, NOV1, NOV2 = dt.date(2026, 10, 31), dt.date(2026, 11, 1), dt.date(2026, 11, 2)


def test_the_two_0130s_of_the_fall_back_day_each_count_once_on_that_day() -> None:
    edt, est = utc("2026-11-01T05:30:00"), utc("2026-11-01T06:30:00")
    ny = ZoneInfo(NY)
    assert edt.astimezone(ny).strftime("%H:%M %Z") == "01:30 EDT"
    assert est.astimezone(ny).strftime("%H:%M %Z") == "01:30 EST"
    rows = table([row(1, "c", edt, "a"), row(2, "c", est, "b")])

    days = scan([rows], [OCT31, NOV1, NOV2], NY)

    assert days[NOV1].changes == 2
    assert days[NOV1].by_op == {"c": 2, "u": 0, "d": 0}
    assert days[OCT31].changes == 0
    assert days[NOV2].changes == 0


def test_day_edges_are_half_open_on_a_23_hour_day() -> None:
    day = dt.date(2026, 3, 8)
    start, end = utc("2026-03-08T05:00:00"), utc("2026-03-09T04:00:00")
    tick = dt.timedelta(microseconds=1)
    instants = [start - tick, start, end - tick, end]
    rows = table([row(i + 1, "c", at, f"s{i}") for i, at in enumerate(instants)])

    days = scan([rows], [day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)], NY)

    assert [a.changes for a in days.values()] == [1, 2, 1]
    assert days[day].hours == 23


def test_windows_crossing_local_midnight_split_between_days(tmp_path: Path) -> None:
    # Window 1 runs from 23:50 EDT on Oct 31 to 00:10 EDT on Nov 1; window 2 straddles the end
    # of the 25-hour Nov 1 (00:00 EST Nov 2 is 05:00Z).
    first = write_window(
        tmp_path,
        [
            row(1, "c", utc("2026-11-01T03:50:00"), "a"),
            row(2, "c", utc("2026-11-01T03:59:59.999999"), "b"),
            row(3, "u", utc("2026-11-01T04:00:00"), "a", status="paused"),
            row(4, "c", utc("2026-11-01T04:10:00"), "c"),
        ],
    )
    second = write_window(
        tmp_path,
        [
            row(5, "u", utc("2026-11-02T04:59:59.999999"), "b", status="cancelled"),
            row(6, "d", utc("2026-11-02T05:00:00"), "c"),
        ],
    )

    days = summarize_days(window_files(tmp_path), [OCT31, NOV1, NOV2], NY, batch_size=2)

    assert days[OCT31].by_op == {"c": 2, "u": 0, "d": 0}
    assert days[NOV1].by_op == {"c": 1, "u": 2, "d": 0}
    assert days[NOV2].by_op == {"c": 0, "u": 0, "d": 1}
    assert days[OCT31].windows == (first.stem,)
    assert days[NOV1].windows == (first.stem, second.stem)
    assert days[NOV2].windows == (second.stem,)
    assert all(a.scanned_to_lsn == 6 for a in days.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instants=st.lists(
        st.datetimes(
            min_value=dt.datetime(2026, 10, 25), max_value=dt.datetime(2026, 11, 8, 23, 59)
        ),
        min_size=1,
        max_size=80,
    ),
    tz=st.sampled_from([NY, "Europe/Berlin", "Australia/Lord_Howe", "UTC"]),
)
def test_consecutive_days_partition_all_changes(instants: list[dt.datetime], tz: str) -> None:
    # LSN order is not time order: a late commit can carry an earlier `_changed_at`.
    stamped = [i.replace(tzinfo=dt.UTC) for i in instants]
    rows = table([row(n + 1, "c", at, f"s{n}") for n, at in enumerate(stamped)])
    local = [at.astimezone(ZoneInfo(tz)).date() for at in stamped]
    first, last = min(local), max(local)
    days = [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]

    result = scan([rows], days, tz)

    assert sum(a.changes for a in result.values()) == len(stamped)
    for day, activity in result.items():
        assert activity.changes == local.count(day)


def test_counts_by_op_and_status_use_the_row_image() -> None:
    at = utc("2026-06-01T12:00:00")
    rows = table(
        [
            row(1, "c", at, "a"),
            row(2, "c", at, "b", status="paused"),
            row(3, "u", at, "a", status="past_due"),
            row(4, "d", at, "b", status="paused"),  # before-image
            row(5, "c", at, "c", status=None),
        ]
    )

    day = summarize_day(rows, dt.date(2026, 6, 1), "UTC")

    assert day.changes == 5
    assert day.by_op == {"c": 3, "u": 1, "d": 1}
    assert day.by_status == {"active": 1, "paused": 2, "past_due": 1, "(missing)": 1}
    assert day.new_subscriptions == 3


def test_churn_rule() -> None:
    at = utc("2026-06-01T12:00:00")
    rows = table(
        [
            row(1, "c", at, "created-cancelled", status="cancelled"),  # not churn
            row(2, "c", at, "a"),
            row(3, "u", at, "a", status="cancelled"),  # churn
            row(4, "u", at, "a", status="cancelled"),  # already cancelled: not again
            row(5, "u", at, "a", status="active"),  # reactivation
            row(6, "u", at, "a", status="cancelled"),  # churn again: events are counted
            row(7, "d", at, "a", status="cancelled"),  # deleting a cancelled one: not churn
            row(8, "c", at, "p", status="paused"),
            row(9, "u", at, "p", status="cancelled"),  # paused -> cancelled: churn
            row(10, "c", at, "x"),
            row(11, "d", at, "x"),  # deleting a live one: churn
            row(12, "u", at, "never-seen", status="cancelled"),  # unknown prior: churn
        ]
    )

    assert summarize_day(rows, dt.date(2026, 6, 1), "UTC").churned == 5


def test_rows_outside_the_day_still_feed_state_but_are_not_counted() -> None:
    rows = table(
        [
            row(1, "c", utc("2026-05-31T12:00:00"), "a"),
            row(2, "u", utc("2026-06-01T12:00:00"), "a", status="cancelled"),
            row(3, "c", utc("2026-06-02T12:00:00"), "b"),
        ]
    )

    day = summarize_day(rows, dt.date(2026, 6, 1), "UTC")

    assert (day.changes, day.churned, day.new_subscriptions) == (1, 1, 0)
    assert day.mrr_skipped == {}  # the update's prior state came from May 31


def test_changes_out_of_lsn_order_fail_loudly() -> None:
    at = utc("2026-06-01T12:00:00")
    with pytest.raises(ValueError, match="strictly increasing LSN order"):
        scan([table([row(2, "c", at, "a"), row(1, "c", at, "b")])], [at.date()], "UTC")
    with pytest.raises(ValueError, match="strictly increasing LSN order"):
        scan([table([row(5, "c", at, "a")]), table([row(5, "u", at, "a")])], [at.date()], "UTC")


def test_a_window_lacking_report_columns_is_named(tmp_path: Path) -> None:
    path = write_window(tmp_path, [row(1, "c", utc("2026-06-01T12:00:00"))])
    pq.write_table(pq.read_table(path).drop_columns(["billing_cycle"]), path)

    with pytest.raises(ValueError, match=r"lacks columns \['billing_cycle'\]"):
        summarize_days([path], [dt.date(2026, 6, 1)], "UTC")


def test_window_files_are_in_lsn_order_and_skip_temp_files(tmp_path: Path) -> None:
    at = utc("2026-06-01T12:00:00")
    late = write_window(tmp_path, [row(100, "c", at, "b")])
    early = write_window(tmp_path, [row(9, "c", at, "a")])
    (tmp_path / f".{late.name}.123.tmp").write_bytes(b"partial")
    (tmp_path / f".{late.name}").write_bytes(b"partial")

    assert window_files(tmp_path) == [early, late]
    assert window_files(tmp_path / "missing") == []


def test_no_windows_yet_gives_an_empty_day() -> None:
    day = summarize_days([], [NOV1], NY)[NOV1]
    assert (day.changes, day.mrr_delta, day.scanned_to_lsn, day.hours) == (0, {}, None, 25)


def test_a_change_between_two_requested_non_adjacent_days_counts_in_neither() -> None:
    rows = table([row(1, "c", utc("2026-06-02T12:00:00"), "a")])
    days = scan([rows], [dt.date(2026, 6, 1), dt.date(2026, 6, 3)], "UTC")
    assert [a.changes for a in days.values()] == [0, 0]


@pytest.mark.parametrize("day", [dt.date(2026, 6, 1), dt.date(2026, 6, 2)])
def test_an_unknown_op_fails_in_and_outside_the_reported_day(day: dt.date) -> None:
    rows = table([row(1, "x", utc("2026-06-01T12:00:00"))])
    with pytest.raises(ValueError, match="unknown change op 'x'"):
        summarize_day(rows, day, "UTC")
