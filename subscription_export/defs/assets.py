"""Window assets: the canonical Parquet export and the formats derived from it."""

import dagster as dg

from subscription_export.defs.io_managers import WindowFile, WindowRequest
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.state.windows import Window, find_window, parse_window_key

STEP_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.asset(
    partitions_def=cdc_windows,
    io_manager_key="parquet_io_manager",
    group_name="cdc",
    retry_policy=STEP_RETRY,
    kinds={"parquet"},
)
def subscription_changes(
    context: dg.AssetExecutionContext, settings: ExportSettings
) -> WindowRequest:
    """Every change of one LSN window, in LSN order (deletes carry the before-image).

    The Parquet IO manager streams the window from the source straight into the file.
    """
    lo, hi = parse_window_key(context.partition_key)
    registered = find_window(settings.project().state, context.partition_key)
    if registered != Window(lo, hi):
        # A key typed by hand in the UI could overlap real windows and break contiguity.
        raise dg.Failure(
            f"{context.partition_key} is not a window cut by the change-log sensor;"
            " only registered windows can be exported"
        )
    context.log.info(f"exporting LSNs {lo}..{hi} ({hi - lo + 1} changes)")
    return WindowRequest(Window(lo, hi))


@dg.asset(
    partitions_def=cdc_windows,
    io_manager_key="csv_io_manager",
    group_name="cdc",
    retry_policy=STEP_RETRY,
    kinds={"csv"},
)
def subscription_changes_csv(subscription_changes: WindowFile) -> WindowFile:
    """The window as RFC 4180 CSV, streamed from the Parquet file."""
    return subscription_changes


@dg.asset(
    partitions_def=cdc_windows,
    io_manager_key="jsonl_io_manager",
    group_name="cdc",
    retry_policy=STEP_RETRY,
    kinds={"json"},
)
def subscription_changes_jsonl(subscription_changes: WindowFile) -> WindowFile:
    """The window as JSON Lines, streamed from the Parquet file."""
    return subscription_changes


window_assets = [subscription_changes, subscription_changes_csv, subscription_changes_jsonl]
