"""The report reads what the real pipeline writes: captured changes, exported to Parquet."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_canonical, finish
from subscription_export.reports.daily_activity import summarize_days, window_files
from subscription_export.runtime import Project
from subscription_export_tests.helpers import delete, insert, update, writer


def _export_all(project: Project, changes: int, timeout_s: float = 20.0) -> None:
    """Cut and export until every change is in a window, as successive sensor ticks would: on a
    shared PostgreSQL server another session's open transaction can hold the sequencer back."""
    deadline = time.monotonic() + timeout_s
    exported = 0
    while exported < changes:
        assert time.monotonic() < deadline, f"only {exported} of {changes} changes sequenced"
        for window in cut_windows(project).new_windows:
            finish(project, export_canonical(project, window))
            exported = window.hi


def test_report_over_exported_windows(settings: Settings) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:  # helpers insert active monthly EUR subscriptions
        insert(conn, "kept", amount="5.00")
        insert(conn, "cancelled", amount="9.99")
        insert(conn, "deleted", amount="20.00")
    with engine.begin() as conn:
        update(conn, "cancelled", status="cancelled")
        update(conn, "deleted", amount="30.00")
        delete(conn, "deleted")
    _export_all(Project(settings), changes=6)
    today = dt.datetime.now(dt.UTC).date()
    days = [today + dt.timedelta(days=k) for k in (-1, 0)]  # a run near midnight spans two

    result = summarize_days(window_files(settings.export_dir / "subscription_changes"), days, "UTC")

    assert sum(a.changes for a in result.values()) == 6
    assert sum(a.by_op["d"] for a in result.values()) == 1
    assert sum(a.churned for a in result.values()) == 2
    assert sum(a.new_subscriptions for a in result.values()) == 3
    mrr = sum((a.mrr_delta.get("EUR", Decimal(0)) for a in result.values()), Decimal(0))
    assert mrr == Decimal("5.0000")  # only `kept` is still billed
    assert all(not a.mrr_skipped for a in result.values())


def test_a_window_left_unexported_between_exported_ones_fails_the_report(
    settings: Settings,
) -> None:
    """Window 2 was cut but its run failed (or its files were lost), window 3 was exported.
    A report that scans windows 1 and 3 misses window 2's changes (and the MRR history they
    carry) while `scanned_to_lsn` says it read to LSN 3: it must fail and name the window,
    not materialize green."""
    import dagster as dg

    from subscription_export.defs.daily import build_daily_activity_asset, business_days
    from subscription_export.defs.resources import ExportSettings

    project = Project(settings)
    engine = writer(settings.source_url)
    cut = []
    for name in ("a", "b", "c"):
        with engine.begin() as conn:
            insert(conn, name)
        cut += _cut_until_new_window(project)
    assert [(w.lo, w.hi) for w in cut] == [(1, 1), (2, 2), (3, 3)]
    for window in (cut[0], cut[2]):  # window 2's run failed
        finish(project, export_canonical(project, window))
    # Yesterday (today is no partition yet): a late commit may carry any day's `_changed_at`,
    # so every day's report reads every window.
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    asset = build_daily_activity_asset(business_days(yesterday.isoformat()))

    result = dg.materialize(
        [asset],
        partition_key=yesterday.isoformat(),
        resources={"settings": ExportSettings.from_settings(settings)},
        raise_on_error=False,
    )

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert cut[1].key in message, message


def _cut_until_new_window(project: Project, timeout_s: float = 20.0) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if new := cut_windows(project).new_windows:
            return new
    raise AssertionError("no window was cut")
