"""The online snapshot: rows that existed before capture enter the stream as `op = 'r'`.

Anchor: Debezium's incremental snapshots and Netflix's DBLog, adapted to a trigger-fed change
log. The table is read in primary-key chunks; each chunk is ONE short transaction that

1. reads the chunk's upper key (the N-th key after the last one done),
2. PostgreSQL: takes the sequencer's advisory lock, numbers the committed change-log rows still
   without an LSN, then copies every row in (last, upper] into the change log as an `r` row
   with the next LSNs, in key order (after-image = the row, before = NULL, origin `app`);
   SQLite: the same copy inside `BEGIN IMMEDIATE`, LSNs `MAX(lsn) + row_number()`,
3. records (last key = upper, rows, chunks) in `subscription_snapshot_progress`.

Why a key's last row in LSN order equals the table while the application keeps writing (full
argument: docs/architecture.md, "Online snapshot"): every change committed before the chunk's
numbering gets an LSN below the chunk's rows, every later one (invisible to it) an LSN above
them, from a sequencer after the commit; the `r` row is the key's state at the INSERT, taken
after the numbering. So the last row of a key is either its last change or an `r` row holding
that change's result. No row lock is taken; the table's ACCESS SHARE lock and the advisory
lock end with the chunk.

A kill at any point loses at most the chunk in flight (rolled back); the next run resumes
after the last committed chunk because its progress was committed with its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import is_postgres
from subscription_export.core.errors import SchemaMissingError
from subscription_export.core.stopping import stoppable_sleep
from subscription_export.source.catalog import read_table
from subscription_export.source.pg_image import pg_row_image
from subscription_export.source.schema import (
    CaptureSql,
    latest_capture_schema,
    sqlite_row_image,
)
from subscription_export.source.sequencer import number_committed, take_sequencer_lock
from subscription_export.source.snapshot_log import PROGRESS, now_sql

# 1M rows, shared 2-core machine: 2048-row chunks ran at 0.42x a bare INSERT … SELECT of the
# whole table, 10000-row chunks at 0.95x (a chunk's fixed cost: progress, catalog, upper key).
# Writers never wait for a chunk (no row locks); the sequencer waits at most one (~0.1-0.3 s).
DEFAULT_CHUNK = 10_000
APPLICATION_NAME = "subscription-export snapshot"  # how the snapshot shows in pg_stat_activity
_RETRY_SQLSTATES = {"40P01", "40001"}  # deadlock with a writer / serialization: redo the chunk
_MAX_RETRIES = 20


@dataclass(frozen=True)
class SnapshotProgress:
    table: str
    rows_done: int
    chunks_done: int
    last_key: str | None
    started_at: str
    finished_at: str | None
    remaining: int | None = None  # rows after last_key when last counted (an estimate)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"finished": self.finished}


def _progress(conn: Connection, table: str, lock: bool = False) -> SnapshotProgress | None:
    suffix = " FOR UPDATE" if lock and conn.dialect.name == "postgresql" else ""
    row = conn.execute(
        sa.text(
            "SELECT table_name, rows_done, chunks_done, last_key, CAST(started_at AS TEXT),"
            f" CAST(finished_at AS TEXT) FROM {PROGRESS} WHERE table_name = :t{suffix}"
        ),
        {"t": table},
    ).first()
    return None if row is None else SnapshotProgress(*row)


def snapshot_progress(engine: Engine, table: str = "subscriptions") -> SnapshotProgress | None:
    """The recorded progress of `table`'s snapshot, None if none was ever recorded."""
    if not sa.inspect(engine).has_table(PROGRESS):
        return None
    with engine.connect() as conn:
        return _progress(conn, table)


def unfinished_line(table: str, rows_done: int) -> str:
    """What `run`, `status` and the Dagster check say about a table whose snapshot is not
    finished."""
    return (
        f"snapshot of {table} unfinished ({rows_done} rows so far): rows that existed"
        " before `init` are missing from the exports; run"
        f" `subscription-export snapshot --table {table}`"
    )


def unfinished(engine: Engine, table: str) -> str | None:
    """`unfinished_line` when `table`'s snapshot was started but not finished (an `init`
    killed mid-snapshot: the rows it has not reached are in no export yet), else None."""
    progress = snapshot_progress(engine, table)
    if progress is None or progress.finished:
        return None
    return unfinished_line(table, progress.rows_done)


