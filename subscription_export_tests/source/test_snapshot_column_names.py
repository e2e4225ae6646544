"""A table with a column named like the snapshot's row alias (`s`): the snapshot must still
copy whole rows. On PostgreSQL `to_jsonb(s)` read the column `s`, not the row: with `s` an
object the image was that object (every other column exported as null, nothing quarantined),
with text a JSON array, with null no image at all."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.columns import METADATA_COLUMNS
from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.schema import METADATA_FIELDS
from subscription_export.runtime import Project
from subscription_export.source.catalog import ReservedColumnError
from subscription_export.source.schema import init_source
from subscription_export.source.snapshot import run_snapshot
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.helpers import writer

ROWS = [
    {"id": 1, "s": {"id": 1, "name": "from s"}, "name": "alpha"},
    {"id": 2, "s": None, "name": "beta"},
    {"id": 3, "s": "text", "name": "gamma"},
]


def test_a_column_named_s_does_not_replace_the_snapshot_row(
    source_url: str, tmp_path: Path
) -> None:
    engine = writer(source_url)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, s jsonb, name text)"
            if postgres
            else "CREATE TABLE accounts (id INTEGER PRIMARY KEY, s JSON, name TEXT)"
        )
        for row in ROWS:
            conn.execute(
                sa.text("INSERT INTO accounts (id, s, name) VALUES (:id, :s, :name)"),
                {**row, "s": None if row["s"] is None else json.dumps(row["s"])},
            )
    init_source(engine, "accounts")
    assert run_snapshot(engine, "accounts").rows_done == len(ROWS)

    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="accounts",
    )
    project = Project(settings)
    exported = []
    for window in cut_windows(project).new_windows:
        outcome, _ = export_window_file(project, "parquet", window)
        exported += pq.read_table(outcome.path).to_pylist()
    assert list_quarantine(project.state) == []
    assert [(r["_op"], r["id"], r["name"]) for r in exported] == [
        ("r", row["id"], row["name"]) for row in ROWS
    ]
    assert [None if r["s"] is None else json.loads(r["s"]) for r in exported] == [
        row["s"] for row in ROWS
    ]


def test_a_column_named_like_an_export_metadata_column_is_refused_at_init(
    source_url: str,
) -> None:
    """A soft-delete flag `_deleted` (or `_op`, `_lsn`...) would be a second column of that
    name in every file: JSON Lines readers keep the last key (the table's `_deleted` over the
    change's), Parquet readers refuse the file or pick either. Refused on one line instead."""
    engine = writer(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (id integer PRIMARY KEY, _deleted boolean, name text)"
        )
    with pytest.raises(ReservedColumnError, match=r"'_deleted'.*RENAME COLUMN"):
        init_source(engine, "accounts")
    assert tuple(f.name for f in METADATA_FIELDS) == METADATA_COLUMNS  # the names refused
