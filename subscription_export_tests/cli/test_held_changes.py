"""`run` and `status` say which backend holds changes back (pid, database, age)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.source.holders import SEQUENCER_LOCK
from subscription_export.source.schema import init_source
from subscription_export_tests.cli.test_cli import _run
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
    init_source(engine)
    with engine.connect() as open_writer:
        pid = open_writer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        insert(open_writer, "uncommitted")
        report = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
        text = _run(["status"], settings, tmp_path).stdout
        open_writer.rollback()
    [holder] = report["held_by"]
    assert (holder["pid"], holder["database"], holder["effect"]) == (
        pid,
        engine.url.database,
        "uncommitted changes",
    )
    assert f"held by pid {pid} (database {engine.url.database}, transaction open" in text


def test_run_names_the_backend_that_holds_the_sequencer(pg_url: str, tmp_path: Path) -> None:
    settings = _settings(pg_url, tmp_path)
    engine = writer(pg_url)
    init_source(engine)
    with engine.begin() as conn:
        insert(conn, "s1")
    with engine.connect() as stuck_sequencer:
        pid = stuck_sequencer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        stuck_sequencer.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": SEQUENCER_LOCK}
        )
        result = _run(["run", "--once"], settings, tmp_path)
        stuck_sequencer.rollback()
    assert "0 new window(s)" in result.stdout
    assert f"changes held back by pid {pid} (database {engine.url.database}" in result.stderr
    assert "advisory): blocks the sequencer" in result.stderr
