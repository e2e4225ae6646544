"""The table each destination was last delivered from (`destination_tables`), so that a
destination without a `table` key does not silently follow a reordered
SUBSCRIPTION_EXPORT_TABLES to another table (delivery/columns.py checks it)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import insert_ignore
from subscription_export.state.tables import destination_tables


def last_table(engine: Engine, destination: str) -> str | None:
    """The table `destination` was last delivered from; None before its first delivery."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(destination_tables.c.table_name).where(
                destination_tables.c.destination == destination
            )
        ).scalar()


def record_table(engine: Engine, destination: str, table: str) -> str | None:
    """Remember that `destination` is delivered from `table`; the table it was delivered
    from before, when that was another one (None: first time or unchanged)."""
    now = dt.datetime.now(dt.UTC)
    t = destination_tables
    with engine.begin() as conn:
        before = conn.execute(
            sa.select(t.c.table_name).where(t.c.destination == destination)
        ).scalar()
        if before == table:
            return None
        if before is None:
            # Another worker's first delivery of this destination (another window) may
            # record it at the same moment: the destination's windows share one table.
            insert_ignore(
                conn, t, {"destination": destination, "table_name": table, "updated_at": now}
            )
            return None
        conn.execute(
            sa.update(t)
            .where(t.c.destination == destination)
            .values(table_name=table, updated_at=now)
        )
    return before