def restart_snapshot(engine: Engine, table: str = "subscriptions") -> None:
    """Forget what was done: the next run reads the whole table again (a re-snapshot)."""
    _require_capture(engine)
    now = now_sql(is_postgres(engine))
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {PROGRESS} WHERE table_name = :t"), {"t": table})
        conn.execute(
            sa.text(f"INSERT INTO {PROGRESS} (table_name, started_at) VALUES (:t, {now})"),
            {"t": table},
        )


def _require_capture(engine: Engine) -> None:
    if not sa.inspect(engine).has_table(PROGRESS):
        raise SchemaMissingError(
            f"the source at {engine.url.render_as_string()} has no snapshot progress table;"
            " run `subscription-export init` first"
        )


@dataclass(frozen=True)
class _Chunking:
    """How one table's chunks are read: its key (single or composite, in key order), the
    change log's key text and the row image, built exactly as the capture triggers build
    them (source/schema.py), so an `r` row and a trigger row of one row are the same."""

    table: str  # quoted
    key: tuple[str, ...]  # quoted key columns
    key_text: str  # over alias `s`
    image: str  # over alias `s`
    version: int
    name: str  # the table's name, as the change log's `source_table` holds it

    @classmethod
    def of(cls, conn: Connection, table: str) -> _Chunking:
        latest = latest_capture_schema(conn, table)
        if latest is None:
            raise SchemaMissingError(
                f"no capture schema for table {table!r}; run `subscription-export init` first"
            )
        shape = read_table(conn, table, {c.name: c.type for c in latest.columns})
        sql = CaptureSql(conn.dialect)
        postgres = conn.dialect.name == "postgresql"
        image = (
            pg_row_image(shape.as_text, "s", sql, alias=True)
            if postgres
            else sqlite_row_image(latest.columns, "s", sql)
        )
        return cls(
            sql.ident(table),
            tuple(sql.ident(k) for k in shape.key),
            sql.key_text(shape.key, "s"),
            image,
            latest.version,
            table,
        )

    @property
    def order(self) -> str:
        return ", ".join(f"s.{k}" for k in self.key)

    def _row(self, prefix: str) -> str:
        return "(" + ", ".join(f":{prefix}{i}" for i in range(len(self.key))) + ")"

    def within(self, last: str | None, upper: str | None) -> tuple[str, dict[str, Any]]:
        """`WHERE` over alias `s` for keys in (last, upper] (row-value comparison: composite
        keys order as the primary-key index does), and its parameters."""
        keys = f"({self.order})"
        clauses, params = [], {}
        for prefix, op, bound in (("l", ">", last), ("u", "<=", upper)):
            if bound is None:
                continue
            clauses.append(f"{keys} {op} {self._row(prefix)}")
            values = json.loads(bound)
            params |= {f"{prefix}{i}": v for i, v in enumerate(values)}
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _upper_key(conn: Connection, chunking: _Chunking, last: str | None, size: int) -> str | None:
    """The key of the `size`-th row after `last` (or of the last row), as a JSON array."""
    where, params = chunking.within(last, None)
    descending = ", ".join(f"k.{k} DESC" for k in chunking.key)
    names = ", ".join(f"k.{k}" for k in chunking.key)
    row = conn.execute(
        sa.text(
            f"SELECT {names} FROM (SELECT {chunking.order} FROM"
            f" {chunking.table} AS s{where} ORDER BY {chunking.order} LIMIT :n) AS k"
            f" ORDER BY {descending} LIMIT 1"
        ),
        params | {"n": size},
    ).first()
    return None if row is None else json.dumps(list(row), default=str)


def _copy_chunk_pg(conn: Connection, chunking: _Chunking, last: str | None, upper: str) -> int:
    """The chunk's rows with their LSNs already set, so the sequencer never rewrites them (an
    UPDATE is a second heap tuple and index entries per row). Holding the sequencer's lock,
    the committed rows still waiting are numbered first, then the chunk takes the next LSNs in
    key order; why that keeps each key's last row equal to the table: module docstring."""
    take_sequencer_lock(conn)  # taken last: the lock is held for the numbering and the insert
    number_committed(conn)
    where, params = chunking.within(last, upper)
    return conn.execute(
        sa.text(
            "INSERT INTO subscription_change_log"
            " (lsn, op, subscription_id, before, after, origin, schema_version, source_table)"
            f" SELECT top.lsn + row_number() OVER (ORDER BY {chunking.order}), 'r',"
            f" {chunking.key_text}, NULL, {chunking.image}, 'app', :v, :source"
            f" FROM {chunking.table} AS s,"
            " (SELECT COALESCE(MAX(lsn), 0) AS lsn FROM subscription_change_log) AS top"
            f"{where} ORDER BY {chunking.order}"
        ),
        params | {"v": chunking.version, "source": chunking.name},
    ).rowcount


