"""`verify` and the window checks catch drift, gaps and count mismatches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subscription_export.core.settings import Settings
from subscription_export.defs.runner import run_cycle
from subscription_export.formats.verify import check_lsn_coverage, check_row_count
from subscription_export_tests.helpers import insert, writer


def _export(settings: Settings, n: int) -> str:
    with writer(settings.source_url).begin() as conn:
        for i in range(n):
            insert(conn, f"s{i}")
    result = run_cycle(settings, instance=dg.DagsterInstance.ephemeral())
    assert all(r.success for r in result.runs)
    return result.runs[0].window.key


def test_verify_cli_reports_drift(settings: Settings, tmp_path: Path) -> None:
    key = _export(settings, 20)
    env = {**settings.as_env(), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "subscription_export.cli", "verify"]
    ok = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "3/3 file(s) match" in ok.stdout
    csv = settings.export_dir / "subscription_changes_csv" / f"{key}.csv"
    csv.write_bytes(csv.read_bytes().replace(b"Plan", b"PLAN", 1))
    drift = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert drift.returncode == 1 and "DRIFT" in drift.stdout and "2/3" in drift.stdout


def test_a_lossy_export_moves_nothing_and_stops_downstream(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (simulated) exporter bug that loses a row: the window is not recorded, no watermark
    moves, CSV/JSONL never run, and the step is not retried (it would fail the same way)."""
    import subscription_export.export.flow as pipeline

    real_stream = pipeline.stream_window

    def lossy_stream(project, window):  # type: ignore[no-untyped-def]
        stream = real_stream(project, window)
        real_batches = stream.batches
        stream.batches = lambda: (b.slice(1) for b in real_batches())  # type: ignore[method-assign]
        return stream

    monkeypatch.setattr(pipeline, "stream_window", lossy_stream)
    with writer(settings.source_url).begin() as conn:
        for i in range(10):
            insert(conn, f"s{i}")
    instance = dg.DagsterInstance.ephemeral()
    result = run_cycle(settings, instance=instance)
    [run] = result.runs
    assert not run.success and "failed verification" in (run.error or "")
    assert "LSNs are not" in (run.error or "") or "!= 10" in (run.error or "")
    assert pipeline.Project(settings).watermarks.all() == {}
    assert not list((settings.export_dir / "subscription_changes_csv").glob("*.csv"))
    assert not list((settings.export_dir / "subscription_changes_jsonl").glob("*.jsonl"))
    attempts = [
        e
        for e in instance.all_logs(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
    ]
    assert len(attempts) == 1  # not retried


def test_checks_pass_on_a_good_window(settings: Settings) -> None:
    with writer(settings.source_url).begin() as conn:
        for i in range(10):
            insert(conn, f"s{i}")
    instance = dg.DagsterInstance.ephemeral()
    [run] = run_cycle(settings, instance=instance).runs
    evaluations = {
        e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed
        for e in instance.all_logs(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations == {
        "row_count_matches_change_log": True,
        "lsns_contiguous": True,
        "manifest_hash_matches": True,
    }


def test_coverage_and_counts_as_functions(tmp_path: Path) -> None:
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"_lsn": pa.array([1, 2, 4], pa.int64())}), path)
    assert not check_lsn_coverage(path, 1, 4, set()).passed  # LSN 3 missing
    assert check_lsn_coverage(path, 1, 4, {3}).passed  # quarantined, so accounted for
    pq.write_table(pa.table({"_lsn": pa.array([2, 1], pa.int64())}), path)
    assert "not strictly increasing" in check_lsn_coverage(path, 1, 2, set()).description
    assert check_row_count(path, 3, 1).passed and not check_row_count(path, 3, 0).passed


def test_coverage_is_checked_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "w.parquet"
    good = pa.table({"_lsn": pa.array(range(1, 11), pa.int64())})
    pq.write_table(good, path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    assert check_lsn_coverage(path, 1, 10, set()).passed
    # Each row group is increasing; the step back is only at a row-group boundary.
    pq.write_table(
        pa.table({"_lsn": pa.array([1, 2, 3, 3, 4, 5], pa.int64())}), path, row_group_size=3
    )
    assert "not strictly increasing" in check_lsn_coverage(path, 1, 6, set()).description
    pq.write_table(good, path, row_group_size=3)
    assert "outside 2..11" in check_lsn_coverage(path, 2, 11, set()).description
