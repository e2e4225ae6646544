"""The benchmarks' change-log fill on PostgreSQL, for any size (the cycle bench's small history)."""

from __future__ import annotations

import sqlalchemy as sa

from subscription_export.bench import fill_change_log
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.helpers import writer


def test_a_small_fill_on_postgresql(pg_url: str) -> None:
    """psycopg sends a small int as smallint: `generate_series(smallint, smallint)` is ambiguous
    to PostgreSQL, so a fill of <= 32,767 changes failed (1M worked: its bound is an int)."""
    engine = writer(pg_url)
    init_demo_source(engine)
    fill_change_log(engine, 120, subscriptions=50)
    with engine.connect() as conn:
        lsns = conn.execute(
            sa.text("SELECT MIN(lsn), MAX(lsn), COUNT(*) FROM subscription_change_log")
        )
        assert tuple(lsns.one()) == (1, 120, 120)
