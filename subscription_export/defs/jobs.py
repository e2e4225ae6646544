"""Jobs: one run exports one window to every format (and, later, every destination)."""

import dagster as dg

from subscription_export.defs.assets import window_assets
from subscription_export.defs.partitions import cdc_windows

EXPORT_WINDOW_JOB = "export_window"

export_window_job = dg.define_asset_job(
    EXPORT_WINDOW_JOB,
    selection=dg.AssetSelection.assets(*window_assets),  # their checks come along
    partitions_def=cdc_windows,
    description="Export one CDC window (a cdc_windows partition) to Parquet, CSV and JSON Lines.",
)
