"""`run` and `status` say which backend holds changes back (pid, database, age)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.helpers import insert, writer

pytestmark = pytest.mark.integration


def _settings(pg_url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=pg_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=1_000,
        window_max_age_s=0.0,
    )


def test_status_names_an_open_writer(pg_url: str, tmp_path: Path) -> None:
    settings = _settings(pg_url, tmp_path)
    engine = writer(pg_url)
    init_demo_source(engine)
    _run(["init"], settings, tmp_path)  # status never creates the state DB
    with engine.connect() as open_writer:
        pid = open_writer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        insert(open_writer, "uncommitted")
        report = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
        text = _run(["status"], settings, tmp_path).stdout
        open_writer.rollback()
    # Other tests' sequencers in this database may show too (its advisory lock is per database).
    [holder] = [h for h in report["held_by"] if h["pid"] == pid]
    assert (holder["pid"], holder["database"], holder["effect"]) == (
        pid,
        engine.url.database,
        "uncommitted changes",
    )
    assert f"held by pid {pid} (database {engine.url.database}, transaction open" in text


def test_run_names_the_backend_that_holds_the_sequencer(pg_url: str, tmp_path: Path) -> None:
    settings = _settings(pg_url, tmp_path)
    engine = writer(pg_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "s1")
    # A table lock, not the sequencer's advisory lock: that one is shared by every schema of the
    # database, and holding it for a whole `run` would stall other tests' sequencers.
    with engine.connect() as ddl:
        pid = ddl.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        ddl.execute(sa.text("LOCK TABLE subscription_change_log IN SHARE MODE"))
        result = _run(["run", "--once"], settings, tmp_path)
        ddl.rollback()
    assert "0 new window(s)" in result.stdout
    assert f"changes held back by pid {pid} (database {engine.url.database}" in result.stderr
    assert "ShareLock): blocks the sequencer" in result.stderr