def _copy_chunk_sqlite(conn: Connection, chunking: _Chunking, last: str | None, upper: str) -> int:
    base = conn.execute(
        sa.text("SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log")
    ).scalar_one()
    where, params = chunking.within(last, upper)
    return conn.execute(
        sa.text(
            "INSERT INTO subscription_change_log"
            " (lsn, op, subscription_id, before, after, changed_at, origin, schema_version,"
            " source_table)"
            f" SELECT :base + row_number() OVER (ORDER BY {chunking.order}), 'r',"
            f" {chunking.key_text}, NULL, {chunking.image}, {now_sql(False)}, 'app', :v,"
            " :source"
            f" FROM {chunking.table} AS s{where} ORDER BY {chunking.order}"
        ),
        params | {"base": int(base), "v": chunking.version, "source": chunking.name},
    ).rowcount


def _one_chunk(engine: Engine, table: str, size: int) -> SnapshotProgress | None:
    """Run the next chunk in one transaction; its progress, or None when none was recorded."""
    postgres = is_postgres(engine)
    with engine.begin() as conn:
        if postgres:  # names the chunk's backend in pg_stat_activity, for this transaction only
            conn.execute(
                sa.text("SELECT set_config('application_name', :n, true)"), {"n": APPLICATION_NAME}
            )
        done = _progress(conn, table, lock=True)  # also keeps two snapshot runs apart
        if done is None or done.finished:
            return done
        chunking = _Chunking.of(conn, table)
        upper = _upper_key(conn, chunking, done.last_key, size)
        if upper is None:
            conn.execute(
                sa.text(
                    f"UPDATE {PROGRESS} SET finished_at = {now_sql(postgres)} WHERE table_name = :t"
                ),
                {"t": table},
            )
            return _progress(conn, table)
        copy = _copy_chunk_pg if postgres else _copy_chunk_sqlite
        rows = copy(conn, chunking, done.last_key, upper)
        conn.execute(
            sa.text(
                f"UPDATE {PROGRESS} SET last_key = :k, rows_done = rows_done + :n,"
                " chunks_done = chunks_done + 1 WHERE table_name = :t"
            ),
            {"k": upper, "n": rows, "t": table},
        )
        return _progress(conn, table)


def _chunk_with_retry(engine: Engine, table: str, size: int) -> SnapshotProgress | None:
    for attempt in range(_MAX_RETRIES):
        try:
            return _one_chunk(engine, table, size)
        except sa.exc.OperationalError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state not in _RETRY_SQLSTATES or attempt == _MAX_RETRIES - 1:
                raise
            stoppable_sleep(0.01 * (attempt + 1))  # a writer held a row of the chunk: redo it
    return None  # unreachable


def _remaining(engine: Engine, table: str, last: str | None) -> int:
    with engine.connect() as conn:
        chunking = _Chunking.of(conn, table)
        where, params = chunking.within(last, None)
        return int(
            conn.execute(
                sa.text(f"SELECT COUNT(*) FROM {chunking.table} AS s{where}"), params
            ).scalar_one()
        )


def run_snapshot(
    engine: Engine,
    table: str = "subscriptions",
    chunk_size: int = DEFAULT_CHUNK,
    on_chunk: Callable[[SnapshotProgress], None] | None = None,
    max_chunks: int | None = None,
) -> SnapshotProgress:
    """Run (or resume) `table`'s snapshot to the end, or for `max_chunks` chunks.

    A table with no recorded snapshot is started; a finished one is left alone (see
    `restart_snapshot`). `on_chunk` sees the progress after each committed chunk, with
    `remaining` counted once at the start.
    """
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    _require_capture(engine)
    if snapshot_progress(engine, table) is None:
        restart_snapshot(engine, table)
    start = snapshot_progress(engine, table)
    assert start is not None
    remaining = None if start.finished else _remaining(engine, table, start.last_key)
    total = start.rows_done + (remaining or 0)
    chunks = 0
    progress = start
    while not progress.finished and (max_chunks is None or chunks < max_chunks):
        step = _chunk_with_retry(engine, table, chunk_size)
        assert step is not None
        progress = SnapshotProgress(**{**asdict(step), "remaining": total - step.rows_done})
        chunks += 1
        if on_chunk is not None:
            on_chunk(progress)
    return progress
