"""The online snapshot: rows that existed before capture enter the stream as `op = 'r'`.

Anchor: Debezium's incremental snapshots and Netflix's DBLog, adapted to a trigger-fed change
log. The table is read in primary-key chunks; each chunk is ONE short transaction that

1. reads the chunk's upper key (the N-th key after the last one done),
2. copies every row in (last, upper] into the change log as an `r` row (after-image = the row,
   before = NULL, origin `app`: the row is the application's data), reading them with
   `FOR SHARE` on PostgreSQL (SQLite: the whole transaction is `BEGIN IMMEDIATE`),
3. records (last key = upper, rows, chunks) in `subscription_snapshot_progress`.

Why a key's last row in LSN order equals the table, while the application keeps writing
(full argument: docs/architecture.md, "Online snapshot"): a change-log row is numbered in
`id` order among committed rows (source/sequencer.py), and `id`s are drawn when the row is
inserted. A write to a row of the chunk either committed before the chunk read it - then the
chunk reads its result and draws its `r` ids after the write drew its own - or it comes
after the chunk locked the row and waits for the chunk's commit, so it draws its id later.
Either way the `r` row and the change are in commit order. No lock outlives the chunk.

A kill at any point loses at most the chunk in flight (rolled back); the next run resumes
after the last committed chunk because its progress was committed with its rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import is_postgres
from subscription_export.core.errors import SchemaMissingError
from subscription_export.source.schema import _sqlite_json_object, latest_capture_schema
from subscription_export.source.snapshot_log import PROGRESS, now_sql

DEFAULT_CHUNK = 2048
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


def _upper_key(conn: Connection, table: str, last: str | None, size: int) -> str | None:
    after = "" if last is None else " WHERE id > :last"
    return conn.execute(
        sa.text(f"SELECT MAX(id) FROM (SELECT id FROM {table}{after} ORDER BY id LIMIT :n) AS k"),
        {"last": last, "n": size},
    ).scalar()


def _copy_chunk_pg(conn: Connection, table: str, last: str | None, upper: str, version: int) -> int:
    after = "" if last is None else "id > :last AND "
    return conn.execute(
        sa.text(
            "INSERT INTO subscription_change_log"
            " (op, subscription_id, before, after, origin, schema_version)"
            " SELECT 'r', s.id, NULL, to_jsonb(s), 'app', :v FROM"
            f" (SELECT * FROM {table} WHERE {after}id <= :upper ORDER BY id FOR SHARE) AS s"
            " ORDER BY s.id"
        ),
        {"last": last, "upper": upper, "v": version},
    ).rowcount


def _copy_chunk_sqlite(
    conn: Connection, table: str, last: str | None, upper: str, version: int
) -> int:
    schema = latest_capture_schema(conn)
    assert schema is not None
    image = _sqlite_json_object(schema.columns, "s", conn.dialect)
    base = conn.execute(
        sa.text("SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log")
    ).scalar_one()
    after = "" if last is None else "s.id > :last AND "
    return conn.execute(
        sa.text(
            "INSERT INTO subscription_change_log"
            " (lsn, op, subscription_id, before, after, changed_at, origin, schema_version)"
            f" SELECT :base + row_number() OVER (ORDER BY s.id), 'r', s.id, NULL, {image},"
            f" {now_sql(False)}, 'app', :v FROM {table} AS s"
            f" WHERE {after}s.id <= :upper ORDER BY s.id"
        ),
        {"base": int(base), "last": last, "upper": upper, "v": version},
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
        schema = latest_capture_schema(conn)
        if schema is None:
            raise SchemaMissingError("no capture schema; run `subscription-export init` first")
        upper = _upper_key(conn, table, done.last_key, size)
        if upper is None:
            conn.execute(
                sa.text(
                    f"UPDATE {PROGRESS} SET finished_at = {now_sql(postgres)} WHERE table_name = :t"
                ),
                {"t": table},
            )
            return _progress(conn, table)
        copy = _copy_chunk_pg if postgres else _copy_chunk_sqlite
        rows = copy(conn, table, done.last_key, upper, schema.version)
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
            time.sleep(0.01 * (attempt + 1))  # a writer held a row of the chunk: redo it
    return None  # unreachable


def _remaining(engine: Engine, table: str, last: str | None) -> int:
    after = "" if last is None else " WHERE id > :last"
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(f"SELECT COUNT(*) FROM {table}{after}"), {"last": last}
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
