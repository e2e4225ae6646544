"""The daily business-activity report as a Dagster asset, partitioned by local calendar day.

Partitions are days in SUBSCRIPTION_EXPORT_BUSINESS_TIMEZONE (IANA, default UTC) from
SUBSCRIPTION_EXPORT_DAILY_START_DATE (default 2026-01-01), so a partition spans 23 or 25 hours
across DST. The work lives in `subscription_export.reports.daily_activity`; this module maps
partitions to days, writes one JSON per day and reports metadata.
"""

import datetime as dt
import os
from collections import Counter
from decimal import Decimal
from pathlib import Path

import dagster as dg
from upath import UPath

from subscription_export.core.errors import UnpublishedFileError
from subscription_export.defs.resources import ExportSettings
from subscription_export.formats.verify import published_file
from subscription_export.reports.daily_activity import (
    DailyActivity,
    summarize_days,
    window_files,
    write_report,
    zone,
)
from subscription_export.state.windows import list_windows, parse_window_key

TIMEZONE_ENV = "SUBSCRIPTION_EXPORT_BUSINESS_TIMEZONE"
START_DATE_ENV = "SUBSCRIPTION_EXPORT_DAILY_START_DATE"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_START_DATE = "2026-01-01"
REPORT_DIR = "subscription_activity_daily"
SOURCE_DIR = "subscription_changes"


def business_days(
    start_date: str | None = None, timezone: str | None = None
) -> dg.DailyPartitionsDefinition:
    """Daily partitions from arguments, else env, else defaults; a bad value fails at load with
    a message naming the variable rather than deep inside a run."""
    tz = timezone or os.environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    start = start_date or os.environ.get(START_DATE_ENV) or DEFAULT_START_DATE
    try:
        zone(tz)
        dt.date.fromisoformat(start)
    except ValueError as exc:
        raise ValueError(f"{TIMEZONE_ENV}/{START_DATE_ENV}: {exc}") from None
    return dg.DailyPartitionsDefinition(start_date=start, timezone=tz)


def build_daily_activity_asset(
    partitions_def: dg.DailyPartitionsDefinition | None = None,
) -> dg.AssetsDefinition:
    """The asset for one business timezone (tests build their own; definitions use the env)."""
    partitions = partitions_def or business_days()
    tz = partitions.timezone

    @dg.asset(
        name="subscription_activity_daily",
        partitions_def=partitions,
        group_name="reports",
        # Lineage only: every day may depend on any window (a late commit can carry an early
        # `_changed_at`, and MRR needs all history). Dagster would infer an identity mapping
        # between these unrelated partition sets, so the mapping is stated.
        deps=[dg.AssetDep("subscription_changes", partition_mapping=dg.AllPartitionMapping())],
        # A backfill of many days reads the windows once instead of once per day.
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"json"},
    )
    def subscription_activity_daily(
        context: dg.AssetExecutionContext, settings: ExportSettings
    ) -> dg.MaterializeResult:
        """Changes per local business day: counts by op and status, new subscriptions, churn
        and MRR delta per currency, written to `subscription_activity_daily/{day}.json`."""
        export_dir = settings.settings().export_dir
        files = _published(context, export_dir, window_files(export_dir / SOURCE_DIR))
        _require_no_gap(settings, files)
        folder = export_dir / REPORT_DIR
        days = [dt.date.fromisoformat(key) for key in context.partition_keys]
        context.log.info(f"scanning {len(files)} windows for {len(days)} day(s) in {tz}")
        activities = list(summarize_days(files, days, tz).values())
        for activity in activities:
            write_report(folder / f"{activity.day.isoformat()}.json", activity)
            if activity.mrr_skipped:
                context.log.warning(
                    f"{activity.day}: MRR effect unknown for {activity.mrr_skipped}"
                )
        where = folder / f"{days[0].isoformat()}.json" if len(days) == 1 else folder
        return dg.MaterializeResult(metadata=report_metadata(activities, len(files), where))

    return subscription_activity_daily


def _published(
    context: dg.AssetExecutionContext, export_dir: Path | UPath, files: list[Path]
) -> list[Path | UPath]:
    """The window files their manifests vouch for. As every reader, the report ignores a file
    without one (a write that stopped before it; the window's next run rewrites it), and says so."""
    published: list[Path | UPath] = []
    for path in files:
        try:
            published.append(published_file(export_dir, "parquet", path.stem))
        except UnpublishedFileError as exc:
            context.log.warning(f"not in the report: {exc}")
    return published


def _require_no_gap(settings: ExportSettings, files: list[Path | UPath]) -> None:
    """Fail when a window cut before the last published one is not published (its run failed,
    or its files were lost): the report would leave out its changes, and the MRR history they
    carry, while `scanned_to_lsn` claims the log was read up to the last window. Windows past
    the last published one are simply not read yet, as `scanned_to_lsn` says."""
    if not files:
        return
    read_to = max(parse_window_key(path.stem)[1] for path in files)
    published = {path.stem for path in files}
    missing = [
        w.key
        for w in list_windows(settings.project().state)
        if w.hi <= read_to and w.key not in published
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise dg.Failure(
            f"{len(missing)} window(s) before LSN {read_to} are not exported ({shown}): the"
            f" report would miss their changes; materialize {SOURCE_DIR} for them first",
            allow_retries=False,
        )


def report_metadata(
    activities: list[DailyActivity], windows_scanned: int, path: os.PathLike[str] | UPath
) -> dict[str, object]:
    """Totals over the materialized day(s); MRR as exact decimal text (a float would round)."""
    ops: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    mrr: dict[str, Decimal] = {}
    for a in activities:
        ops.update(a.by_op)
        statuses.update(a.by_status)
        skipped.update(a.mrr_skipped)
        for cur, value in a.mrr_delta.items():
            mrr[cur] = mrr.get(cur, Decimal(0)) + value
    first, last = activities[0], activities[-1]
    return {
        "days": len(activities),
        "timezone": first.timezone,
        "start_utc": first.start_utc.isoformat(),
        "end_utc": last.end_utc.isoformat(),
        "hours": sum(a.hours for a in activities),
        "changes": sum(ops.values()),
        "created": ops["c"],
        "updated": ops["u"],
        "deleted": ops["d"],
        "new_subscriptions": sum(a.new_subscriptions for a in activities),
        "churned": sum(a.churned for a in activities),
        **{f"mrr_delta.{cur}": dg.MetadataValue.text(str(v)) for cur, v in sorted(mrr.items())},
        **{f"mrr_skipped.{reason}": n for reason, n in sorted(skipped.items())},
        **{f"status.{status}": n for status, n in sorted(statuses.items())},
        "windows_scanned": windows_scanned,
        "scanned_to_lsn": first.scanned_to_lsn if first.scanned_to_lsn is not None else 0,
        "path": dg.MetadataValue.path(str(path)),  # s3://… stays a URL
    }


subscription_activity_daily = build_daily_activity_asset()
daily_assets = [subscription_activity_daily]
