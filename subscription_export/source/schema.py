"""`init`: the change-log tables, the capture triggers and the capture-schema versions.

Every change to a captured table (`subscriptions` by default; SUBSCRIPTION_EXPORT_TABLES)
lands in `subscription_change_log` from a trigger, in the same transaction as the change: all
tables write the one log, so they share one LSN sequence, and `source_table` says whose row it
is. Its key column `subscription_id` holds the row's primary key as text (a JSON array for a
composite key). The trigger embeds the capture schema version (the column list it
captures), so re-running `init` after `ALTER TABLE … ADD COLUMN` re-installs the triggers and
new rows carry the new version.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine

from subscription_export.core.columns import SourceColumn
from subscription_export.core.datasets import DEFAULT_TABLE
from subscription_export.core.db import is_postgres
from subscription_export.core.errors import SchemaMissingError, SourceBusyError
from subscription_export.core.stopping import stoppable_sleep
from subscription_export.source.catalog import read_table
from subscription_export.source.installed import (
    TRUNCATE_TRIGGER,
    capture_installed,
    pg_partitions,
    trigger_names,
)
from subscription_export.source.pg_image import pg_row_image, pg_trigger_images
from subscription_export.source.snapshot_log import (
    LSN_INDEX_PG,
    has_column,
    holds_unsent_values,
    prepare_snapshot,
    sqlite_log_ddl,
    upgrade_change_log,
)
from subscription_export.source.vanished import log_vanished_rows

ORIGIN_SETTING = "subscription_export.origin"

_SQLITE_TABLES = [
    sqlite_log_ddl(),  # op c|u|d|r; shared with the upgrade that rebuilds an older log
    # The reconcile looks up one subscription's changes (newest first).
    """CREATE INDEX IF NOT EXISTS subscription_change_log_by_subscription
        ON subscription_change_log (subscription_id, id)""",
    """CREATE TABLE IF NOT EXISTS subscription_capture_origin (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        origin TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS subscription_capture_schema (
        version INTEGER PRIMARY KEY,
        columns TEXT NOT NULL,
        installed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        source_table TEXT NOT NULL
    )""",
]

_PG_TABLES = [
    """CREATE TABLE IF NOT EXISTS subscription_change_log (
        id bigserial PRIMARY KEY,
        lsn bigint,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        op char(1) NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
        subscription_id text NOT NULL,
        before jsonb,
        after jsonb,
        changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        origin text NOT NULL DEFAULT 'app',
        schema_version integer NOT NULL,
        source_table text NOT NULL
    )""",
    # LSNs are unique among numbered rows; a partial index, so a writer's insert (lsn NULL)
    # adds no entry to it: only the sequencer's numbering does (docs/architecture.md,
    # "Capture cost"). Every reader's `lsn BETWEEN`/`=`/`MAX(lsn)` implies `lsn IS NOT NULL`.
    LSN_INDEX_PG,
    """CREATE INDEX IF NOT EXISTS subscription_change_log_unsequenced
        ON subscription_change_log (id) WHERE lsn IS NULL""",
    """CREATE INDEX IF NOT EXISTS subscription_change_log_by_subscription
        ON subscription_change_log (subscription_id, id)""",
    """CREATE TABLE IF NOT EXISTS subscription_capture_schema (
        version integer PRIMARY KEY,
        columns text NOT NULL,
        installed_at timestamptz NOT NULL DEFAULT now(),
        source_table text NOT NULL
    )""",
]


@dataclass(frozen=True)
class CaptureSchema:
    version: int
    columns: tuple[SourceColumn, ...]
    # The table's primary key and init's warnings, read from the catalog at `init` (not stored:
    # the key shapes the triggers, not the export).
    key: tuple[str, ...] = field(default=(), compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    as_text: tuple[str, ...] = field(default=(), compare=False)  # see catalog.TableShape
    # Version numbers are unique across tables (one capture-schema table); each belongs to one.
    table: str = field(default=DEFAULT_TABLE, compare=False)

    def to_json(self) -> str:
        return json.dumps([[c.name, c.type] for c in self.columns])

    @staticmethod
    def columns_from_json(raw: str) -> tuple[SourceColumn, ...]:
        return tuple(SourceColumn(name, typ) for name, typ in json.loads(raw))


@dataclass(frozen=True)
class CaptureSql:
    """Quoting for generated trigger SQL. Table and column names come from the catalog, i.e.
    from whoever may ALTER the table: every name is quoted by SQLAlchemy, as an identifier
    and, where it is a JSON key, as a string literal, so no name can end either."""

    dialect: Dialect

    def ident(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote_identifier(name)

    def literal(self, text: str) -> str:
        literal = sa.String().literal_processor(self.dialect)
        assert literal is not None
        return str(literal(text))

    def key_text(self, key: tuple[str, ...], row: str) -> str:
        """The change log's key column: the key's text, or a JSON array of a composite key
        (docs/architecture.md, "Key canonical form")."""
        parts = [f"{row}.{self.ident(k)}" for k in key]
        if self.dialect.name == "postgresql":
            if len(parts) == 1:
                return f"{parts[0]}::text"
            return f"jsonb_build_array({', '.join(parts)})::text"
        return f"CAST({parts[0]} AS TEXT)" if len(parts) == 1 else f"json_array({', '.join(parts)})"


def sqlite_row_image(columns: tuple[SourceColumn, ...], row: str, sql: CaptureSql) -> str:
    """`json_object('name', NEW."name", …)`; bytes as `\\x` + hex (JSON cannot hold a BLOB)."""
    pairs = []
    for c in columns:
        value = f"{row}.{sql.ident(c.name)}"
        if c.type == "binary":
            value = f"CASE WHEN {value} IS NULL THEN NULL ELSE '\\x' || lower(hex({value})) END"
        pairs.append(f"{sql.literal(c.name)}, {value}")
    return "json_object(" + ", ".join(pairs) + ")"


def _sqlite_triggers(schema: CaptureSchema, table: str, dialect: Dialect) -> list[str]:
    # SQLite has one writer at a time, so MAX(lsn)+1 inside the writing transaction is gap-free
    # and in commit order.
    sql = CaptureSql(dialect)
    next_lsn = "(SELECT COALESCE(MAX(lsn), 0) + 1 FROM subscription_change_log)"
    origin = "COALESCE((SELECT origin FROM subscription_capture_origin WHERE id = 1), 'app')"
    now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    new, old = (
        sqlite_row_image(schema.columns, "NEW", sql),
        sqlite_row_image(schema.columns, "OLD", sql),
    )
    new_key, old_key = sql.key_text(schema.key, "NEW"), sql.key_text(schema.key, "OLD")
    same_key = " AND ".join(f"OLD.{sql.ident(k)} IS NEW.{sql.ident(k)}" for k in schema.key)
    cols = (
        "(lsn, op, subscription_id, before, after, changed_at, origin, schema_version,"
        " source_table)"
    )
    v, source = schema.version, sql.literal(table)

    def log(op: str, key: str, before: str, after: str) -> str:
        return (
            f"INSERT INTO subscription_change_log {cols} VALUES "
            f"({next_lsn}, '{op}', {key}, {before}, {after}, {now}, {origin}, {v}, {source});"
        )

    _fn, prefix = trigger_names(table)
    statements = []
    # A primary-key update is a delete of the old key and a create of the new one (two LSNs).
    for suffix, event, when, body in (
        ("insert", "INSERT", "", log("c", new_key, "NULL", new)),
        ("update", "UPDATE", f" WHEN {same_key}", log("u", new_key, old, new)),
        (
            "rekey",
            "UPDATE",
            f" WHEN NOT ({same_key})",
            log("d", old_key, old, "NULL") + " " + log("c", new_key, "NULL", new),
        ),
        ("delete", "DELETE", "", log("d", old_key, old, "NULL")),
    ):
        name = sql.ident(f"{prefix}_{suffix}")
        statements.append(f"DROP TRIGGER IF EXISTS {name}")
        statements.append(
            f"CREATE TRIGGER {name} AFTER {event} ON {sql.ident(table)}{when} BEGIN {body} END"
        )
    return statements


def _pg_triggers(
    schema: CaptureSchema, table: str, dialect: Dialect, partitions: Sequence[str] = ()
) -> list[str]:
    """`partitions`: the table's partitions, as `regclass` text (quoted already)."""
    # No LSN here: the sequencer numbers rows once their transaction has committed.
    sql = CaptureSql(dialect)
    fn, prefix = (sql.ident(n) for n in trigger_names(table))

    def image(row: str) -> str:
        return f"{row.lower()}_image" if schema.as_text else pg_row_image((), row, sql)

    new_key, old_key = sql.key_text(schema.key, "NEW"), sql.key_text(schema.key, "OLD")
    old_tuple = ", ".join(f"OLD.{sql.ident(k)}" for k in schema.key)
    new_tuple = ", ".join(f"NEW.{sql.ident(k)}" for k in schema.key)
    insert = (
        "INSERT INTO subscription_change_log"
        " (op, subscription_id, before, after, origin, schema_version, source_table) VALUES"
    )
    origin = f"COALESCE(NULLIF(current_setting('{ORIGIN_SETTING}', true), ''), 'app')"
    v = f"{schema.version}, {sql.literal(table)}"  # the version, then the source table
    # TRUNCATE fires no row trigger: without this statement-level branch the rows it removes
    # would leave no trace in the log, and every consumer would keep them forever. Each row
    # becomes a delete, read before the truncate. The alias is no column's name: a column
    # named like it would otherwise be taken for the whole row (`to_jsonb(t)`). The trigger
    # is also on each partition (a partition can be truncated alone, and truncating the
    # parent fires every partition's): each firing logs the rows stored in the relation that
    # fired it (`tableoid`), so every row is logged once, and a partitioned parent, which
    # stores none, logs nothing itself.
    alias = _free_alias(schema.columns)

    def truncated(image_sql: str, relid: str) -> str:
        return (
            f"{insert.removesuffix(' VALUES')} SELECT 'd', {sql.key_text(schema.key, alias)},"
            f" {image_sql}, NULL, {origin}, {v}"
            f" FROM {sql.ident(table)} AS {alias} WHERE {alias}.tableoid = {relid}"
            f" ORDER BY {_key_order(schema.key, alias, sql)}"
        )

    body = f"""
        {pg_trigger_images(schema.as_text, sql, alias, truncated)}
            IF TG_OP = 'UPDATE' AND ({old_tuple}) IS DISTINCT FROM ({new_tuple}) THEN
                -- A primary-key update: delete of the old key, then create of the new one.
                {insert} ('d', {old_key}, {image("OLD")}, NULL, {origin}, {v});
                {insert} ('c', {new_key}, NULL, {image("NEW")}, {origin}, {v});
                RETURN NULL;
            END IF;
            {insert} (
                CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' ELSE 'd' END,
                CASE WHEN TG_OP = 'DELETE' THEN {old_key} ELSE {new_key} END,
                CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE {image("OLD")} END,
                CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE {image("NEW")} END,
                {origin}, {v});
            RETURN NULL;
        END
        """
    tag = "$fn$"
    while tag in body:  # a column name could hold the dollar-quote tag
        tag = tag[:-1] + "x$"
    # `prefix` is quoted already. Releases before several tables quoted it twice, so their
    # trigger's name holds the quotes (`"subscriptions_capture"`): dropped too, or re-running
    # init would capture every change twice.
    trigger, quoted_twice = prefix, sql.ident(prefix)
    return [
        f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag}",
        f"DROP TRIGGER IF EXISTS {quoted_twice} ON {sql.ident(table)}",
        f"DROP TRIGGER IF EXISTS {trigger} ON {sql.ident(table)}",
        f"""CREATE TRIGGER {trigger}
            AFTER INSERT OR UPDATE OR DELETE ON {sql.ident(table)}
            FOR EACH ROW EXECUTE FUNCTION {fn}()""",
        *(
            statement
            for relation in (sql.ident(table), *partitions)
            for statement in (
                f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {relation}",
                f"""CREATE TRIGGER {TRUNCATE_TRIGGER}
                    BEFORE TRUNCATE ON {relation}
                    FOR EACH STATEMENT EXECUTE FUNCTION {fn}()""",
                # ALWAYS: a session with session_replication_role = replica (logical
                # replication's apply, bulk loaders skipping foreign keys) fires only these,
                # and its changes would otherwise be written to the table but not the log.
                # Partitions hold clones of the row trigger, enabled one by one.
                f"ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trigger}",
                f"ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {TRUNCATE_TRIGGER}",
            )
        ),
    ]


