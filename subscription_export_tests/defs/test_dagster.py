"""The Dagster layer: definitions load, the sensor cuts windows, a partition materializes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from subscription_export.core.settings import Settings, replace
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.sensors import change_log_sensor
from subscription_export_tests.helpers import delete, insert, update, writer

REPO = Path(__file__).resolve().parents[2]


def test_definitions_validate_with_dagster_cli(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_dagster_yaml_matches_the_packaged_template() -> None:
    template = REPO / "subscription_export" / "templates" / "dagster.yaml"
    assert (REPO / "dagster.yaml").read_text() == template.read_text()


def _sensor(settings: Settings, instance: dg.DagsterInstance, cursor: str | None):  # type: ignore[no-untyped-def]
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"settings": ExportSettings.from_settings(settings)},
    )
    return change_log_sensor(context)


def _write(settings: Settings, n: int, start: int = 0) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(start, start + n):
            insert(conn, f"s{i}")


def test_sensor_skips_then_cuts_windows_and_round_trips_cursor(settings: Settings) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(_sensor(settings, instance, None), dg.SkipReason)

    _write(settings, 2_500)  # window_max_changes = 1000 in the fixture
    result = _sensor(settings, instance, None)
    assert isinstance(result, dg.SensorResult)
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [
        "00000000000000000001-00000000000000001000",
        "00000000000000001001-00000000000000002000",
        "00000000000000002001-00000000000000002500",
    ]
    assert [r.run_key for r in result.run_requests] == keys
    assert result.dynamic_partitions_requests[0].partition_keys == keys
    assert result.cursor == "2500"

    instance.add_dynamic_partitions("cdc_windows", keys)
    again = _sensor(settings, instance, result.cursor)
    assert isinstance(again, dg.SkipReason)  # nothing new past the cursor


def test_sensor_closes_a_partial_window_only_when_it_is_old(settings: Settings) -> None:
    instance = dg.DagsterInstance.ephemeral()
    patient = replace(settings, window_max_age_s=3600.0)
    _write(patient, 10)
    assert isinstance(_sensor(patient, instance, None), dg.SkipReason)  # 10 < 1000, too young

    impatient = replace(settings, window_max_age_s=0.0)
    result = _sensor(impatient, instance, None)
    assert [r.partition_key for r in result.run_requests] == [
        "00000000000000000001-00000000000000000010"
    ]


def test_age_uses_the_oldest_pending_change(settings: Settings) -> None:
    from subscription_export.state.windows import plan_windows

    ages = {1: 120.0, 11: 5.0}
    planned = plan_windows(0, 15, lambda lsn: ages.get(lsn), max_changes=10, max_age_s=60.0)
    assert [(w.lo, w.hi) for w in planned] == [(1, 10)]  # the tail's oldest change is 5 s old
    planned = plan_windows(0, 15, lambda lsn: 61.0, max_changes=10, max_age_s=60.0)
    assert [(w.lo, w.hi) for w in planned] == [(1, 10), (11, 15)]


def test_materialize_one_partition_writes_three_files_with_the_same_rows(
    settings: Settings,
) -> None:
    from subscription_export.defs.runner import run_cycle

    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "a", amount="12.34", name='Quote " and, comma')
        insert(conn, "b")
    with engine.begin() as conn:
        update(conn, "a", status="paused")
        delete(conn, "b")
    instance = dg.DagsterInstance.ephemeral()
    result = run_cycle(settings, instance=instance)
    assert [r.success for r in result.runs] == [True]
    key = result.runs[0].window.key
    out = settings.export_dir
    parquet = pq.read_table(out / "subscription_changes" / f"{key}.parquet")
    csv = pacsv.read_csv(out / "subscription_changes_csv" / f"{key}.csv")
    jsonl = pajson.read_json(out / "subscription_changes_jsonl" / f"{key}.jsonl")
    assert parquet.column("_op").to_pylist() == ["c", "c", "u", "d"]
    assert parquet.column("_deleted").to_pylist() == [False, False, False, True]
    assert parquet.column("status").to_pylist() == ["active", "active", "paused", "active"]
    for other in (csv, jsonl):
        assert other.column_names == parquet.column_names
        assert other.column("_lsn").to_pylist() == parquet.column("_lsn").to_pylist()
        assert other.column("name").to_pylist() == parquet.column("name").to_pylist()
        assert [Decimal(str(v)) for v in other.column("amount").to_pylist()] == (
            parquet.column("amount").to_pylist()
        )
    changed = parquet.column("_changed_at").to_pylist()
    assert all(c.tzinfo is not None and c.utcoffset() == dt.timedelta(0) for c in changed)

    materializations = instance.fetch_materializations(
        dg.AssetKey("subscription_changes"), limit=10
    ).records
    metadata = materializations[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert metadata["rows"].value == 4
    assert metadata["rows_deleted"].value == 1
    assert metadata["lsn_from"].value == 1 and metadata["lsn_to"].value == 4


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_reexport_gives_identical_bytes(settings: Settings, fmt: str, tmp_path: Path) -> None:
    from subscription_export.defs.runner import run_cycle
    from subscription_export.formats.writers import sha256_of

    _write(settings, 700)
    instance = dg.DagsterInstance.ephemeral()
    run_cycle(settings, instance=instance)
    ext = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[fmt]
    asset = "subscription_changes" if fmt == "parquet" else f"subscription_changes_{fmt}"
    path = next((settings.export_dir / asset).glob(f"*.{ext}"))
    first = sha256_of(path)
    other = replace(settings, export_dir=tmp_path / "again", read_batch_size=97)
    from subscription_export.defs.runner import materialize_windows
    from subscription_export.state.windows import Window

    lo, hi = (int(x) for x in path.stem.split("-"))
    materialize_windows(other, [Window(lo, hi)], instance=instance)
    assert sha256_of(other.export_dir / asset / path.name) == first


def test_every_job_runs_its_steps_in_the_runs_process(settings: Settings) -> None:
    """UI materializations and backfills of assets (the implicit asset job) as well as the
    named jobs: a process per step would import the project again for every step."""
    from subscription_export.defs.definitions import build_definitions

    defs = build_definitions(settings)
    jobs = [defs.resolve_implicit_global_asset_job_def()]
    jobs += [defs.resolve_job_def(name) for name in ("export_window", "sync_window", "reconcile")]
    assert {job.executor_def.name for job in jobs} == {dg.in_process_executor.name}


def test_an_export_dir_that_cannot_exist_fails_the_step_without_retries(
    settings: Settings, tmp_path: Path
) -> None:
    """ENOTDIR (and read-only, permission) cannot heal by retrying: the step fails at once
    instead of three retries with back-off (~14 s before `run` could say why)."""
    from subscription_export.defs.runner import run_cycle

    (tmp_path / "a_file").write_text("")
    settings = replace(settings, export_dir=tmp_path / "a_file" / "exports")
    with writer(settings.source_url).begin() as conn:
        insert(conn, "a")
    instance = dg.DagsterInstance.ephemeral()
    result = run_cycle(settings, instance=instance)
    assert [r.success for r in result.runs] == [False]
    events = instance.all_logs(result.runs[0].run_id)
    kinds = [e.dagster_event.event_type_value for e in events if e.dagster_event is not None]
    assert "STEP_FAILURE" in kinds
    assert "STEP_UP_FOR_RETRY" not in kinds, kinds


def test_a_window_whose_every_change_was_quarantined_fails_a_check(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Nothing of the window was exported: `run` exits 3 for it ("needs operator action"),
    so the Dagster UI must not show the window all green. The run itself still succeeds (the
    empty files are written and the watermarks move, as for `run`); a check on the window
    fails and says why."""
    from subscription_export.defs.runner import run_cycle
    from subscription_export.source.demo_table import init_demo_source

    init_demo_source(writer(sqlite_url))
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    with writer(sqlite_url).begin() as conn:
        insert(conn, "bad", amount="1e30")  # does not fit the amount column: quarantined
    instance = dg.DagsterInstance.ephemeral()
    result = run_cycle(settings, instance=instance)
    assert [r.success for r in result.runs] == [True]
    checks = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(result.runs[0].run_id)
        if e.dagster_event is not None
        and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    failed = [c for c in checks if not c.passed]  # type: ignore[union-attr]
    assert failed, [(c.check_name, c.description) for c in checks]  # type: ignore[union-attr]
    assert any("quarantined" in (c.description or "") for c in failed)  # type: ignore[union-attr]


def test_the_sensor_names_a_window_behind_its_cursor_whose_run_failed(
    settings: Settings, tmp_path: Path
) -> None:
    """The sensor requests a window once; its cursor then moves past it. When that run fails
    for good (retries spent: the export folder was unusable, the source down too long), no
    later tick requests the window again, and each tick said only "no new window": green
    ticks while the window stays unexported. The skip reason must name it."""
    from subscription_export.defs.runner import materialize_windows
    from subscription_export.state.windows import Window

    instance = dg.DagsterInstance.ephemeral()
    _write(settings, 3)
    first = _sensor(settings, instance, None)
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests
    instance.add_dynamic_partitions("cdc_windows", [request.partition_key])
    (tmp_path / "a_file").write_text("")
    broken = replace(settings, export_dir=tmp_path / "a_file" / "exports")
    lo, hi = (int(x) for x in request.partition_key.split("-"))
    [run] = materialize_windows(broken, [Window(lo, hi)], instance=instance)
    assert not run.success

    later = _sensor(settings, instance, first.cursor)

    assert isinstance(later, dg.SkipReason)
    assert request.partition_key in (later.skip_message or ""), later.skip_message
