"""TRUNCATE removes rows without firing row triggers: the capture must still log each removed
row as a delete, or every consumer keeps rows the table no longer holds (and the run reports
success). SQLite has no TRUNCATE; its `DELETE FROM t` without WHERE (the truncate
optimization) must fire the delete triggers all the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export.state.quarantine import list_quarantine
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