def _free_alias(columns: tuple[SourceColumn, ...]) -> str:
    """A row alias that is no column's name (lower case and plain: needs no quoting)."""
    names = {c.name for c in columns}
    alias = "captured_row"
    while alias in names:
        alias += "_"
    return alias


def _key_order(key: tuple[str, ...], row: str, sql: CaptureSql) -> str:
    # In key order, so the deletes' LSNs follow the key as a snapshot's rows do.
    return ", ".join(f"{row}.{sql.ident(k)}" for k in key)


def latest_capture_schema(conn: Connection, table: str | None = None) -> CaptureSchema | None:
    """`table`'s newest capture schema (None: the newest of any table)."""
    versions = capture_schemas(conn, table)
    return versions[max(versions)] if versions else None


def capture_schemas(conn: Connection, table: str | None = None) -> dict[int, CaptureSchema]:
    """Every capture schema version of `table` (None: of every table)."""
    query = "SELECT version, columns, source_table FROM subscription_capture_schema"
    params = {} if table is None else {"t": table}
    rows = conn.execute(
        sa.text(query + ("" if table is None else " WHERE source_table = :t")), params
    ).all()
    return {
        v: CaptureSchema(v, CaptureSchema.columns_from_json(cols), table=t) for v, cols, t in rows
    }


