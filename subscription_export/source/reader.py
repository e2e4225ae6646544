"""Read a contiguous LSN range of the change log in bounded batches (server-side on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.db import is_postgres
from subscription_export.formats.values import to_utc

# One batch of the change log as Arrow: the image is the after-image, or the before-image for a
# delete; changed_at is ISO-8601 text (UTC) on both databases.
LOG_SCHEMA = pa.schema(
    [
        ("lsn", pa.int64()),
        ("op", pa.string()),
        ("image", pa.string()),
        ("changed_at", pa.string()),
        ("origin", pa.string()),
        ("schema_version", pa.int32()),
    ]
)
_COLUMNS = (
    "lsn, op, CASE WHEN op = 'd' THEN before ELSE after END{cast}, {changed}, origin,"
    " schema_version"
)
_PG_CHANGED = "to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


@dataclass(frozen=True)
class LogRow:
    lsn: int
    op: str
    image: str | None  # JSON text
    changed_at: str
    origin: str
    schema_version: int


def log_rows(table: pa.Table) -> list[LogRow]:
    return [LogRow(**row) for row in table.to_pylist()]


def iter_log_tables(engine: Engine, lo: int, hi: int, batch_size: int) -> Iterator[pa.Table]:
    """Yield [lo, hi] in LSN order as Arrow tables of at most `batch_size` rows.

    PostgreSQL streams through COPY into Arrow's CSV reader (no Python object per row);
    SQLite goes through a cursor in batches.
    """
    if is_postgres(engine):
        yield from _rechunk(_copy_tables(engine, lo, hi), batch_size)
        return
    query = (
        f"SELECT {_COLUMNS.format(cast='', changed='changed_at')}"
        " FROM subscription_change_log WHERE lsn BETWEEN ? AND ? ORDER BY lsn"
    )
    with engine.connect() as conn:
        result = conn.exec_driver_sql(query, (lo, hi))
        for part in result.partitions(batch_size):
            columns = list(zip(*part, strict=True))
            yield pa.Table.from_arrays(
                [pa.array(c, f.type) for c, f in zip(columns, LOG_SCHEMA, strict=True)],
                schema=LOG_SCHEMA,
            )


class _CopyStream(io.RawIOBase):
    """A file over COPY's data blocks, for Arrow's streaming CSV reader."""

    def __init__(self, blocks: Iterator[memoryview]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = memoryview(bytes(block))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _copy_tables(engine: Engine, lo: int, hi: int) -> Iterator[pa.Table]:
    select = (
        f"SELECT {_COLUMNS.format(cast='::text', changed=_PG_CHANGED)}"
        f" FROM subscription_change_log WHERE lsn BETWEEN {int(lo)} AND {int(hi)} ORDER BY lsn"
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY ({select}) TO STDOUT WITH (FORMAT csv)") as copy:  # type: ignore[attr-defined]
            reader = pacsv.open_csv(
                io.BufferedReader(_CopyStream(iter(copy)), buffer_size=1 << 20),
                read_options=pacsv.ReadOptions(
                    column_names=LOG_SCHEMA.names, block_size=8 << 20, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=LOG_SCHEMA,
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch], schema=LOG_SCHEMA)
    finally:
        raw.close()


def _rechunk(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    rows = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        while rows >= size:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, rows = [rest], rest.num_rows
    if rows:
        yield pa.concat_tables(pending)


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
