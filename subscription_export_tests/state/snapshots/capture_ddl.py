"""Freeze the DDL an old release ran to create its state tables (test data for the migrations).

Run with an old checkout first on the path, e.g. for the release before alembic (1a8ba31):

    PYTHONPATH=/work/baseline python subscription_export_tests/state/snapshots/capture_ddl.py \
        state_1a8ba31 postgresql://postgres@127.0.0.1:5432/test

It calls that release's `pipeline.init_state_tables` on a scratch SQLite file and a scratch
PostgreSQL schema and writes every CREATE statement it executed, in order, next to this file as
`<name>.sqlite.sql` and `<name>.postgresql.sql`.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import sqlalchemy as sa
from subscription_export.pipeline import init_state_tables  # the old release's layout

HERE = Path(__file__).parent


def captured_ddl(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _keep(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("CREATE"):
            statements.append(statement.strip())

    init_state_tables(engine)
    engine.dispose()
    return statements


def main(name: str, pg_dsn: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        sqlite = captured_ddl(f"sqlite:///{scratch}/state.db")
    schema = f"ddl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = sa.make_url(pg_dsn).set(drivername="postgresql+psycopg")
        postgresql = captured_ddl(url.update_query_dict({"options": f"-csearch_path={schema}"}))
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    for dialect, statements in (("sqlite", sqlite), ("postgresql", postgresql)):
        text = "".join(f"{statement};\n\n" for statement in statements)
        (HERE / f"{name}.{dialect}.sql").write_text(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
