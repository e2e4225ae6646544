"""`verify` re-hashes the files it finds; a window whose file and manifest are both gone (an
object-store lifecycle rule, a wrong `rm`) left nothing to find, so it passed: exit 0 while
the state records the window as exported. The state's record is what must be there."""

from __future__ import annotations

from pathlib import Path

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.manifest import manifest_path
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import insert, writer


def test_a_recorded_window_whose_file_and_manifest_are_gone_is_drift(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
    )
    project = Project(settings)
    windows = []
    for sid in ("a", "b"):
        with engine.begin() as conn:
            insert(conn, sid)
        [window] = cut_windows(project).new_windows
        for fmt in FORMATS:
            export_window_file(project, fmt, window)
        windows.append(window)
    assert run_cli(["verify"], settings, tmp_path).returncode == 0

    gone = windows[0].key
    project.file_path("csv", gone).unlink()
    manifest_path(settings.export_dir, "subscription_changes_csv", gone).unlink()
    result = run_cli(["verify"], settings, tmp_path, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"subscription_changes_csv/{gone}" in result.stdout, result.stdout
    assert "5/6 file(s)" in result.stdout, result.stdout
