"""Read a contiguous LSN range of the change log in bounded batches (server-side on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import is_postgres
from subscription_export.core.prefetch import prefetched
from subscription_export.core.values import to_utc

if TYPE_CHECKING:
    import psycopg
    from psycopg import Copy
    from psycopg.pq.abc import PGconn

# One batch of the change log as Arrow: the image is the after-image, or the before-image for a
# delete; changed_at is ISO-8601 text (UTC) on both databases.
_STORED = pa.schema(
    [
        ("lsn", pa.int64()),
        ("op", pa.string()),
        ("image", pa.string()),
        ("changed_at", pa.string()),
        ("origin", pa.string()),
        ("schema_version", pa.int32()),
    ]
)
# `unreadable`: why the stored image is not text (SQLite keeps bytes that are not UTF-8), else
# null, and `unreadable_field` the image key whose value holds the bad bytes, if one does. Such
# an image is carried as text with the bad bytes escaped (`\xff`), so it can be quarantined.
_UNREADABLE = [("unreadable", pa.string()), ("unreadable_field", pa.string())]
LOG_SCHEMA = pa.schema(list(_STORED) + [pa.field(n, t) for n, t in _UNREADABLE])
_IMAGE = "CASE WHEN op = 'd' THEN before ELSE after END"
_COLUMNS = "lsn, op, {image}, {changed}, origin, schema_version"


@dataclass(frozen=True)
class LogRow:
    lsn: int
    op: str
    image: str | None  # JSON text
    changed_at: str
    origin: str
    schema_version: int
    unreadable: str | None = None
    unreadable_field: str | None = None


def log_rows(table: pa.Table) -> list[LogRow]:
    return [LogRow(**row) for row in table.to_pylist()]


def _of_table(table: str | None, mark: str = ":table") -> str:
    """The filter to one captured table's rows (None: every table's)."""
    return "" if table is None else f" AND source_table = {mark}"


def _table_param(table: str | None) -> dict[str, str]:
    return {} if table is None else {"table": table}


def iter_log_tables(
    engine: Engine, lo: int, hi: int, batch_size: int, table: str | None = None
) -> Iterator[pa.Table]:
    """Yield [lo, hi] in LSN order as Arrow tables of at most `batch_size` rows; `table`: only
    that captured table's rows.

    PostgreSQL streams through COPY into Arrow's CSV reader (no Python object per row);
    SQLite goes through a cursor in batches.
    """
    if is_postgres(engine):
        yield from prefetched(
            _copy_tables(engine, lo, hi, batch_size, table), depth=2, name="change-log-reader"
        )
        return
    # The image as bytes: the driver would fail the whole read on one row that is not UTF-8.
    query = (
        f"SELECT {_COLUMNS.format(image=f'CAST({_IMAGE} AS BLOB)', changed='changed_at')}"
        f" FROM subscription_change_log WHERE lsn BETWEEN ? AND ?{_of_table(table, '?')}"
        " ORDER BY lsn"
    )
    image_at = _STORED.get_field_index("image")
    with engine.connect() as conn:
        result = conn.exec_driver_sql(query, (lo, hi) if table is None else (lo, hi, table))
        for part in result.partitions(batch_size):
            columns = list(zip(*part, strict=True))
            arrays = [
                pa.array(c, f.type)
                for c, f in zip(columns, _STORED, strict=True)
                if f.name != "image"
            ]
            arrays.insert(image_at, pa.array(columns[image_at], pa.binary()))
            yield _decoded(pa.Table.from_arrays(arrays, schema=_STORED.set(image_at, _BYTES)))


_BYTES = pa.field("image", pa.binary())


def _decoded(table: pa.Table) -> pa.Table:
    """The image column as text; one Arrow cast (which checks UTF-8) unless a row is bad."""
    images = table.column("image")
    try:
        text = images.cast(pa.string())
        problems = [pa.nulls(table.num_rows, pa.string())] * 2
    except pa.ArrowInvalid:
        decoded = [_decode(raw) for raw in images.to_pylist()]
        text, *problems = (pa.array(list(c), pa.string()) for c in zip(*decoded, strict=True))
    at = table.schema.get_field_index("image")
    table = table.set_column(at, _STORED.field("image"), text)
    for (name, arrow_type), values in zip(_UNREADABLE, problems, strict=True):
        table = table.append_column(pa.field(name, arrow_type), values)
    return table


def _decode(raw: bytes | None) -> tuple[str | None, str | None, str | None]:
    """(text, why it is not UTF-8, the image key whose value is not) for one stored image."""
    if raw is None:
        return None, None, None
    try:
        return raw.decode("utf-8"), None, None
    except UnicodeDecodeError as exc:
        reason = f"the row image is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:  # the bad bytes become lone surrogates, which json and str keep
        image = json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        image = None
    bad = (
        [k for k, v in image.items() if not _encodes(f"{k}{v}")] if isinstance(image, dict) else []
    )
    return raw.decode("utf-8", "backslashreplace"), reason, bad[0] if bad else None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# PostgreSQL writes CSV with a tab delimiter and \x01 as the quote: a JSON image (never a raw tab,
# newline or control character: jsonb escapes them) is then never quoted, so its `"` are not
# doubled, and any other field that needs quoting still round-trips exactly. Measured on a 1M
# window: 2.4 s of backend CPU against 2.9 s for `,` and `"` (to_char aside).
_CSV_DELIMITER, _CSV_QUOTE = "\t", "\x01"
_CSV_PARSE = pacsv.ParseOptions(
    delimiter=_CSV_DELIMITER, quote_char=_CSV_QUOTE, newlines_in_values=True
)
_CSV_CONVERT = pacsv.ConvertOptions(
    column_types=_STORED, strings_can_be_null=True, quoted_strings_can_be_null=False
)
# changed_at leaves the server as the type's own output (`2026-01-01 00:00:01.5+00`), which
# Arrow's cast and `to_utc` read as they read the ISO form; `to_char` cost ~0.5 s of backend
# CPU per 1M changes. Both settings are local to the read's transaction.
_PG_SESSION = "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO', true)"


def _copy_tables(
    engine: Engine, lo: int, hi: int, batch_size: int, table: str | None
) -> Iterator[pa.Table]:
    """COPY ... TO STDOUT (csv), parsed by Arrow `batch_size` rows at a time.

    The server sends one CopyData message per row, so joining messages gives whole rows and
    each batch is parsed synchronously. (Arrow's streaming CSV reader would read ahead up to
    32 blocks on a background thread: hundreds of MB when the writers are slower than COPY.)
    """
    # COPY takes no parameters: the table name goes in as a quoted literal.
    only = "" if table is None else _of_table(table, _pg_literal(engine, table))
    select = (
        f"SELECT {_COLUMNS.format(image=f'{_IMAGE}::text', changed='changed_at')}"
        f" FROM subscription_change_log WHERE lsn BETWEEN {int(lo)} AND {int(hi)}{only}"
        " ORDER BY lsn"
    )
    options = "FORMAT csv, DELIMITER E'\\t', QUOTE E'\\x01'"
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(_PG_SESSION)
        with cursor.copy(f"COPY ({select}) TO STDOUT WITH ({options})") as copy:  # type: ignore[attr-defined]
            yield from _batched_rows(copy, raw.driver_connection, batch_size)  # type: ignore[arg-type]
    finally:
        raw.close()


def _batched_rows(
    copy: Copy, connection: psycopg.Connection[Any], batch_size: int
) -> Iterator[pa.Table]:
    """The rows of a running COPY TO, parsed `batch_size` at a time.

    Rows already received are taken from libpq directly (`get_copy_data`, without waiting):
    `copy.read()` for every row cost ~0.4 µs more per row, all of it holding the GIL the
    conversion thread needs. `copy.read()` still does the waiting (socket, GIL released)
    and the end of the copy whenever libpq has nothing buffered.
    """
    data, rows = bytearray(), 0
    pgconn = connection.pgconn
    take = pgconn.get_copy_data
    while True:
        size, row = take(1)
        if size == 0:  # nothing buffered: wait for the server
            row = copy.read()
            if not row:
                break
        elif size < 0:  # the copy ended (-1) or failed (-2)
            _end_copy_out(pgconn, size, connection.info.encoding)
            break
        data += row
        rows += 1
        if rows == batch_size:
            yield _parse_csv(data)
            data, rows = bytearray(), 0
    if rows:
        yield _parse_csv(data)


def _end_copy_out(pgconn: PGconn, size: int, encoding: str) -> None:
    """After libpq reported the end of a COPY TO: its results, raising the server's error."""
    import psycopg  # only PostgreSQL reads get here (a SQLite install need not load it)
    from psycopg import pq

    if size == -2:
        raise psycopg.OperationalError(pgconn.get_error_message())
    results = []
    while (result := pgconn.get_result()) is not None:  # all of them: libpq is busy until then
        results.append(result)
    for result in results:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=encoding)


