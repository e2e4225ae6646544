"""PostgreSQL cuts identifiers at 63 bytes. Two captured tables whose names share a long start
got one capture function (`subscription_capture_{table}` cut short), the second `init`
replaced the first's, and the first table's changes were logged - and exported - as the
second's, with no error anywhere."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.datasets import TableDataset
from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.installed import uncaptured_tables
from subscription_export.source.schema import init_tables
from subscription_export_tests.helpers import writer

# 54 characters each, the same up to the last; the second with a multi-byte character, cut
# on a character boundary.
TABLES = (
    "customer_subscription_billing_adjustments_history_2024",
    "customer_subscription_billing_adjustments_history_ü025",
)


@pytest.mark.integration
def test_long_table_names_keep_their_own_capture(pg_url: str, tmp_path: Path) -> None:
    engine = writer(pg_url)
    quote = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"CREATE TABLE {quote(table)} (id integer PRIMARY KEY, v text)")
    init_tables(engine, TABLES)
    with engine.begin() as conn:
        for i, table in enumerate(TABLES):
            conn.exec_driver_sql(f"INSERT INTO {quote(table)} VALUES ({i}, 'row of {table}')")
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT source_table, after ->> 'v' FROM subscription_change_log ORDER BY id")
        ).all()
    assert [tuple(r) for r in logged] == [(t, f"row of {t}") for t in TABLES]
    assert uncaptured_tables(engine, TABLES) == []

    project = Project(
        Settings(
            source_url=pg_url,
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            export_dir=tmp_path / "exports",
            window_max_age_s=0.0,
            tables=",".join(TABLES),
        )
    )
    [window] = cut_windows(project).new_windows
    for table in TABLES:
        outcome, _ = export_window_file(project, "parquet", window, dataset=TableDataset(table))
        assert pq.read_table(outcome.path).column("v").to_pylist() == [f"row of {table}"]
