"""Dagster on object storage (moto's S3 in server mode): several partitions materialized the way
a backfill runs them (the export job per window, IO managers on s3://), their checks, and the
destinations reading each window from S3; a Parquet object without its manifest is never
loaded by the downstream assets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from subscription_export.defs.assets import subscription_changes, subscription_changes_csv
from subscription_export.defs.io_managers import CsvIOManager, ParquetIOManager
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.runner import materialize_windows
from subscription_export.export import flow
from subscription_export.export.cut import cut_windows
from subscription_export.formats.verify import verify_exports
from subscription_export.runtime import Project
from subscription_export.sandbox.server import running_sandbox
from subscription_export.state.windows import list_windows
from subscription_export_tests.delivery.test_window_delivery import (
    assert_in_sync,
    write_changes,
    write_destinations,
)
from subscription_export_tests.formats.test_object_storage import s3_keys, source_settings


@pytest.fixture
def s3_project(tmp_path: Path, s3_url: str) -> Project:
    settings = source_settings(tmp_path, s3_url)
    write_changes(settings.source_url, seed=5, subscriptions=20, changes=100)
    project = Project(settings)
    cut_windows(project)
    return project


def test_a_backfill_of_windows_exports_checks_and_delivers_from_s3(
    s3_project: Project, s3_url: str, tmp_path: Path
) -> None:
    windows = list_windows(s3_project.state)
    assert len(windows) == 3
    instance = dg.DagsterInstance.ephemeral()
    with running_sandbox() as servers:
        path = tmp_path / "destinations.toml"
        write_destinations(path, servers)
        runs = materialize_windows(
            s3_project.settings, windows, instance=instance, destinations=path
        )
        assert [r.success for r in runs] == [True] * 3, [r.error for r in runs]
        assert_in_sync(s3_project, servers)
    keys = s3_keys(s3_url)
    for window in windows:
        for name in ("subscription_changes", "subscription_changes_csv"):
            assert f"{name}/{window.key}.{'csv' if 'csv' in name else 'parquet'}" in keys
    assert verify_exports(s3_project.settings.export_dir).summary == (
        "9/9 file(s) match their manifests"
    )
    checks = [
        e
        for r in runs
        for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert len(checks) == 27  # on each of the three windows: six, and one per destination
    assert all(e.dagster_event.event_specific_data.passed for e in checks)  # type: ignore[union-attr]
    for name in ("parquet", "csv", "jsonl", "erp", "crm", "accounting"):
        assert s3_project.watermarks.get(name) == windows[-1].hi


def test_a_parquet_object_without_manifest_is_not_loaded_downstream(
    s3_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = list_windows(s3_project.state)[0]
    settings = ExportSettings.from_settings(s3_project.settings)
    resources = {
        "settings": settings,
        "parquet_io_manager": ParquetIOManager(settings=settings),
        "csv_io_manager": CsvIOManager(settings=settings),
    }
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("cdc_windows", [window.key])

    def crash(*_args: object, **_kwargs: object) -> None:
        # A killed process gets no step retries: no 2+4+8 s of retry delays re-crashing.
        raise dg.Failure("killed before the manifest", allow_retries=False)

    with monkeypatch.context() as patched:
        patched.setattr(flow, "write_manifest", crash)
        failed = dg.materialize(
            [subscription_changes],
            partition_key=window.key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    assert not failed.success
    assert s3_project.file_path("parquet", window.key).exists()  # the orphan object

    downstream = dg.materialize(
        [subscription_changes.to_source_asset(), subscription_changes_csv],
        partition_key=window.key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not downstream.success
    [failure] = downstream.get_step_failure_events()
    assert "is not published: its manifest is missing" in str(failure.step_failure_data.error)
    # Deterministic: the file will not publish itself, so the step is not retried.
    assert [e for e in downstream.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == []
    assert not s3_project.file_path("csv", window.key).exists()

    rerun = dg.materialize(
        [subscription_changes, subscription_changes_csv],
        partition_key=window.key,
        instance=instance,
        resources=resources,
    )
    assert rerun.success
    assert verify_exports(s3_project.settings.export_dir).passed