def _pg_literal(engine: Engine, text: str) -> str:
    literal = sa.String().literal_processor(engine.dialect)
    assert literal is not None
    return str(literal(text))


def _parse_csv(data: bytearray) -> pa.Table:
    """PostgreSQL text is always valid UTF-8, so no image is `unreadable`."""
    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        # One block for the whole batch: a row never straddles blocks, however long.
        read_options=pacsv.ReadOptions(
            column_names=_STORED.names, use_threads=False, block_size=len(data) + 1
        ),
        parse_options=_CSV_PARSE,
        convert_options=_CSV_CONVERT,
    )
    for name, arrow_type in _UNREADABLE:
        table = table.append_column(
            pa.field(name, arrow_type), pa.nulls(table.num_rows, arrow_type)
        )
    return table


def range_stats(
    engine: Engine, lo: int, hi: int, table: str | None = None
) -> tuple[int, int | None, int | None]:
    """(count, min lsn, max lsn) of sequenced changes in [lo, hi] (of `table`, if given)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT COUNT(*), MIN(lsn), MAX(lsn) FROM subscription_change_log"
                f" WHERE lsn BETWEEN :lo AND :hi{_of_table(table)}"
            ),
            {"lo": lo, "hi": hi} | _table_param(table),
        ).one()
    return int(row[0]), row[1], row[2]


def census(
    engine: Engine, lo: int, hi: int, table: str | None = None
) -> tuple[int, dict[int, int], int]:
    """(changes of every table in [lo, hi], `table`'s capture schema versions there → the first
    LSN carrying each, `table`'s changes there; every table's when None).

    One scan: the range check and the versions were two, each a full scan of a window that
    spans most of the log (~0.3 s per 1M changes; issue 15).
    """
    mine = "TRUE" if table is None else "source_table = :table"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT schema_version, {mine}, COUNT(*), MIN(lsn) FROM subscription_change_log"
                " WHERE lsn BETWEEN :lo AND :hi GROUP BY 1, 2"
            ),
            {"lo": lo, "hi": hi} | _table_param(table),
        ).all()
    total = sum(int(count) for _v, _mine, count, _first in rows)
    mine_total = sum(int(count) for _v, ours, count, _first in rows if ours)
    return (
        total,
        {int(v): int(first) for v, ours, _count, first in sorted(rows) if ours},
        mine_total,
    )


def changed_at_of(engine: Engine, lsn: int) -> dt.datetime | None:
    with engine.connect() as conn:
        raw = conn.execute(
            sa.text("SELECT changed_at FROM subscription_change_log WHERE lsn = :lsn"), {"lsn": lsn}
        ).scalar()
    return to_utc(raw) if raw is not None else None


def uncaptured_keys(
    engine: Engine,
    lo: int,
    hi: int,
    captured: dict[int, frozenset[str]],
    table: str | None = None,
) -> dict[int, tuple[int, frozenset[str]]]:
    """LSN → (its capture version, the non-null image keys that version does not capture), for
    the changes of [lo, hi] of a version in `captured` that have such keys.

    Only PostgreSQL captures whole rows (`to_jsonb`), so only there can an image carry a column
    that was added after the capture schema its trigger knew (`ALTER TABLE` before `init`); a
    SQLite trigger builds the image from its own column list.
    """
    if not is_postgres(engine) or not captured:
        return {}
    known = json.dumps({str(v): sorted(cols) for v, cols in captured.items()})
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.lsn, l.schema_version, e.key FROM subscription_change_log AS l,"
                f" jsonb_each({_IMAGE}) AS e"
                # The version filter touches l only, so rows of other versions are never
                # expanded by jsonb_each (the whole window's images otherwise: ~5 s at 1M).
                " WHERE l.lsn BETWEEN :lo AND :hi"
                " AND CAST(:known AS jsonb) ? CAST(l.schema_version AS text)"
                " AND e.value <> 'null'::jsonb"
                " AND NOT (CAST(:known AS jsonb) -> CAST(l.schema_version AS text))"
                f" ? e.key{_of_table(table).replace('source_table', 'l.source_table')}"
                " ORDER BY l.lsn"
            ),
            {"lo": lo, "hi": hi, "known": known} | _table_param(table),
        ).all()
    found: dict[int, tuple[int, frozenset[str]]] = {}
    for lsn, version, key in rows:
        _, keys = found.get(int(lsn), (int(version), frozenset()))
        found[int(lsn)] = (int(version), keys | {key})
    return found