def captured_tables(conn: Connection) -> list[str]:
    """Tables that ever had capture installed (some may no longer be configured)."""
    rows = conn.execute(sa.text("SELECT DISTINCT source_table FROM subscription_capture_schema"))
    return sorted(r[0] for r in rows)


def logs_only(engine: Engine, table: str) -> bool:
    """Whether every change-log row is `table`'s (no other table was ever captured), so a
    reader needs no per-table filter."""
    with engine.connect() as conn:
        return captured_tables(conn) == [table]


def unconfigured_tables(engine: Engine, configured: Sequence[str]) -> list[str]:
    """Tables whose capture `init` installed once that are not in `configured` now."""
    with engine.connect() as conn:
        return [t for t in captured_tables(conn) if t not in configured]


def init_source(engine: Engine, table: str = DEFAULT_TABLE) -> CaptureSchema:
    """`init_tables` for one table."""
    return init_tables(engine, (table,))[0]


def init_tables(engine: Engine, tables: Sequence[str]) -> list[CaptureSchema]:
    """Create the change-log tables and (re)install triggers on every captured table, whose key
    and columns are read from the catalog; idempotent, one transaction. The tables must exist
    (only the demo creates one: `source/demo_table.py`). All of them write the one change log,
    so they share one LSN sequence. A log from an older release is upgraded, its rows taken as
    changes of `tables[0]` (the one table it captured). Returns each table's capture schema.

    On PostgreSQL `init` yields to the application: it waits for each lock less than the
    server's `deadlock_timeout`, so in a lock cycle with an application transaction (one that
    writes the tables in another order) it is `init` that gives up, and it tries again."""
    if not is_postgres(engine):
        with engine.begin() as conn:
            return _init_in(conn, tables)
    for attempt in range(_INIT_ATTEMPTS):
        try:
            with engine.begin() as conn:
                _lock_for_init(conn, tables)
                return _init_in(conn, tables)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _LOCK_BUSY:
                raise
        pause = min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)  # jitter: no lockstep
        stoppable_sleep(pause)  # `init` under a stop signal ends now, not after its backoff
    raise SourceBusyError(
        f"init could not lock {', '.join(tables)} and the change log in {_INIT_ATTEMPTS} tries:"
        " other transactions keep them locked (long transactions or DDL); run init again"
        " when they finish"
    )


