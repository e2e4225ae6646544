"""Hostile column names: captured and exported under their real names, never run as SQL.

A column name is data from the catalog. Anyone allowed to `ALTER TABLE subscriptions` must not
be able to make the capture triggers run statements of their choosing.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.helpers import insert, writer

# Every one fits PostgreSQL's 63-byte identifier limit, so both databases keep it as written.
HOSTILE_NAMES = (
    "it's",
    'say "hi"',
    "a;b -- c",
    "back\\slash\\",
    "x'); DELETE FROM victim; --",
    'q"); DELETE FROM victim; --',
    "/* c */ tab\there",
    "prix € ünïcødé 価格",
    "50% off? :param %(x)s",
)
# The attack of issue 12 item 10: closes the trigger's json_object(), the INSERT, runs a
# statement, then re-opens a call so the rest of the trigger still parses (SQLite only: it is
# longer than PostgreSQL's identifiers).
SQLITE_INJECTION = "p', 1), 'now', 'app', 1); DELETE FROM victim; SELECT coalesce(json_object('q"


def _add_columns(engine: sa.Engine, names: tuple[str, ...]) -> None:
    quote = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE victim (id integer)"))
        conn.execute(sa.text("INSERT INTO victim VALUES (1)"))
        for name in names:
            # Not sa.text(): it would take ":param" in a name for a bind parameter.
            conn.exec_driver_sql(f"ALTER TABLE subscriptions ADD COLUMN {quote(name)} TEXT")


def _victims(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM victim")).scalar_one())


def _set(engine: sa.Engine, sub_id: str, values: dict[str, str]) -> None:
    table = sa.table("subscriptions", sa.column("id"), *(sa.column(n) for n in values))
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.id == sub_id).values(values))


def _export_all(project: Project) -> None:
    for window in cut_windows(project).new_windows:
        for fmt in ("parquet", "csv", "jsonl"):
            export_window_file(project, fmt, window)


def test_a_column_name_cannot_inject_sql_into_the_sqlite_triggers(sqlite_url: str) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    _add_columns(engine, (SQLITE_INJECTION,))
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "s1")
    assert _victims(engine) == 1
    _set(engine, "s1", {SQLITE_INJECTION: "payload"})
    assert _victims(engine) == 1
    with engine.connect() as conn:
        images = conn.execute(
            sa.text("SELECT after FROM subscription_change_log ORDER BY lsn")
        ).scalars()
        assert [json.loads(i)[SQLITE_INJECTION] for i in images] == [None, "payload"]


def test_hostile_column_names_are_captured_and_exported_as_written(settings: Settings) -> None:
    engine = writer(settings.source_url)
    _add_columns(engine, HOSTILE_NAMES)
    schema = init_demo_source(engine)
    assert [c.name for c in schema.columns[-len(HOSTILE_NAMES) :]] == list(HOSTILE_NAMES)
    assert _victims(engine) == 1
    values = {name: f"value {i} of {name}" for i, name in enumerate(HOSTILE_NAMES)}
    with engine.begin() as conn:
        insert(conn, "s1")
    _set(engine, "s1", values)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM subscriptions WHERE id = 's1'"))
    assert _victims(engine) == 1

    _export_all(Project(settings))
    expected = {name: [None, value, value] for name, value in values.items()}
    [parquet] = (settings.export_dir / "subscription_changes").glob("*.parquet")
    table = pq.read_table(parquet)
    assert {name: table.column(name).to_pylist() for name in HOSTILE_NAMES} == expected
    [jsonl] = (settings.export_dir / "subscription_changes_jsonl").glob("*.jsonl")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {name: [line[name] for line in lines] for name in HOSTILE_NAMES} == expected
    [csv] = (settings.export_dir / "subscription_changes_csv").glob("*.csv")
    read = pacsv.read_csv(
        csv,
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(values, pa.string()), strings_can_be_null=True
        ),
    )
    assert {name: read.column(name).to_pylist() for name in HOSTILE_NAMES} == expected


_REQUIRED = {
    "user_id": "u1",
    "name": "Plan",
    "amount": "9.99",
    "currency": "EUR",
    "billing_cycle": "monthly",
    "status": "active",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_write_back_sets_a_hostile_column(settings: Settings, name: str) -> None:
    """The reconcile writes a remote value back into the source row, naming the column."""
    from subscription_export.reconcile.source_side import write_local

    engine = writer(settings.source_url)
    _add_columns(engine, (name,))
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "s1")
    new_row = {**_REQUIRED, "id": "s2", name: "new"}
    types = dict.fromkeys(new_row, "text")
    with engine.begin() as conn:
        write_local(conn, "s1", {"id": "s1", name: "from the ERP"}, True, types, "erp")
        write_local(conn, "s2", new_row, False, types, "erp")
    table = sa.table("subscriptions", sa.column("id"), sa.column(name))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c[name]).order_by(table.c.id)).all()
    assert [tuple(r) for r in rows] == [("s1", "from the ERP"), ("s2", "new")]
    assert _victims(engine) == 1
