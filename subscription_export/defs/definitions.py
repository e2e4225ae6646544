"""Build the one Definitions object from settings (the CLI passes its own)."""

import logging
from pathlib import Path

import dagster as dg

from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings
from subscription_export.defs.assets import window_assets_of
from subscription_export.defs.checks import window_checks_of
from subscription_export.defs.daily import daily_assets
from subscription_export.defs.destinations import (
    DestinationsResource,
    destination_assets,
    sync_window_job,
)
from subscription_export.defs.io_managers import CsvIOManager, JsonLinesIOManager, ParquetIOManager
from subscription_export.defs.jobs import export_window_job
from subscription_export.defs.reconcile import (
    ConflictPoliciesResource,
    reconcile_jobs,
    reconcile_sensors,
)
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.sensors import build_change_log_sensor
from subscription_export.defs.snapshot import snapshot_job
from subscription_export.delivery.config import DestinationsConfig

log = logging.getLogger(__name__)


def _configured_destinations(resource: DestinationsResource) -> DestinationsConfig | None:
    """The destinations file, if it loads. A broken file still gives the standard assets, so the
    code location loads and the UI shows it; every sync step then fails on the same error."""
    try:
        return resource.load()
    except ConfigError as exc:
        log.warning("destinations file not loaded, only the standard sync assets: %s", exc)
        return None


def build_definitions(settings: Settings, destinations_file: Path | None = None) -> dg.Definitions:
    """`destinations_file`: the destinations file to deliver with; None finds it from the
    environment (`DestinationsResource.from_env`)."""
    export_settings = ExportSettings.from_settings(settings)
    destinations = DestinationsResource.at(destinations_file)
    sync_assets = destination_assets(
        _configured_destinations(destinations), settings.captured_tables[0]
    )
    return dg.Definitions(
        # One set of window assets and checks per captured table (SUBSCRIPTION_EXPORT_TABLES).
        assets=[*window_assets_of(settings.datasets), *daily_assets, *sync_assets],
        asset_checks=window_checks_of(settings.datasets),
        jobs=[export_window_job, sync_window_job, *reconcile_jobs, snapshot_job],
        sensors=[build_change_log_sensor(settings.sensor_interval_s), *reconcile_sensors],
        # Every job, the implicit asset job of UI materializations and backfills included, runs
        # its steps in the run's process: a process per step cost ~30 s of imports per window.
        executor=dg.in_process_executor,
        resources={
            "settings": export_settings,
            "parquet_io_manager": ParquetIOManager(settings=export_settings),
            "csv_io_manager": CsvIOManager(settings=export_settings),
            "jsonl_io_manager": JsonLinesIOManager(settings=export_settings),
            "destinations": destinations,
            "conflict_policies": ConflictPoliciesResource.from_env(),
        },
    )
