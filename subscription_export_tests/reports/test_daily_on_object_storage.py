"""The daily report on object storage (moto's S3 in server mode): it reads the windows the
export published there and writes its JSON there, as it does on a local folder."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from subscription_export.defs.daily import build_daily_activity_asset
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.runner import materialize_windows
from subscription_export.export.cut import cut_windows
from subscription_export.runtime import Project
from subscription_export.state.windows import list_windows
from subscription_export_tests.delivery.test_window_delivery import write_changes
from subscription_export_tests.formats.test_object_storage import s3_keys, source_settings


def test_the_daily_report_reads_and_writes_object_storage(tmp_path: Path, s3_url: str) -> None:
    settings = source_settings(tmp_path, s3_url)
    write_changes(settings.source_url, seed=5, subscriptions=20, changes=100)
    project = Project(settings)
    cut_windows(project)
    windows = list_windows(project.state)
    runs = materialize_windows(settings, windows, instance=dg.DagsterInstance.ephemeral())
    assert all(r.success for r in runs), [r.error for r in runs]
    exported = [project.export_of("subscriptions", w.key) for w in windows]
    stamps = [t for f in exported for t in pq.read_table(f.open("rb"))["_changed_at"].to_pylist()]
    days = sorted({t.astimezone(dt.UTC).date() for t in stamps})

    # Today's partition too (the generated changes are stamped now).
    today = dg.DailyPartitionsDefinition(start_date=days[0].isoformat(), end_offset=1)
    asset = build_daily_activity_asset(today)
    result = dg.materialize(
        [asset],
        partition_key=days[0].isoformat(),
        resources={"settings": ExportSettings.from_settings(settings)},
    )

    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["windows_scanned"] == len(windows)
    on_day = [t for t in stamps if t.astimezone(dt.UTC).date() == days[0]]
    assert meta["changes"] == len(on_day)
    key = f"subscription_activity_daily/{days[0].isoformat()}.json"
    assert key in s3_keys(s3_url)
    report = json.loads((settings.export_dir / key).read_text())
    assert len(report["windows"]) == len(windows)
