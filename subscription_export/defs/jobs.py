"""Jobs: one run exports one window to every format (and, later, every destination)."""

import dagster as dg

from subscription_export.defs.assets import window_assets
from subscription_export.defs.destinations import destination_assets
from subscription_export.defs.partitions import cdc_windows

EXPORT_WINDOW_JOB = "export_window"

export_window_job = dg.define_asset_job(
    EXPORT_WINDOW_JOB,
    selection=dg.AssetSelection.assets(*window_assets, *destination_assets()),  # + their checks
    partitions_def=cdc_windows,
    # One process per run, like the CLI's runs: a window's steps are short, and a process per
    # step (the multiprocess default) cost ~30 s of imports per 100-change window on 2 cores
    # (measured: run 31.6 s → 0.8 s). Windows still run in parallel, one run each.
    executor_def=dg.in_process_executor,
    description="Export one CDC window to Parquet, CSV and JSON Lines, then deliver it to every"
    " configured destination.",
)
