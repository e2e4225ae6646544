"""Blocking checks on each window: formats and destinations never run on a bad window."""

import warnings
from collections.abc import Iterator

import dagster as dg

from subscription_export.core.datasets import DEFAULT_TABLE, TableDataset
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.formats.manifest import manifest_path
from subscription_export.formats.verify import (
    CheckOutcome,
    check_lsn_coverage,
    check_manifest,
    check_row_count,
    check_something_exported,
)
from subscription_export.runtime import Project
from subscription_export.source.installed import (
    capture_gaps,
    truncate_gap_line,
    uncaptured_line,
    uncaptured_tables,
)
from subscription_export.source.reader import range_stats
from subscription_export.source.snapshot import unfinished
from subscription_export.state.quarantine import open_count, quarantined_lsns
from subscription_export.state.windows import parse_window_key

ROW_COUNT = "row_count_matches_change_log"
NOT_ALL_QUARANTINED = "changes_not_all_quarantined"
SNAPSHOT_FINISHED = "snapshot_finished"
CAPTURE_INSTALLED = "capture_installed"

# Partitioned asset checks are a Dagster preview feature; we rely on it deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module="dagster")


def _result(
    outcome: CheckOutcome, check: str | None = None, asset: dg.AssetKey | None = None
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check,
        asset_key=asset,
        passed=outcome.passed,
        description=outcome.description,
        metadata=outcome.metadata,  # type: ignore[arg-type]
        severity=dg.AssetCheckSeverity.ERROR,
    )


_built: dict[TableDataset, list[dg.AssetChecksDefinition]] = {}


def table_checks(dataset: TableDataset) -> list[dg.AssetChecksDefinition]:
    """Blocking checks on one table's Parquet asset (one definition per table per process)."""
    if dataset not in _built:
        _built[dataset] = _checks(dataset)
    return _built[dataset]


def _checks(dataset: TableDataset) -> list[dg.AssetChecksDefinition]:
    asset = dg.AssetKey(dataset.asset("parquet"))

    # One step for the counts and the snapshot's state (a step of its own per check costs
    # every window's run its Dagster events). Only the row count blocks: a window whose every
    # change is quarantined, or exported while the table's snapshot is unfinished, still gets
    # its files and its watermarks move, as with `run` (which exits 3 for both), but it must
    # not show green in the UI.
    @dg.multi_asset_check(
        name=f"{dataset.name}_row_counts",
        specs=[
            dg.AssetCheckSpec(
                ROW_COUNT,
                asset=asset,
                blocking=True,
                partitions_def=cdc_windows,
                description="Exported rows plus quarantined rows equal the table's rows of the"
                " change log in the window.",
            ),
            dg.AssetCheckSpec(
                NOT_ALL_QUARANTINED,
                asset=asset,
                blocking=False,
                partitions_def=cdc_windows,
                description="Some change of the table in the window was exported, unless it"
                " had none: a window whose every change is (still) quarantined exported nothing.",
            ),
            dg.AssetCheckSpec(
                SNAPSHOT_FINISHED,
                asset=asset,
                blocking=False,
                partitions_def=cdc_windows,
                description="Every row the table held before `init` is in the stream: its"
                " snapshot is not left unfinished (an `init` killed mid-snapshot). The window's"
                " files are whole for its LSN range; the rows not reached yet come in later"
                " windows once it finishes.",
            ),
            dg.AssetCheckSpec(
                CAPTURE_INSTALLED,
                asset=asset,
                blocking=False,
                partitions_def=cdc_windows,
                description="The table's capture triggers are in place and enabled (and each"
                " partition's TRUNCATE trigger): a table dropped and created again, or its"
                " triggers disabled, sends its changes to no window.",
            ),
        ],
    )
    def row_counts(
        context: dg.AssetCheckExecutionContext, settings: ExportSettings
    ) -> Iterator[dg.AssetCheckResult]:
        project = settings.project()
        key = context.partition_key
        lo, hi = parse_window_key(key)
        count, _, _ = range_stats(project.source, lo, hi, dataset.table)
        parquet = project.file_path("parquet", key, dataset)
        held = len(quarantined_lsns(project.state, key, dataset.name))
        yield _result(check_row_count(parquet, count, held), ROW_COUNT, asset)
        still_open = open_count(project.state, key, dataset.name)
        yield _result(
            check_something_exported(parquet, count, still_open), NOT_ALL_QUARANTINED, asset
        )
        line = unfinished(project.source, dataset.table)
        yield dg.AssetCheckResult(
            check_name=SNAPSHOT_FINISHED,
            asset_key=asset,
            passed=line is None,
            description=line or "the table's snapshot is finished (or was never needed)",
            severity=dg.AssetCheckSeverity.ERROR,
        )
        yield _capture_installed(project, dataset.table, asset)

    @dg.asset_check(asset=asset, blocking=True, partitions_def=cdc_windows)
    def lsns_contiguous(
        context: dg.AssetCheckExecutionContext, settings: ExportSettings
    ) -> dg.AssetCheckResult:
        """LSNs strictly increase and, with quarantined ones, cover every change of the table
        in the window: no gap."""
        project = settings.project()
        key = context.partition_key
        lo, hi = parse_window_key(key)
        parquet = project.file_path("parquet", key, dataset)
        held = quarantined_lsns(project.state, key, dataset.name)
        # The table's changes only: the window's other LSNs belong to other tables (some
        # perhaps no longer configured but still captured).
        expected, _, _ = range_stats(project.source, lo, hi, dataset.table)
        return _result(check_lsn_coverage(parquet, lo, hi, held, expected))

    @dg.asset_check(asset=asset, blocking=True, partitions_def=cdc_windows)
    def manifest_hash_matches(
        context: dg.AssetCheckExecutionContext, settings: ExportSettings
    ) -> dg.AssetCheckResult:
        """The Parquet file's sha256 equals the one its manifest recorded."""
        export_dir = settings.settings().export_dir
        manifest = manifest_path(export_dir, dataset.asset("parquet"), context.partition_key)
        return _result(check_manifest(export_dir, manifest))

    return [row_counts, lsns_contiguous, manifest_hash_matches]


def _capture_installed(project: Project, table: str, asset: dg.AssetKey) -> dg.AssetCheckResult:
    """What `run` exits 3 for: the table's changes reach no log (or a partition's TRUNCATE)."""
    lines = [uncaptured_line(t) for t in uncaptured_tables(project.source, (table,))]
    lines += [truncate_gap_line(t, p) for t, p in capture_gaps(project.source, (table,)).items()]
    return dg.AssetCheckResult(
        check_name=CAPTURE_INSTALLED,
        asset_key=asset,
        passed=not lines,
        description="; ".join(lines) or f"{table}'s capture triggers are installed and enabled",
        severity=dg.AssetCheckSeverity.ERROR,
    )


def window_checks_of(datasets: tuple[TableDataset, ...]) -> list[dg.AssetChecksDefinition]:
    return [check for dataset in datasets for check in table_checks(dataset)]


window_checks = table_checks(TableDataset(DEFAULT_TABLE))
