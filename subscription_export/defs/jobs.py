"""Jobs: one run exports one window to every format (and, later, every destination)."""

import dagster as dg

from subscription_export.defs.assets import WINDOW_TAG
from subscription_export.defs.destinations import DESTINATIONS_GROUP
from subscription_export.defs.partitions import cdc_windows

EXPORT_WINDOW_JOB = "export_window"

export_window_job = dg.define_asset_job(
    EXPORT_WINDOW_JOB,
    # Every destination asset the Definitions hold (one per configured destination), by group:
    # a fixed list here would leave out a destination declared under its own name.
    # Every captured table's window assets (one set per table, tagged by the factory).
    selection=dg.AssetSelection.tag(*next(iter(WINDOW_TAG.items())))
    | dg.AssetSelection.groups(DESTINATIONS_GROUP),
    partitions_def=cdc_windows,
    # Steps run in the run's process: the Definitions' default executor (definitions.py).
    description="Export one CDC window of every captured table to Parquet, CSV and JSON Lines,"
    " then deliver it to every configured destination.",
)
