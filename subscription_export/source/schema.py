"""`init`: the source tables, the capture triggers and the capture-schema versions.

Every change to `subscriptions` lands in `subscription_change_log` from a trigger, in the same
transaction as the change. The trigger embeds the capture schema version (the column list it
captures), so re-running `init` after `ALTER TABLE … ADD COLUMN` re-installs the triggers and
new rows carry the new version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine

from subscription_export.core.columns import (
    BASE_COLUMNS,
    BASE_TYPES,
    SourceColumn,
    logical_type_from_sql,
)
from subscription_export.core.db import is_postgres
from subscription_export.core.errors import SchemaMissingError
from subscription_export.source.snapshot_log import (
    prepare_snapshot,
    sqlite_log_ddl,
    upgrade_change_log,
)

ORIGIN_SETTING = "subscription_export.origin"

_SQLITE_TABLES = [
    """CREATE TABLE IF NOT EXISTS subscriptions (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        category TEXT,
        amount TEXT NOT NULL,            -- decimal kept as text: SQLite has no exact decimal
        currency TEXT NOT NULL,
        billing_cycle TEXT NOT NULL,
        status TEXT NOT NULL,
        next_billing_date TEXT,          -- ISO date
        timezone TEXT,
        created_at TEXT NOT NULL,        -- ISO-8601 UTC
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
    )""",
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
        installed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )""",
]

_PG_TABLES = [
    """CREATE TABLE IF NOT EXISTS subscriptions (
        id text PRIMARY KEY,
        user_id text NOT NULL,
        name text NOT NULL,
        category text,
        amount numeric(18, 4) NOT NULL,
        currency text NOT NULL,
        billing_cycle text NOT NULL,
        status text NOT NULL,
        next_billing_date date,
        timezone text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE IF NOT EXISTS subscription_change_log (
        id bigserial PRIMARY KEY,
        lsn bigint UNIQUE,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        op char(1) NOT NULL CHECK (op IN ('c', 'u', 'd', 'r')),
        subscription_id text NOT NULL,
        before jsonb,
        after jsonb,
        changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        origin text NOT NULL DEFAULT 'app',
        schema_version integer NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS subscription_change_log_unsequenced
        ON subscription_change_log (id) WHERE lsn IS NULL""",
    """CREATE INDEX IF NOT EXISTS subscription_change_log_by_subscription
        ON subscription_change_log (subscription_id, id)""",
    """CREATE TABLE IF NOT EXISTS subscription_capture_schema (
        version integer PRIMARY KEY,
        columns text NOT NULL,
        installed_at timestamptz NOT NULL DEFAULT now()
    )""",
]


def app_table_ddl(postgres: bool) -> str:
    """The demo's `subscriptions` table alone, as an application would have created it."""
    return (_PG_TABLES if postgres else _SQLITE_TABLES)[0]


@dataclass(frozen=True)
class CaptureSchema:
    version: int
    columns: tuple[SourceColumn, ...]

    def to_json(self) -> str:
        return json.dumps([[c.name, c.type] for c in self.columns])

    @staticmethod
    def columns_from_json(raw: str) -> tuple[SourceColumn, ...]:
        return tuple(SourceColumn(name, typ) for name, typ in json.loads(raw))


