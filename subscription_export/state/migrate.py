"""Bring the state database's schema to the head of its alembic migrations (`state/migrations`).

Every process that opens the state database calls `upgrade` (through `Project.state`), so the
common case - already at head - costs one lookup of the version table and nothing of alembic;
after that the engine is remembered for the life of the process. Only a database behind head
(new, or created by an older release) loads alembic and migrates, under a lock, so processes
starting together never race each other: on PostgreSQL a transaction-scoped advisory lock, on
SQLite the write lock of a `BEGIN IMMEDIATE` transaction. The migration runs inside that one
transaction (both databases have transactional DDL): it lands whole or not at all.

Releases before alembic created their tables with `create_all` at every start. Such a database
(our tables, no version table) is adopted: the baseline revision creates whatever tables that
release had not created yet (it is written with IF NOT EXISTS), the database is stamped at the
revision its shape matches, and the remaining revisions run as usual.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import engine_for
from subscription_export.core.errors import StateSchemaError
from subscription_export.state.tables import metadata

if TYPE_CHECKING:  # alembic (and mako, which it imports) load only when there is work to do
    from alembic.config import Config

# The newest revision in `migrations/versions`; a test checks it against alembic's own head, so
# adding a migration without moving this fails the suite. Comparing against a constant keeps
# the at-head check free of alembic's imports (measured: ~200 ms and 11 MB of RSS per process,
# against ~1.5 ms for the check itself).
HEAD = "0007"
BASELINE = "0001"  # the tables as the last release before 6bb99c7 created them
# Not alembic's default `alembic_version`: an application using alembic for its own tables in the
# same database (the state may share the source database) keeps its own version row.
VERSION_TABLE = "subscription_export_alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = "subscription_export.state_schema:"  # + the schema, so deployments do not queue

_at_head: weakref.WeakSet[Engine] = weakref.WeakSet()
_at_head_lock = threading.Lock()


def upgrade(engine: Engine) -> None:
    """Bring the state schema to `HEAD` (idempotent; one query when it is already there, nothing
    after the first call per engine per process)."""
    if engine in _at_head:
        return
    with _at_head_lock:  # threads of one process: one checks, the others wait for its answer
        if engine in _at_head:
            return
        if current_revision(engine) != HEAD:
            _upgrade_under_lock(engine)
        _at_head.add(engine)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is stamped at; None before alembic (new or pre-alembic)."""
    with engine.connect() as conn:
        return _stamped_revision(conn)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter: only the tables of `state.tables` are ours. The state database may be
    the source database too, and autogenerate must never propose dropping the application's
    tables (or another tool's version table)."""
    if type_ == "table":
        return name in metadata.tables
    return True


def alembic_config(connection: Connection | None = None) -> Config:
    """The configuration `migrations/env.py` runs with: no alembic.ini, the scripts shipped in the
    package, the caller's connection (and its transaction) in `attributes`. Also what a developer
    passes to `alembic.command.revision(..., autogenerate=True)` to draft a new migration."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _stamped_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def _upgrade_under_lock(engine: Engine) -> None:
    from alembic import command
    from alembic.util import CommandError

    with _migration_engine(engine).begin() as conn:
        _take_upgrade_lock(conn)
        revision = _stamped_revision(conn)  # again: a process that held the lock may be done
        if revision == HEAD:
            return
        config = alembic_config(conn)
        if revision is None and _has_pre_alembic_tables(conn):
            _adopt_pre_alembic(conn, config)
        try:
            command.upgrade(config, "head")
        except CommandError as exc:
            raise StateSchemaError(
                f"the state database is at schema revision {revision!r}, which this release"
                f" (head {HEAD!r}) does not know; was it upgraded by a newer release? ({exc})"
            ) from None


def _migration_engine(engine: Engine) -> Engine:
    """SQLite: an engine whose transactions begin IMMEDIATE, so the upgrade holds the write lock
    from its first read (a deferred transaction reading the version table and then writing can
    fail with SQLITE_BUSY when another process migrated in between)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return engine  # PostgreSQL locks explicitly; an in-memory database has one connection
    return engine_for(url.render_as_string(hide_password=False), writer=True)


def _take_upgrade_lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k || current_schema()))"),
            {"k": _LOCK_KEY},
        )


def _has_pre_alembic_tables(conn: Connection) -> bool:
    existing = set(sa.inspect(conn).get_table_names())
    return bool(existing & set(metadata.tables))


def _adopt_pre_alembic(conn: Connection, config: Config) -> None:
    """Create what the pre-alembic release lacked, then stamp the revision its shape matches."""
    from alembic import command

    command.upgrade(config, BASELINE)
    columns = {c["name"] for c in sa.inspect(conn).get_columns("sync_base")}
    if {"feed_record", "feed_version"} <= columns:  # created by 6bb99c7 or later
        command.stamp(config, "0002")
