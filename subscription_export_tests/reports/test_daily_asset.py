"""The Dagster asset: partitions are local days, runs write one JSON per day and report MRR."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from subscription_export.core.settings import Settings
from subscription_export.defs.daily import (
    START_DATE_ENV,
    TIMEZONE_ENV,
    build_daily_activity_asset,
    business_days,
)
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.resources import ExportSettings
from subscription_export.reports.daily_activity import local_day_bounds
from subscription_export_tests.reports.factories import row, utc, write_window

NY = "America/New_York"
KEY = dg.AssetKey("subscription_activity_daily")


def _settings(tmp_path: Path) -> ExportSettings:
    return ExportSettings(
        source_url=f"sqlite:///{tmp_path / 'source.db'}",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=str(tmp_path),
    )


def _windows(tmp_path: Path) -> None:
    folder = tmp_path / "subscription_changes"
    write_window(
        folder,
        [
            row(1, "c", utc("2026-10-31T12:00:00"), "a", "12", "EUR", "monthly"),
            row(2, "c", utc("2026-11-01T05:30:00"), "b", "120", "USD", "yearly"),  # 01:30 EDT
        ],
    )
    write_window(
        folder,
        [
            row(3, "u", utc("2026-11-01T06:30:00"), "a", "12", "EUR", "monthly", "cancelled"),
            row(4, "c", utc("2026-11-02T05:00:00"), "c", "1", "EUR", "daily"),  # Nov 2, 00:00 EST
        ],
    )


def test_materializing_the_fall_back_day(tmp_path: Path) -> None:
    _windows(tmp_path)
    asset = build_daily_activity_asset(business_days("2026-10-01", NY))

    result = dg.materialize(
        [asset], partition_key="2026-11-01", resources={"settings": _settings(tmp_path)}
    )

    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["changes"] == 2
    assert (meta["created"], meta["updated"], meta["deleted"]) == (1, 1, 0)
    assert (meta["new_subscriptions"], meta["churned"]) == (1, 1)
    assert (meta["mrr_delta.EUR"], meta["mrr_delta.USD"]) == ("-12.0000", "10.0000")
    assert meta["hours"] == 25
    assert (meta["windows_scanned"], meta["scanned_to_lsn"]) == (2, 4)
    report = json.loads((tmp_path / "subscription_activity_daily" / "2026-11-01.json").read_text())
    assert report["start_utc"] == "2026-11-01T04:00:00Z"
    assert report["end_utc"] == "2026-11-02T05:00:00Z"
    assert report["mrr_delta"] == {"EUR": "-12.0000", "USD": "10.0000"}
    assert report["by_status"] == {"active": 1, "cancelled": 1}
    assert len(report["windows"]) == 2
    assert not list((tmp_path / "subscription_activity_daily").glob(".*"))  # no temp left


def test_a_partition_range_scans_once_and_writes_each_day(tmp_path: Path) -> None:
    _windows(tmp_path)
    asset = build_daily_activity_asset(business_days("2026-10-01", NY))

    result = dg.materialize(
        [asset],
        resources={"settings": _settings(tmp_path)},
        tags={
            ASSET_PARTITION_RANGE_START_TAG: "2026-10-31",
            ASSET_PARTITION_RANGE_END_TAG: "2026-11-02",
        },
    )

    assert result.success
    folder = tmp_path / "subscription_activity_daily"
    changes = {p.stem: json.loads(p.read_text())["changes"] for p in sorted(folder.glob("*.json"))}
    assert changes == {"2026-10-31": 1, "2026-11-01": 2, "2026-11-02": 1}
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert (meta["days"].value, meta["changes"].value, meta["hours"].value) == (3, 4, 73)


@pytest.mark.parametrize("key", ["2026-03-08", "2026-11-01", "2026-06-15"])
def test_dagster_partition_windows_match_local_day_bounds(key: str) -> None:
    window = business_days("2026-01-01", NY).time_window_for_partition_key(key)
    start, end = local_day_bounds(dt.date.fromisoformat(key), NY)
    assert (window.start, window.end) == (start, end)


def test_partitions_come_from_env_and_bad_values_fail_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TIMEZONE_ENV, raising=False)
    monkeypatch.delenv(START_DATE_ENV, raising=False)
    default = business_days()
    assert (default.timezone, default.start.date()) == ("UTC", dt.date(2026, 1, 1))

    monkeypatch.setenv(TIMEZONE_ENV, "Europe/Berlin")
    monkeypatch.setenv(START_DATE_ENV, "2025-07-01")
    configured = business_days()
    assert (configured.timezone, configured.start.date()) == ("Europe/Berlin", dt.date(2025, 7, 1))

    monkeypatch.setenv(TIMEZONE_ENV, "Europe/Atlantis")
    with pytest.raises(ValueError, match=f"{TIMEZONE_ENV}.*Europe/Atlantis"):
        business_days()


def test_wires_into_the_project_definitions_with_lineage_to_every_window(tmp_path: Path) -> None:
    defs = build_definitions(Settings(export_dir=tmp_path))
    dg.Definitions.validate_loadable(defs)
    asset = defs.resolve_assets_def(KEY)
    graph = defs.resolve_asset_graph()
    upstream = dg.AssetKey("subscription_changes")
    assert graph.get(KEY).parent_keys == {upstream}
    assert isinstance(asset.get_partition_mapping(upstream), dg.AllPartitionMapping)
    assert graph.get(KEY).group_name == "reports"


def test_a_window_file_without_its_manifest_is_not_in_the_report(tmp_path: Path) -> None:
    """A write that stopped before its manifest: as every reader, the report leaves it out
    (the window's next run rewrites it) and says so in the run's log."""
    _windows(tmp_path)
    folder = tmp_path / "subscription_changes"
    late = row(5, "d", utc("2026-11-01T12:00:00"), "b", "120", "USD", "yearly")
    write_window(folder, [late], published=False)
    asset = build_daily_activity_asset(business_days("2026-10-01", NY))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [asset],
        partition_key="2026-11-01",
        resources={"settings": _settings(tmp_path)},
        instance=instance,
    )

    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (meta["windows_scanned"], meta["deleted"], meta["changes"]) == (2, 0, 2)
    said = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(
        m.startswith("not in the report:") and "its manifest is missing" in m for m in said
    ), said