_INIT_ATTEMPTS = 30  # about a minute of backing off
_LOCK_BUSY = {"55P03", "40P01"}  # lock_timeout, deadlock: the transaction is rolled back


def _lock_for_init(conn: Connection, tables: Sequence[str]) -> None:
    # Serialize concurrent `init`s; DDL below is not safe to interleave.
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('subscription_export.init'))"))
    # Half the deadlock timeout: a cycle with a writer times init out before either side's
    # deadlock check runs, so the application's transaction is never the victim.
    conn.execute(
        sa.text(
            "SELECT set_config('lock_timeout', (GREATEST(10, setting::int / 2))::text, true)"
            " FROM pg_settings WHERE name = 'deadlock_timeout'"
        )
    )
    for table in tables:
        if sa.inspect(conn).has_table(table):
            # Writers lock the table, then the change log (in the trigger). Take the same
            # order here, or re-installing triggers under load deadlocks.
            quoted = conn.dialect.identifier_preparer.quote_identifier(table)
            conn.exec_driver_sql(f"LOCK TABLE {quoted} IN SHARE ROW EXCLUSIVE MODE")


def _init_in(conn: Connection, tables: Sequence[str]) -> list[CaptureSchema]:
    for ddl in _PG_TABLES if conn.dialect.name == "postgresql" else _SQLITE_TABLES:
        conn.exec_driver_sql(ddl)
    # Before the upgrade below, which drops SQLite's triggers to rebuild the log.
    installed = {t for t in tables if capture_installed(conn, t)}
    # A log from before snapshots accepts op 'r'; one from before several tables gets
    # `source_table`.
    upgrade_change_log(conn, tables[0])
    return [_install(conn, table, table in installed) for table in tables]


