"""SQLAlchemy engines from user-facing URLs, with clear errors for bad ones."""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tenacity
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from subscription_export.core.errors import ConfigError, SourceUnavailableError
from subscription_export.core.secrets import mask_in_text, mask_url

_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Idle SQLite connections kept per engine: a cycle runs ~60 short state transactions, each of
# which used to open a file, run four PRAGMAs and close it again - and closing the last
# connection of a WAL file checkpoints and fsyncs it, ~10 ms a commit (issue 15).
_SQLITE_POOL_SIZE = 4


def normalize_url(url: str) -> sa.URL:
    """`postgresql://` means psycopg 3 here; only SQLite and PostgreSQL are supported."""
    shown = mask_url(url)  # errors quote the URL: never with its password
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(
            f"{shown!r} is not a database URL;"
            " use sqlite:///path.db or postgresql://user@host:5432/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not parsed.database:
            raise ConfigError(f"{shown!r} names no SQLite file; use sqlite:///path/to/file.db")
        return parsed
    raise ConfigError(f"{shown!r}: unsupported database {backend!r}; use sqlite or postgresql")


def require_existing(url: str, what: str) -> None:
    """A read-only command must not create a mistyped SQLite file (SQLite creates any file it
    is asked to open): refuse, with one line, a SQLite database that is not there. Servers
    (PostgreSQL) are checked by connecting."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database == ":memory:":
        return
    path = Path(parsed.database)  # type: ignore[arg-type]
    if not path.is_file():
        raise ConfigError(
            f"{what} database {path} does not exist; run `subscription-export init` first"
        )


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


@tenacity.retry(
    retry=tenacity.retry_if_exception(_is_locked),
    stop=tenacity.stop_after_delay(_SQLITE_BUSY_TIMEOUT_MS / 1000),
    wait=tenacity.wait_fixed(0.05),
    reraise=True,
)
def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """Switching a new file to WAL needs it to itself. SQLite refuses at once, without the busy
    timeout, while another connection holds the write lock (waiting could deadlock), so two
    processes opening a new database together would fail; the switch is retried instead. A file
    already in WAL never waits here."""
    cursor.execute("PRAGMA journal_mode=WAL")


def _configure_sqlite(engine: Engine, immediate: bool) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's BEGIN drive transactions; WAL lets readers run beside the writer.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _switch_to_wal(cur)
        # WAL + NORMAL: no fsync per commit; a power cut may lose the last commits but never
        # corrupts. Losing a watermark move only means re-exporting identical bytes.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the write lock up front (IMMEDIATE), so two writers never deadlock on a
        # read-to-write lock upgrade; readers stay DEFERRED and never block the application.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _discard_in_forked_children(engine: Engine) -> None:
    """A forked child (multiprocessing, Dagster's executor) inherits the parent's pooled SQLite
    connections: using one from two processes corrupts SQLite's locking. The child drops what
    it inherited without closing it (closing would touch the parent's locks) and opens its own;
    this is SQLAlchemy's documented recipe for pools across `fork`."""
    owner = os.getpid()

    @sa.event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn, record, proxy):  # type: ignore[no-untyped-def]
        if record.info.get("pid", owner) != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError(
                f"SQLite connection opened by process {record.info['pid']}, not this one"
            )


@lru_cache(maxsize=32)
def engine_for(url: str, *, writer: bool = False) -> Engine:
    """One engine per URL per process (engines own connection pools).

    `writer=True` matters for SQLite only: its transactions begin IMMEDIATE.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        engine = sa.create_engine(
            parsed,
            poolclass=sa.pool.QueuePool,
            pool_size=_SQLITE_POOL_SIZE,
            max_overflow=-1,  # never wait for a connection: SQLite's own locks serialize
            # A pooled connection may be checked out by another thread than the one that
            # opened it; each is used by one thread at a time, which sqlite3 supports.
            connect_args={"check_same_thread": False},
        )
        _configure_sqlite(engine, immediate=writer)
        _discard_in_forked_children(engine)
        _made.add(engine)
        return engine
    engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)
    _made.add(engine)
    return engine


_made: weakref.WeakSet[Engine] = weakref.WeakSet()


def dispose_engines() -> None:
    """Close the pooled connections of every engine `engine_for` made and forget them.
    Clearing the cache alone leaves each pool's connections open until the garbage collector
    finds the engine: a test suite making a schema per test ran the server out of connections
    ("too many clients") when two runs shared it."""
    engine_for.cache_clear()
    for engine in list(_made):
        engine.dispose()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def check_reachable(engine: Engine, what: str) -> None:
    """Fail with one clear line when the server is down or refuses us."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SourceUnavailableError(
            f"cannot reach the {what} database at {mask_url(engine.url.render_as_string())}:"
            f" {mask_in_text(reason)}"
            " (is the server running and the URL right?)"
        ) from None


def redact(url: str) -> str:
    """`url` as it may be shown: password and secret query values masked (`core.secrets`)."""
    return mask_url(url)


def dialect_insert(conn: sa.Connection) -> Any:
    """The dialect's INSERT construct (it has ON CONFLICT) for SQLite or PostgreSQL."""
    from sqlalchemy.dialects import postgresql, sqlite

    inserts = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    if conn.dialect.name not in inserts:
        raise NotImplementedError(f"needs sqlite or postgresql, not {conn.dialect.name}")
    return inserts[conn.dialect.name]


def upsert(
    conn: sa.Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    keys: Sequence[str] | None = None,
) -> None:
    """INSERT … ON CONFLICT (keys, default the primary key) DO UPDATE: race-free where
    delete-then-insert is not (PostgreSQL)."""
    index = list(keys) if keys is not None else [c.name for c in table.primary_key.columns]
    stmt = dialect_insert(conn)(table).values(**values)
    updates = {k: stmt.excluded[k] for k in values if k not in index}
    conn.execute(stmt.on_conflict_do_update(index_elements=index, set_=updates))


def upsert_many(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str] | None = None,
) -> None:
    """`upsert` of many rows (all with the same columns) as one executemany statement."""
    if not rows:
        return
    index = list(keys) if keys is not None else [c.name for c in table.primary_key.columns]
    stmt = dialect_insert(conn)(table)
    updates = {k: stmt.excluded[k] for k in rows[0] if k not in index}
    conn.execute(stmt.on_conflict_do_update(index_elements=index, set_=updates), list(rows))


def insert_ignore_many(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """`insert_ignore` of many rows (all with the same columns) as one executemany statement."""
    if rows:
        conn.execute(dialect_insert(conn)(table).on_conflict_do_nothing(), list(rows))


def insert_ignore(conn: sa.Connection, table: sa.Table, values: Mapping[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True if a row was inserted."""
    result = conn.execute(dialect_insert(conn)(table).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)


def psycopg2_url(url: str) -> str:
    """The same PostgreSQL URL with the psycopg2 driver (what dagster-postgres is written for;
    see defs/pg_storage.py)."""
    parsed = make_url(url)
    if parsed.drivername.split("+")[0] not in {"postgres", "postgresql"}:
        raise ConfigError(
            f"the Dagster instance needs a postgresql:// URL, not {parsed.drivername}://…"
        )
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
