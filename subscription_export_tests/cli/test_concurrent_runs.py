"""Two real processes exporting at once: one window (serialized by the lease) or two windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.formats.writers import sha256_of
from subscription_export.runtime import Project
from subscription_export.state.leases import try_acquire
from subscription_export.state.progress import completed_keys
from subscription_export_tests.helpers import insert, writer

CLI = [sys.executable, "-m", "subscription_export.cli"]


def _start(settings: Settings, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env(), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    return subprocess.Popen(
        [*CLI, "run", "--json", "--quiet", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _windows(settings: Settings, rows: int) -> list[str]:
    with writer(settings.source_url).begin() as conn:
        for i in range(rows):
            insert(conn, f"s{i}")
    return [w.key for w in cut_windows(Project(settings)).new_windows]


def test_two_processes_one_window(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, window_max_changes=3_000)
    [key] = _windows(settings, 3_000)
    procs = [_start(settings, tmp_path, "--window", key) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["runs"][0]["success"]
    project = Project(settings)
    assert project.watermarks.all() == {"csv": 3000, "jsonl": 3000, "parquet": 3000}
    assert completed_keys(project.state, "parquet") == {key}
    parquet = settings.export_dir / "subscription_changes" / f"{key}.parquet"
    fresh = replace(settings, export_dir=tmp_path / "fresh")
    from subscription_export.export.flow import export_window_file
    from subscription_export.state.windows import find_window

    outcome, _ = export_window_file(Project(fresh), "parquet", find_window(project.state, key))
    assert sha256_of(parquet) == outcome.sha256  # no torn or mixed file
    assert not list(parquet.parent.glob(".*.tmp"))


def test_two_processes_two_windows(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, window_max_changes=1_500)
    first, second = _windows(settings, 3_000)
    procs = [_start(settings, tmp_path, "--window", k) for k in (second, first)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert Project(settings).watermarks.all() == {"csv": 3000, "jsonl": 3000, "parquet": 3000}


def test_busy_window_gives_a_clear_message(settings: Settings, tmp_path: Path) -> None:
    [key] = _windows(settings, 10)
    project = Project(settings)
    assert try_acquire(project.state, f"parquet:{key}", "run 1234 (other host)") is None
    proc = _start(replace(settings, lease_wait_s=0.0), tmp_path, "--window", key)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 3  # an operator must act (README: exit codes)
    assert "is being exported by run 1234 (other host)" in err
    assert project.watermarks.all() == {}