def _current_columns(conn: Connection) -> tuple[SourceColumn, ...]:
    """The table's columns in table order, base columns with their fixed logical types."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            sa.text(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'subscriptions' AND table_schema = current_schema()"
                " ORDER BY ordinal_position"
            )
        ).all()
    else:
        rows = [(r[1], r[2]) for r in conn.exec_driver_sql("PRAGMA table_info(subscriptions)")]
    return tuple(
        SourceColumn(name, BASE_TYPES.get(name) or logical_type_from_sql(declared or ""))
        for name, declared in rows
    )


def _sqlite_json_object(columns: tuple[SourceColumn, ...], row: str, dialect: Dialect) -> str:
    """`json_object('name', NEW."name", …)`. Column names come from the catalog, i.e. from
    whoever may ALTER the table: each is quoted twice by SQLAlchemy, as a string literal (the
    JSON key) and as an identifier, so no name can end either and run SQL inside the trigger."""
    literal = sa.String().literal_processor(dialect)
    identifier = dialect.identifier_preparer.quote_identifier  # always quoted, as before
    assert literal is not None
    pairs = (f"{literal(c.name)}, {row}.{identifier(c.name)}" for c in columns)
    return "json_object(" + ", ".join(pairs) + ")"


def _sqlite_triggers(schema: CaptureSchema, dialect: Dialect) -> list[str]:
    # SQLite has one writer at a time, so MAX(lsn)+1 inside the writing transaction is gap-free
    # and in commit order.
    next_lsn = "(SELECT COALESCE(MAX(lsn), 0) + 1 FROM subscription_change_log)"
    origin = "COALESCE((SELECT origin FROM subscription_capture_origin WHERE id = 1), 'app')"
    now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    new, old = (
        _sqlite_json_object(schema.columns, "NEW", dialect),
        _sqlite_json_object(schema.columns, "OLD", dialect),
    )
    cols = "(lsn, op, subscription_id, before, after, changed_at, origin, schema_version)"
    v = schema.version
    statements = []
    for event, op, key, before, after in (
        ("INSERT", "c", "NEW.id", "NULL", new),
        ("UPDATE", "u", "NEW.id", old, new),
        ("DELETE", "d", "OLD.id", old, "NULL"),
    ):
        name = f"subscriptions_capture_{event.lower()}"
        statements.append(f"DROP TRIGGER IF EXISTS {name}")
        statements.append(
            f"CREATE TRIGGER {name} AFTER {event} ON subscriptions BEGIN "
            f"INSERT INTO subscription_change_log {cols} VALUES "
            f"({next_lsn}, '{op}', {key}, {before}, {after}, {now}, {origin}, {v}); END"
        )
    return statements


def _pg_triggers(schema: CaptureSchema) -> list[str]:
    # No LSN here: the sequencer numbers rows once their transaction has committed.
    return [
        f"""CREATE OR REPLACE FUNCTION subscription_capture() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            INSERT INTO subscription_change_log
                (op, subscription_id, before, after, origin, schema_version)
            VALUES (
                CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' ELSE 'd' END,
                CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
                CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END,
                CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
                COALESCE(NULLIF(current_setting('{ORIGIN_SETTING}', true), ''), 'app'),
                {schema.version});
            RETURN NULL;
        END
        $fn$""",
        "DROP TRIGGER IF EXISTS subscriptions_capture ON subscriptions",
        """CREATE TRIGGER subscriptions_capture
            AFTER INSERT OR UPDATE OR DELETE ON subscriptions
            FOR EACH ROW EXECUTE FUNCTION subscription_capture()""",
    ]


def latest_capture_schema(conn: Connection) -> CaptureSchema | None:
    row = conn.execute(
        sa.text(
            "SELECT version, columns FROM subscription_capture_schema ORDER BY version DESC LIMIT 1"
        )
    ).first()
    return CaptureSchema(row[0], CaptureSchema.columns_from_json(row[1])) if row else None


def capture_schemas(conn: Connection) -> dict[int, CaptureSchema]:
    rows = conn.execute(sa.text("SELECT version, columns FROM subscription_capture_schema")).all()
    return {v: CaptureSchema(v, CaptureSchema.columns_from_json(cols)) for v, cols in rows}


def init_source(engine: Engine) -> CaptureSchema:
    """Create tables and (re)install triggers; idempotent. Returns the capture schema in force."""
    postgres = is_postgres(engine)
    with engine.begin() as conn:
        if postgres:
            # Serialize concurrent `init`s; DDL below is not safe to interleave.
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext('subscription_export.init'))")
            )
            if sa.inspect(conn).has_table("subscriptions"):
                # Writers lock subscriptions, then the change log (in the trigger). Take the
                # same order here, or re-installing triggers under load deadlocks.
                conn.execute(sa.text("LOCK TABLE subscriptions IN SHARE ROW EXCLUSIVE MODE"))
        for ddl in _PG_TABLES if postgres else _SQLITE_TABLES:
            conn.exec_driver_sql(ddl)
        upgrade_change_log(conn)  # a log from before snapshots: accept op 'r'
        columns = _current_columns(conn)
        missing = [c.name for c in BASE_COLUMNS if c.name not in {x.name for x in columns}]
        if missing:
            raise SchemaMissingError(
                f"table subscriptions exists but lacks columns {missing}; it was not created"
                " by subscription-export"
            )
        latest = latest_capture_schema(conn)
        if latest is None or latest.columns != columns:
            version = (latest.version + 1) if latest else 1
            schema = CaptureSchema(version, columns)
            conn.execute(
                sa.text(
                    "INSERT INTO subscription_capture_schema (version, columns) VALUES (:v, :c)"
                ),
                {"v": version, "c": schema.to_json()},
            )
        else:
            schema = latest
        for stmt in _pg_triggers(schema) if postgres else _sqlite_triggers(schema, conn.dialect):
            conn.exec_driver_sql(stmt)
        # With the triggers in place (and writers locked out on PostgreSQL): does the table
        # hold rows the triggers never saw? Then a snapshot is recorded as pending.
        prepare_snapshot(conn)
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


def clear_origin(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT set_config(:k, '', true)"), {"k": ORIGIN_SETTING})
    else:
        conn.execute(sa.text("DELETE FROM subscription_capture_origin"))
