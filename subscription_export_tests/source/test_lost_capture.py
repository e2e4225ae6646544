"""A captured table whose triggers are gone (dropped and created again, `DROP TRIGGER`,
PostgreSQL's `DISABLE TRIGGER`) writes nothing to the change log. `run` went on reporting
success while every later change of it was missing from the exports; now `run` exits 3 and
`status` says which table, and `init` reinstalls the triggers and reads the table again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import writer

_DDL = 'CREATE TABLE "Ledger" (id integer PRIMARY KEY, note text)'


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="Ledger",
    )


def _run(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _replayed(settings: Settings) -> dict[int, Any]:
    """The table as a consumer of the Parquet files holds it (last image per key)."""
    rows = [
        r
        for f in sorted((Path(settings.export_dir) / "Ledger_changes").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    held: dict[int, Any] = {}
    for row in sorted(rows, key=lambda r: r["_lsn"]):
        if row["_op"] == "d":
            held.pop(row["id"], None)
        else:
            held[row["id"]] = row["note"]
    return held


def test_a_table_created_again_is_reported_until_init_captures_it(
    source_url: str, tmp_path: Path
) -> None:
    engine = writer(source_url)
    settings = _settings(source_url, tmp_path)
    _run(engine, _DDL)
    run_cli(["init"], settings, tmp_path)
    _run(engine, """INSERT INTO "Ledger" VALUES (1, 'a')""")
    # A migration tool "recreates" the table: its triggers go with it.
    _run(engine, 'DROP TABLE "Ledger"', _DDL, """INSERT INTO "Ledger" VALUES (2, 'b')""")

    result = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "table Ledger is not captured" in " ".join(result.stderr.split())
    shown = " ".join(run_cli(["status"], settings, tmp_path).stdout.split())
    assert "table Ledger is not captured" in shown and "run `subscription-export init`" in shown
    report = json.loads(run_cli(["status", "--json"], settings, tmp_path).stdout)
    assert report["uncaptured_tables"] == ["Ledger"]

    # init reinstalls the triggers and snapshots the table again: row 2 enters the stream.
    run_cli(["init"], settings, tmp_path)
    _run(engine, """UPDATE "Ledger" SET note = 'c' WHERE id = 2""")
    again = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not captured" not in again.stderr
    assert (
        json.loads(run_cli(["status", "--json"], settings, tmp_path).stdout)["uncaptured_tables"]
        == []
    )
    # Row 1 went with the dropped table: init logged its delete, so consumers drop it too.
    assert _replayed(settings) == {2: "c"}


@pytest.mark.integration
def test_disabled_capture_trigger_is_reported(pg_url: str, tmp_path: Path) -> None:
    engine = writer(pg_url)
    settings = _settings(pg_url, tmp_path)
    _run(engine, _DDL)
    run_cli(["init"], settings, tmp_path)
    _run(engine, 'ALTER TABLE "Ledger" DISABLE TRIGGER USER')
    result = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "table Ledger is not captured" in " ".join(result.stderr.split())


def test_init_logs_deletes_for_rows_a_recreated_table_lost_composite_key(
    source_url: str, tmp_path: Path
) -> None:
    """Keys compare as the triggers write them (a JSON array for a composite key): a key the
    new table holds again is not deleted, a key deleted before the drop is not deleted twice."""
    from subscription_export.export.cut import cut_windows
    from subscription_export.export.flow import export_window_file
    from subscription_export.runtime import Project
    from subscription_export.source.schema import init_source
    from subscription_export.source.snapshot import run_snapshot

    engine = writer(source_url)
    ddl = "CREATE TABLE t (region text, n integer, v text, PRIMARY KEY (region, n))"
    _run(engine, ddl)
    init_source(engine, "t")
    _run(
        engine,
        "INSERT INTO t VALUES ('eu', 1, 'a'), ('eu', 2, 'b'), ('us', 1, 'c')",
        "DELETE FROM t WHERE n = 2",
    )
    _run(engine, "DROP TABLE t", ddl, "INSERT INTO t VALUES ('us', 1, 'c2'), ('ap', 5, 'd')")
    init_source(engine, "t")
    run_snapshot(engine, "t")
    project = Project(replace(_settings(source_url, tmp_path), table="t"))
    rows = []
    for window in cut_windows(project).new_windows:
        outcome, _ = export_window_file(project, "parquet", window)
        rows += pq.read_table(outcome.path).to_pylist()
    changes = [
        (r["_op"], r["region"], r["n"], r["v"]) for r in sorted(rows, key=lambda r: r["_lsn"])
    ]
    assert changes[4:] == [
        ("d", "eu", 1, "a"),  # logged by init: gone with the dropped table
        ("r", "ap", 5, "d"),  # the snapshot of the table created again
        ("r", "us", 1, "c2"),
    ]
