"""An export killed mid-write: the next run takes its lease over at once, removes the temp
files the dead writer left (never a live writer's), and writes the exact files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.layout import ASSET_FOR_FORMAT
from subscription_export.formats.manifest import manifest_path
from subscription_export.runtime import Project
from subscription_export.state.leases import current_holder
from subscription_export_tests.helpers import insert, writer
from subscription_export_tests.state.test_leases import hold_then_kill


def test_a_killed_writers_lease_and_temp_files_are_taken_over(
    settings: Settings, tmp_path: Path
) -> None:
    with writer(settings.source_url).begin() as conn:
        for i in range(50):
            insert(conn, f"s{i}")
    project = Project(replace(settings, lease_wait_s=30))
    [window] = cut_windows(project).new_windows
    target = project.file_path("parquet", window.key)
    manifest = manifest_path(settings.export_dir, ASSET_FOR_FORMAT["parquet"], window.key)
    dead = hold_then_kill(settings.state_url, f"parquet:{window.key}")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target.parent.mkdir(parents=True)
        manifest.parent.mkdir(parents=True)
        leftovers = [p.with_name(f".{p.name}.{dead}.tmp") for p in (target, manifest)]
        writing = target.with_name(f".{target.name}.{live.pid}.tmp")  # a live writer's
        for path in [*leftovers, writing]:
            path.write_bytes(b"half a file")

        started = time.monotonic()
        outcome, mark = export_window_file(project, "parquet", window)
        assert time.monotonic() - started < 10
    finally:
        live.kill()
        live.wait()
    assert mark == window.hi and outcome.rows == 50
    assert not any(p.exists() for p in leftovers)
    assert writing.read_bytes() == b"half a file"
    assert current_holder(project.state, f"parquet:{window.key}") is None
    fresh, _ = export_window_file(
        Project(replace(settings, export_dir=tmp_path / "fresh")), "parquet", window
    )
    assert fresh.sha256 == outcome.sha256
