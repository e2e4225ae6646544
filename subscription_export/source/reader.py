"""Read a contiguous LSN range of the change log in bounded batches (server-side on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.db import is_postgres
from subscription_export.formats.values import to_utc


@dataclass(frozen=True)
class LogRow:
    lsn: int
    op: str
    before: str | None  # JSON text
    after: str | None
    changed_at: dt.datetime | str
    origin: str
    schema_version: int


def _select(postgres: bool) -> sa.TextClause:
    images = "before::text, after::text" if postgres else "before, after"
    return sa.text(
        f"SELECT lsn, op, {images}, changed_at, origin, schema_version"
        " FROM subscription_change_log WHERE lsn BETWEEN :lo AND :hi ORDER BY lsn"
    )


def iter_log_batches(engine: Engine, lo: int, hi: int, batch_size: int) -> Iterator[list[LogRow]]:
    """Yield rows of [lo, hi] in LSN order, at most `batch_size` at a time."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=batch_size).execute(
            _select(is_postgres(engine)), {"lo": lo, "hi": hi}
        )
        for part in result.partitions(batch_size):
            yield [LogRow(*row) for row in part]


def range_stats(engine: Engine, lo: int, hi: int) -> tuple[int, int | None, int | None]:
    """(count, min lsn, max lsn) of sequenced changes in [lo, hi]."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT COUNT(*), MIN(lsn), MAX(lsn) FROM subscription_change_log"
                " WHERE lsn BETWEEN :lo AND :hi"
            ),
            {"lo": lo, "hi": hi},
        ).one()
    return int(row[0]), row[1], row[2]


def schema_versions(engine: Engine, lo: int, hi: int) -> dict[int, int]:
    """Capture schema versions present in [lo, hi] → the first LSN carrying each."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT schema_version, MIN(lsn) FROM subscription_change_log"
                " WHERE lsn BETWEEN :lo AND :hi GROUP BY schema_version ORDER BY schema_version"
            ),
            {"lo": lo, "hi": hi},
        ).all()
    return {int(v): int(first) for v, first in rows}


def changed_at_of(engine: Engine, lsn: int) -> dt.datetime | None:
    with engine.connect() as conn:
        raw = conn.execute(
            sa.text("SELECT changed_at FROM subscription_change_log WHERE lsn = :lsn"), {"lsn": lsn}
        ).scalar()
    return to_utc(raw) if raw is not None else None
