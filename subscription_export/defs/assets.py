"""Window assets, one set per captured table from one factory: the canonical Parquet export and
the formats derived from it. Every table's assets share the `cdc_windows` partitions (one LSN
sequence); each table has its own Dagster group, so the UI's lineage shows each table."""

import dagster as dg

from subscription_export.core.datasets import DEFAULT_TABLE, TableDataset
from subscription_export.defs.io_managers import WindowFile, WindowRequest
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.state.windows import Window, find_window, parse_window_key

STEP_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Every table's window assets carry it: the export job selects them by it, whatever the tables.
WINDOW_TAG = {"subscription_export/window": "export"}

_built: dict[TableDataset, list[dg.AssetsDefinition]] = {}


def _canonical(dataset: TableDataset) -> dg.AssetsDefinition:
    @dg.asset(
        name=dataset.asset("parquet"),
        partitions_def=cdc_windows,
        io_manager_key="parquet_io_manager",
        group_name=dataset.group,
        retry_policy=STEP_RETRY,
        kinds={"parquet"},
        tags=WINDOW_TAG,
        description=(
            f"Every change of table {dataset.table} in one LSN window, in LSN order (deletes"
            " carry the before-image); a window with none is an empty file. The Parquet IO"
            " manager streams the window from the source straight into the file."
        ),
    )
    def changes(context: dg.AssetExecutionContext, settings: ExportSettings) -> WindowRequest:
        lo, hi = parse_window_key(context.partition_key)
        registered = find_window(settings.project().state, context.partition_key)
        if registered != Window(lo, hi):
            # A key typed by hand in the UI could overlap real windows and break contiguity.
            raise dg.Failure(
                f"{context.partition_key} is not a window cut by the change-log sensor;"
                " only registered windows can be exported"
            )
        context.log.info(
            f"exporting LSNs {lo}..{hi} ({hi - lo + 1} changes)"
            if dataset.legacy
            else f"exporting table {dataset.table}'s changes in LSNs {lo}..{hi}"
        )
        return WindowRequest(Window(lo, hi), dataset)

    return changes


def _derived(dataset: TableDataset, fmt: str, kind: str, what: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=dataset.asset(fmt),
        ins={"changes": dg.AssetIn(dataset.asset("parquet"))},
        partitions_def=cdc_windows,
        io_manager_key=f"{fmt}_io_manager",
        group_name=dataset.group,
        retry_policy=STEP_RETRY,
        kinds={kind},
        tags=WINDOW_TAG,
        description=f"The window of table {dataset.table} as {what}, streamed from its Parquet.",
    )
    def derived(changes: WindowFile) -> WindowFile:
        return changes

    return derived


def table_assets(dataset: TableDataset) -> list[dg.AssetsDefinition]:
    """`{table}_changes`, `_csv`, `_jsonl` (`subscriptions`: `subscription_changes`, ...); one
    definition per table per process."""
    if dataset not in _built:
        _built[dataset] = [
            _canonical(dataset),
            _derived(dataset, "csv", "csv", "RFC 4180 CSV"),
            _derived(dataset, "jsonl", "json", "JSON Lines"),
        ]
    return _built[dataset]


def window_assets_of(datasets: tuple[TableDataset, ...]) -> list[dg.AssetsDefinition]:
    return [asset for dataset in datasets for asset in table_assets(dataset)]


# The default table's assets under their names of the single-table releases.
window_assets = table_assets(TableDataset(DEFAULT_TABLE))
subscription_changes, subscription_changes_csv, subscription_changes_jsonl = window_assets