def _install(conn: Connection, table: str, installed: bool) -> CaptureSchema:
    """Register `table`'s capture schema and install its triggers, in init's transaction.
    `installed`: its capture triggers were in place when init began."""
    latest = latest_capture_schema(conn, table)
    previous = {c.name: c.type for c in latest.columns} if latest else {}
    shape = read_table(conn, table, previous)
    schema = _register(conn, latest, shape.columns, table)
    schema = replace(schema, key=shape.key, warnings=shape.warnings, as_text=shape.as_text)
    triggers = (
        _pg_triggers(schema, table, conn.dialect, pg_partitions(conn, table))
        if conn.dialect.name == "postgresql"
        else _sqlite_triggers(schema, table, conn.dialect)
    )
    # Captured before, but its triggers are gone (the table was dropped and created again, or
    # they were dropped or disabled): changes made meanwhile are in no log, and only reading
    # the table again brings its rows back into the stream.
    lost_capture = latest is not None and not installed
    if lost_capture:  # rows that went meanwhile (a dropped table's) leave as deletes
        alias = _free_alias(shape.columns)
        log_vanished_rows(conn, table, alias, CaptureSql(conn.dialect).key_text(shape.key, alias))
    for stmt in triggers:
        conn.exec_driver_sql(stmt)
    # With the triggers in place (and writers locked out on PostgreSQL): does the table hold
    # rows the triggers never saw? Then a snapshot is recorded as pending. So it does when a
    # new or retyped column holds values in rows no change has carried since (ADD COLUMN …
    # DEFAULT, a generated column, RENAME, ALTER TYPE … USING rewrite rows without a
    # trigger): consumers would hold null there for good, so the table is read again.
    refill = latest is not None and holds_unsent_values(conn, table, latest.columns, schema.columns)
    prepare_snapshot(conn, table, again=lost_capture or refill)
    return schema


def _register(
    conn: Connection, latest: CaptureSchema | None, columns: tuple[SourceColumn, ...], table: str
) -> CaptureSchema:
    """The registered version of `table` for these columns: its latest, or a new one (numbered
    after every table's versions: a version number names one table's columns)."""
    if latest is not None and latest.columns == columns:
        return latest
    top = conn.execute(sa.text("SELECT MAX(version) FROM subscription_capture_schema")).scalar()
    schema = CaptureSchema(int(top or 0) + 1, columns, table=table)
    conn.execute(
        sa.text(
            "INSERT INTO subscription_capture_schema (version, columns, source_table)"
            " VALUES (:v, :c, :t)"
        ),
        {"v": schema.version, "c": schema.to_json(), "t": table},
    )
    return schema


def require_source_schema(engine: Engine) -> None:
    """Fail clearly when `init` was never run against this source."""
    inspector = sa.inspect(engine)
    if not inspector.has_table("subscription_change_log") or not inspector.has_table(
        "subscription_capture_schema"
    ):
        raise SchemaMissingError(
            f"the source at {engine.url.render_as_string()} has no change log;"
            " run `subscription-export init` first"
        )
    # A log from before several tables: every read filters on `source_table`, so without the
    # column each would fail with the database's raw error; init adds it (snapshot_log.py).
    with engine.connect() as conn:
        missing = [
            t
            for t in ("subscription_change_log", "subscription_capture_schema")
            if not has_column(conn, t, "source_table")
        ]
    if missing:
        raise SchemaMissingError(
            f"{missing[0]} at {engine.url.render_as_string()} has no source_table column (it"
            " predates several tables); run `subscription-export init` to upgrade it"
        )


def set_origin(conn: Connection, origin: str) -> None:
    """Tag the changes of the current transaction with the system that caused them.

    Call `clear_origin` before committing on SQLite (PostgreSQL scopes it to the transaction).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT set_config(:k, :v, true)"), {"k": ORIGIN_SETTING, "v": origin})
    else:
        conn.execute(
            sa.text(
                "INSERT OR REPLACE INTO subscription_capture_origin (id, origin) VALUES (1, :o)"
            ),
            {"o": origin},
        )


@contextmanager
def origin_tagged(conn: Connection, origin: str) -> Iterator[None]:
    """The block's changes tagged with `origin`. The tag is cleared when the block succeeds,
    not when it raises: the failed statement's transaction rolls back (tag included), and
    PostgreSQL runs nothing more in it - a clearing statement would replace the real error
    with `InFailedSqlTransaction`."""
    set_origin(conn, origin)
    yield
    clear_origin(conn)


def clear_origin(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT set_config(:k, '', true)"), {"k": ORIGIN_SETTING})
    else:
        conn.execute(sa.text("DELETE FROM subscription_capture_origin"))
