"""`run --once` must not report success while a configuration error keeps it from
reconciling: the ERP's users' edits would never come back, cycle after cycle, exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.reconcile.test_reconcile import record, seeded, world


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    return Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY", "lastwriterwins", "CONFLICT_STRATEGY"),
        ("SUBSCRIPTION_EXPORT_CONFLICTS", "missing-policies.toml", "missing-policies.toml"),
    ],
)
def test_a_cycle_that_cannot_load_its_conflict_policies_does_not_exit_0(
    settings: Settings, tmp_path: Path, variable: str, value: str, named: str
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        seeded(w)
        w.remote_edit("erp", "s1", 1, status="past_due")
        env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(w.destinations_path), variable: value}
        result = run_cli(["run", "--once"], settings, tmp_path, check=False, env=env)
        assert w.source_record("s1") == record()  # the ERP's edit did not come back...
        assert result.returncode != 0, result.stdout + result.stderr  # ...so this is no success
        assert "not reconciled" in result.stderr and named in result.stderr, result.stderr


def test_a_cycle_with_no_new_window_and_a_broken_destinations_file_does_not_exit_0(
    settings: Settings, tmp_path: Path
) -> None:
    """No window to export, so no sync step fails on the file: the reconcile step says it."""
    broken = tmp_path / "destinations.toml"
    broken.write_text('[destinations.erp]\nbase_url = "http://127.0.0.1:9\n')  # unclosed string
    result = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "not reconciled" in result.stderr and "not valid TOML" in result.stderr, result.stderr
