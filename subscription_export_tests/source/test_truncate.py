"""TRUNCATE removes rows without firing row triggers: the capture must still log each removed
row as a delete, or every consumer keeps rows the table no longer holds (and the run reports
success). SQLite has no TRUNCATE; its `DELETE FROM t` without WHERE (the truncate
optimization) must fire the delete triggers all the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import writer

# A composite key, a JSON column (captured as its text) and a column named like the alias a
# statement over the table's rows would use.
_PG = """CREATE TABLE "Ledger" (region text, n integer, captured_row text, doc jsonb,
    PRIMARY KEY (region, n))"""
_SQLITE = """CREATE TABLE "Ledger" (region TEXT, n INTEGER, captured_row TEXT, doc JSON,
    PRIMARY KEY (region, n))"""


def _run(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _exported(url: str, tmp_path: Path) -> list[dict[str, Any]]:
    project = Project(
        Settings(
            source_url=url,
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            export_dir=tmp_path / "exports",
            window_max_age_s=0.0,
            table="Ledger",
        )
    )
    rows = []
    for window in cut_windows(project).new_windows:
        outcome, _ = export_window_file(project, "parquet", window)
        rows += pq.read_table(outcome.path).to_pylist()
    assert list_quarantine(project.state) == []
    return rows


def test_truncate_exports_a_delete_of_every_row(source_url: str, tmp_path: Path) -> None:
    engine = writer(source_url)
    postgres = engine.dialect.name == "postgresql"
    _run(engine, _PG if postgres else _SQLITE)
    init_source(engine, "Ledger")
    _run(
        engine,
        """INSERT INTO "Ledger" VALUES ('eu', 2, 'x', '{"a": 1}'), ('eu', 1, NULL, NULL),
            ('us', 1, 'z', '"text"')""",
        """UPDATE "Ledger" SET captured_row = 'y' WHERE n = 1 AND region = 'eu'""",
    )
    _run(engine, 'TRUNCATE "Ledger"' if postgres else 'DELETE FROM "Ledger"')
    _run(engine, """INSERT INTO "Ledger" VALUES ('eu', 2, 'again', NULL)""")

    rows = _exported(engine.url.render_as_string(hide_password=False), tmp_path)
    assert [r["_op"] for r in rows] == ["c", "c", "c", "u", "d", "d", "d", "c"]
    deletes = [r for r in rows if r["_op"] == "d"]
    # Each delete carries the row's last image (the before-image).
    assert sorted((r["region"], r["n"], r["captured_row"], r["doc"]) for r in deletes) == [
        ("eu", 1, "y", None),
        ("eu", 2, "x", '{"a":1}'),
        ("us", 1, "z", '"text"'),
    ]
    assert all(r["_deleted"] and r["_origin"] == "app" for r in deletes)

    replayed: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["_lsn"]):
        key = (row["region"], row["n"])
        if row["_op"] == "d":
            del replayed[key]
        else:
            replayed[key] = {k: v for k, v in row.items() if not k.startswith("_")}
    assert list(replayed) == [("eu", 2)] and replayed[("eu", 2)]["captured_row"] == "again"
    assert json.loads(replayed[("eu", 2)]["doc"] or "null") is None


@pytest.mark.integration
def test_truncating_a_partition_or_the_partitioned_table_exports_each_row_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Row triggers reach every partition, but a TRUNCATE of one partition fires only that
    partition's statement triggers (and one of the parent fires all of them)."""
    engine = writer(pg_url)
    _run(
        engine,
        """CREATE TABLE "Ledger" (region text, n integer, captured_row text, doc jsonb,
            PRIMARY KEY (region, n)) PARTITION BY LIST (region)""",
        """CREATE TABLE ledger_eu PARTITION OF "Ledger" FOR VALUES IN ('eu')""",
        """CREATE TABLE ledger_us PARTITION OF "Ledger" FOR VALUES IN ('us')
            PARTITION BY LIST (n)""",  # a partition partitioned again: triggers at every level
        "CREATE TABLE ledger_us_1 PARTITION OF ledger_us FOR VALUES IN (1)",
        "CREATE TABLE ledger_us_2 PARTITION OF ledger_us FOR VALUES IN (2)",
    )
    settings = Settings(
        source_url=pg_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="Ledger",
    )
    run_cli(["init"], settings, tmp_path)
    _run(
        engine,
        """INSERT INTO "Ledger" VALUES ('eu', 1, 'a', NULL), ('us', 1, 'b', NULL),
            ('us', 2, 'c', NULL)""",
        "TRUNCATE ledger_us_1",
        'TRUNCATE "Ledger"',
    )
    # A partition created after init: its rows are captured (row triggers are cloned to it),
    # its TRUNCATE is not until init installs the statement trigger on it.
    _run(engine, """CREATE TABLE ledger_ap PARTITION OF "Ledger" FOR VALUES IN ('ap')""")
    gap = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert gap.returncode == 3, gap.stdout + gap.stderr
    assert "TRUNCATE of partition(s) ledger_ap is not captured" in " ".join(gap.stderr.split())
    run_cli(["init"], settings, tmp_path)
    _run(engine, """INSERT INTO "Ledger" VALUES ('ap', 7, 'd', NULL)""", "TRUNCATE ledger_ap")
    done = run_cli(["run", "--once"], settings, tmp_path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    rows = [
        r
        for f in sorted((tmp_path / "exports" / "Ledger_changes").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    changes = [(r["_op"], r["region"], r["n"]) for r in sorted(rows, key=lambda r: r["_lsn"])]
    assert changes == [
        ("c", "eu", 1),
        ("c", "us", 1),
        ("c", "us", 2),
        ("d", "us", 1),  # TRUNCATE ledger_us_1
        ("d", "eu", 1),  # TRUNCATE "Ledger": each remaining row once
        ("d", "us", 2),
        ("c", "ap", 7),
        ("d", "ap", 7),
    ]
