"""Blocking checks on each window: formats and destinations never run on a bad window."""

import warnings

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
)
from subscription_export.source.reader import range_stats
from subscription_export.source.snapshot import unfinished
from subscription_export.state.quarantine import quarantined_lsns
from subscription_export.state.windows import parse_window_key

# Partitioned asset checks are a Dagster preview feature; we rely on it deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module="dagster")


def _result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
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

    @dg.asset_check(asset=asset, blocking=True, partitions_def=cdc_windows)
    def row_count_matches_change_log(
        context: dg.AssetCheckExecutionContext, settings: ExportSettings
    ) -> dg.AssetCheckResult:
        """Exported rows plus quarantined rows equal the table's rows of the change log in the
        window."""
        project = settings.project()
        key = context.partition_key
        lo, hi = parse_window_key(key)
        count, _, _ = range_stats(project.source, lo, hi, dataset.table)
        parquet = project.file_path("parquet", key, dataset)
        held = len(quarantined_lsns(project.state, key, dataset.name))
        return _result(check_row_count(parquet, count, held))

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

    @dg.asset_check(asset=asset, blocking=False, partitions_def=cdc_windows)
    def snapshot_finished(
        context: dg.AssetCheckExecutionContext, settings: ExportSettings
    ) -> dg.AssetCheckResult:
        """Every row the table held before `init` is in the stream: its snapshot is not left
        unfinished (an `init` killed mid-snapshot). Not blocking: the window's files are whole
        for its LSN range; the rows not reached yet come in later windows once it finishes."""
        line = unfinished(settings.project().source, dataset.table)
        return dg.AssetCheckResult(
            passed=line is None,
            description=line or "the table's snapshot is finished (or was never needed)",
            severity=dg.AssetCheckSeverity.ERROR,
        )

    return [row_count_matches_change_log, lsns_contiguous, manifest_hash_matches, snapshot_finished]


def window_checks_of(datasets: tuple[TableDataset, ...]) -> list[dg.AssetChecksDefinition]:
    return [check for dataset in datasets for check in table_checks(dataset)]


window_checks = table_checks(TableDataset(DEFAULT_TABLE))
