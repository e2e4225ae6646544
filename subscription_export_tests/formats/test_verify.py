"""`verify` and the window checks catch drift, gaps and count mismatches."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subscription_export.core.settings import Settings, replace
from subscription_export.defs.runner import run_cycle
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.verify import check_lsn_coverage, check_manifest, check_row_count
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export_tests.cli_run import run_cli
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
    env = {"PATH": "/usr/bin:/bin"}
    ok = run_cli(["verify"], settings, tmp_path, False, env, inherit_env=False)
    assert ok.returncode == 0 and "3/3 file(s) match" in ok.stdout
    csv = settings.export_dir / "subscription_changes_csv" / f"{key}.csv"
    csv.write_bytes(csv.read_bytes().replace(b"Plan", b"PLAN", 1))
    drift = run_cli(["verify"], settings, tmp_path, False, env, inherit_env=False)
    assert drift.returncode == 1 and "DRIFT" in drift.stdout and "2/3" in drift.stdout


def test_a_lossy_export_moves_nothing_and_stops_downstream(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (simulated) exporter bug that loses a row: the window is not recorded, no watermark
    moves, CSV/JSONL never run, and the step is not retried (it would fail the same way)."""
    import subscription_export.export.flow as pipeline

    real_stream = pipeline.stream_window

    def lossy_stream(project, window, **options):  # type: ignore[no-untyped-def]
        stream = real_stream(project, window, **options)
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
        "changes_not_all_quarantined": True,
        "snapshot_finished": True,
        "capture_installed": True,
        "no_records_held_back": True,  # on each destination's sync asset
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


def _export_windows(settings: Settings, n: int) -> list[str]:
    """`n` changes in windows of 5, exported in every format without Dagster."""
    with writer(settings.source_url).begin() as conn:
        for i in range(n):
            insert(conn, f"s{i}")
    project = Project(replace(settings, window_max_changes=5))
    keys = []
    for window in cut_windows(project).new_windows:
        for fmt in FORMATS:
            export_window_file(project, fmt, window)
        keys.append(window.key)
    return keys


def _verify(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    folder = Path(str(settings.export_dir)).parent  # the test's tmp_path
    return run_cli(["verify", *args], settings, folder, False, env, inherit_env=False)


def _drift_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("DRIFT")]


@pytest.mark.parametrize("source_url", ["sqlite"], indirect=True)
def test_verify_reports_every_broken_window_and_goes_on(settings: Settings) -> None:
    first, second = _export_windows(settings, 10)
    manifests = settings.export_dir / "_manifests"
    (manifests / "subscription_changes_csv" / f"{first}.json").unlink()  # file, no manifest
    (manifests / "subscription_changes" / f"{second}.json").write_text('{"file": {"pa')
    lacking = manifests / "subscription_changes_jsonl" / f"{first}.json"
    content = json.loads(lacking.read_text())
    del content["file"]["sha256"]
    lacking.write_text(json.dumps(content))
    (settings.export_dir / "subscription_changes_jsonl" / f"{second}.jsonl").unlink()

    result = _verify(settings)
    assert result.returncode == 1, result.stderr
    assert "2/6 file(s) match their manifests" in result.stdout
    drift = _drift_lines(result.stdout)
    assert len(drift) == 4
    [no_manifest] = [line for line in drift if f"subscription_changes_csv/{first}.csv" in line]
    assert "has no manifest" in no_manifest
    [corrupt] = [line for line in drift if f"subscription_changes/{second}.json" in line]
    assert "not valid JSON" in corrupt
    [fields] = [line for line in drift if f"subscription_changes_jsonl/{first}.json" in line]
    assert "file.sha256" in fields
    [gone] = [line for line in drift if f"subscription_changes_jsonl/{second}.jsonl" in line]
    assert "is missing" in gone


@pytest.mark.parametrize("source_url", ["sqlite"], indirect=True)
def test_verify_one_window_whose_manifests_are_all_gone(settings: Settings) -> None:
    [key] = _export_windows(settings, 3)
    for manifest in (settings.export_dir / "_manifests").glob(f"*/{key}.json"):
        manifest.unlink()
    result = _verify(settings, "--window", key)
    assert result.returncode == 1, result.stderr
    assert len(_drift_lines(result.stdout)) == 3
    assert "0/3 file(s) match their manifests" in result.stdout


def test_check_manifest_reports_a_manifest_it_cannot_use(tmp_path: Path) -> None:
    """The asset check `manifest_hash_matches` fails (rather than erroring) on these too."""
    manifest = tmp_path / "_manifests" / "subscription_changes" / "k.json"
    assert "is missing" in check_manifest(tmp_path, manifest).description
    manifest.parent.mkdir(parents=True)
    for text, reason in [
        ("[1, 2]", "file.path"),
        ('{"file": {"path": "x", "bytes": "12", "sha256": "ab"}}', "file.bytes"),
        ("\xff", "not valid JSON"),
    ]:
        manifest.write_text(text, encoding="latin-1")
        outcome = check_manifest(tmp_path, manifest)
        assert not outcome.passed and reason in outcome.description
