"""Blocking checks on each window: formats and destinations never run on a bad window."""

import warnings

import dagster as dg

from subscription_export.defs.assets import subscription_changes
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


@dg.asset_check(asset=subscription_changes, blocking=True, partitions_def=cdc_windows)
def row_count_matches_change_log(
    context: dg.AssetCheckExecutionContext, settings: ExportSettings
) -> dg.AssetCheckResult:
    """Exported rows plus quarantined rows equal the change log's rows in the window."""
    project = settings.project()
    lo, hi = parse_window_key(context.partition_key)
    count, _, _ = range_stats(project.source, lo, hi)
    parquet = project.file_path("parquet", context.partition_key)
    held = len(quarantined_lsns(project.state, context.partition_key))
    return _result(check_row_count(parquet, count, held))


@dg.asset_check(asset=subscription_changes, blocking=True, partitions_def=cdc_windows)
def lsns_contiguous(
    context: dg.AssetCheckExecutionContext, settings: ExportSettings
) -> dg.AssetCheckResult:
    """LSNs strictly increase and, with quarantined ones, cover the whole window: no gap."""
    project = settings.project()
    lo, hi = parse_window_key(context.partition_key)
    parquet = project.file_path("parquet", context.partition_key)
    held = quarantined_lsns(project.state, context.partition_key)
    return _result(check_lsn_coverage(parquet, lo, hi, held))


@dg.asset_check(asset=subscription_changes, blocking=True, partitions_def=cdc_windows)
def manifest_hash_matches(
    context: dg.AssetCheckExecutionContext, settings: ExportSettings
) -> dg.AssetCheckResult:
    """The Parquet file's sha256 equals the one its manifest recorded."""
    export_dir = settings.settings().export_dir
    manifest = manifest_path(export_dir, "subscription_changes", context.partition_key)
    return _result(check_manifest(export_dir, manifest))


window_checks = [row_count_matches_change_log, lsns_contiguous, manifest_hash_matches]
