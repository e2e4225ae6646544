"""What `init` does for the snapshot, inside its own transaction.

* The change log accepts `op = 'r'` (a snapshot row). A log created before snapshots existed
  has `CHECK (op IN ('c', 'u', 'd'))`: PostgreSQL swaps the constraint; SQLite cannot alter a
  CHECK, so the log is rebuilt under the new definition in the same transaction (rows, ids,
  LSNs and the AUTOINCREMENT counter kept).
* The change log and the capture schema versions say which table a row came from
  (`source_table`): a log from before several tables gets the column, its rows (and versions)
  belonging to the one table that was captured then, the first configured table. PostgreSQL
  adds it with a default and drops the default (existing rows keep the value, no rewrite), so
  a trigger that does not name its table fails instead of guessing; SQLite rebuilds the log
  as for op 'r'.
* `subscription_snapshot_progress` holds, per table, how far the snapshot got. It is written in
  the same transaction as each chunk's rows, so after a kill it says exactly what is done.
* Whether a snapshot is needed is decided in `init`'s transaction, which has just installed the
  triggers and (PostgreSQL) locks the table against writers: an empty table needs none (every
  row will come through the triggers), so it is recorded as finished with 0 rows; otherwise a
  pending snapshot is recorded, and `init` (or `snapshot`) runs it after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.core.columns import SourceColumn

PROGRESS = "subscription_snapshot_progress"
LOG_OPS = ("c", "u", "d", "r")
OP_CHECK = "op IN ('c', 'u', 'd', 'r')"
_PG_CHECK_NAME = "subscription_change_log_op_check"

PROGRESS_DDL_SQLITE = f"""CREATE TABLE IF NOT EXISTS {PROGRESS} (
    table_name TEXT PRIMARY KEY,
    last_key TEXT,
    rows_done INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    finished_at TEXT
)"""
PROGRESS_DDL_PG = f"""CREATE TABLE IF NOT EXISTS {PROGRESS} (
    table_name text PRIMARY KEY,
    last_key text,
    rows_done bigint NOT NULL DEFAULT 0,
    chunks_done bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL,
    finished_at timestamptz
)"""

# The SQLite change log as `init` creates it now; the rebuild uses the same text. The columns
# every release's log has; `source_table` is copied, or filled in for a log from before it.
SQLITE_LOG_COLUMNS = (
    "id, lsn, op, subscription_id, before, after, changed_at, origin, schema_version"
)
SOURCE_TABLE = "source_table"
_SQLITE_LOG_INDEX = (
    "CREATE INDEX IF NOT EXISTS subscription_change_log_by_subscription"
    " ON subscription_change_log (subscription_id, id)"
)


LSN_INDEX_PG = (
    "CREATE UNIQUE INDEX IF NOT EXISTS subscription_change_log_lsn"
    " ON subscription_change_log (lsn) WHERE lsn IS NOT NULL"
)


def sqlite_log_ddl(name: str = "subscription_change_log") -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lsn INTEGER UNIQUE,
        op TEXT NOT NULL CHECK ({OP_CHECK}),
        subscription_id TEXT NOT NULL,
        before TEXT,
        after TEXT,
        changed_at TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT 'app',
        schema_version INTEGER NOT NULL,
        source_table TEXT NOT NULL
    )"""


def now_sql(postgres: bool) -> str:
    return "now()" if postgres else "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def upgrade_change_log(conn: Connection, legacy_table: str) -> bool:
    """Let an existing change log take `op = 'r'` and name each row's table (rows from before
    that are `legacy_table`'s); True when it had to change."""
    if conn.dialect.name == "postgresql":
        added = _add_source_table_pg(conn, "subscription_change_log", legacy_table)
        added |= _add_source_table_pg(conn, "subscription_capture_schema", legacy_table)
        added |= _drop_lsn_constraint_pg(conn)
        return _upgrade_pg(conn) or added
    if not has_column(conn, "subscription_capture_schema", SOURCE_TABLE):
        conn.exec_driver_sql(
            "ALTER TABLE subscription_capture_schema ADD COLUMN source_table TEXT NOT NULL"
            f" DEFAULT {_literal(conn, legacy_table)}"
        )
    return _upgrade_sqlite(conn, legacy_table)


def _literal(conn: Connection, text: str) -> str:
    literal = sa.String().literal_processor(conn.dialect)
    assert literal is not None
    return str(literal(text))


def has_column(conn: Connection, table: str, column: str) -> bool:
    if conn.dialect.name == "postgresql":  # (the inspector warns about xid8)
        query = (
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c"
            " AND NOT attisdropped"
        )
        return conn.execute(sa.text(query), {"t": table, "c": column}).first() is not None
    return any(row[1] == column for row in conn.exec_driver_sql(f"PRAGMA table_info({table})"))


def _add_source_table_pg(conn: Connection, table: str, legacy_table: str) -> bool:
    if has_column(conn, table, SOURCE_TABLE):
        return False
    # A constant default is stored once, not written into every row (PostgreSQL 11+); dropping
    # it then leaves existing rows with it and makes every new row name its table.
    conn.exec_driver_sql(
        f"ALTER TABLE {table} ADD COLUMN source_table text NOT NULL"
        f" DEFAULT {_literal(conn, legacy_table)}"
    )
    conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN source_table DROP DEFAULT")
    return True


def _drop_lsn_constraint_pg(conn: Connection) -> bool:
    """A log from before the partial LSN index has `lsn bigint UNIQUE`, whose index takes an
    entry (NULL) for every writer's insert. `init` has just built the partial unique index
    (LSN_INDEX_PG), so LSNs stay unique throughout; the full one goes."""
    names = conn.execute(
        sa.text(
            "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a"
            " ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
            " WHERE c.conrelid = 'subscription_change_log'::regclass AND c.contype = 'u'"
            " AND a.attname = 'lsn' AND cardinality(c.conkey) = 1"
        )
    ).scalars()
    dropped = False
    for name in list(names):
        conn.exec_driver_sql(
            f"ALTER TABLE subscription_change_log DROP CONSTRAINT {_ident(conn, name)}"
        )
        dropped = True
    return dropped


def _ident(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _upgrade_pg(conn: Connection) -> bool:
    checks = conn.execute(
        sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'subscription_change_log'::regclass AND contype = 'c'"
        )
    ).all()
    op_checks = [name for name, text in checks if "op" in text]
    if any("'r'" in text for _, text in checks if "op" in text):
        return False
    drops = "".join(f' DROP CONSTRAINT "{name}",' for name in op_checks)
    # NOT VALID: every existing row is c/u/d, which the wider check accepts, so the table need
    # not be scanned while init holds its lock; the check applies to every new row.
    conn.exec_driver_sql(
        f"ALTER TABLE subscription_change_log{drops}"
        f" ADD CONSTRAINT {_PG_CHECK_NAME} CHECK ({OP_CHECK}) NOT VALID"
    )
    return True


def _upgrade_sqlite(conn: Connection, legacy_table: str) -> bool:
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscription_change_log'"
    ).scalar_one()
    has_table_column = has_column(conn, "subscription_change_log", SOURCE_TABLE)
    if "'r'" in sql and has_table_column:
        return False
    # The capture triggers name the log; SQLite checks them when a table is renamed, so drop
    # them first (init re-installs the configured tables' in this same transaction).
    triggers = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        " AND sql LIKE '%subscription_change_log%'"
    ).scalars()
    for trigger in list(triggers):
        conn.exec_driver_sql(f'DROP TRIGGER "{trigger}"')
    seq = conn.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = 'subscription_change_log'"
    ).scalar()
    conn.exec_driver_sql(sqlite_log_ddl("subscription_change_log_new"))
    source = SOURCE_TABLE if has_table_column else _literal(conn, legacy_table)
    conn.exec_driver_sql(
        f"INSERT INTO subscription_change_log_new ({SQLITE_LOG_COLUMNS}, {SOURCE_TABLE})"
        f" SELECT {SQLITE_LOG_COLUMNS}, {source} FROM subscription_change_log ORDER BY id"
    )
    conn.exec_driver_sql("DROP TABLE subscription_change_log")
    conn.exec_driver_sql(
        "ALTER TABLE subscription_change_log_new RENAME TO subscription_change_log"
    )
    conn.exec_driver_sql(_SQLITE_LOG_INDEX)
    if seq is not None:  # ids are never reused, even those of rows deleted at the end
        conn.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'subscription_change_log'",
            (int(seq),),
        )
    return True


@dataclass(frozen=True)
class SnapshotNeed:
    table: str
    state: str  # "finished" (nothing to do), "pending" (to run or resume)
    created: bool  # recorded by this init


def prepare_snapshot(
    conn: Connection, table: str = "subscriptions", again: bool = False
) -> SnapshotNeed:
    """In init's transaction: create the progress table and record whether `table` needs one.
    `again`: forget an earlier snapshot (its capture was lost, so the table is read again)."""
    postgres = conn.dialect.name == "postgresql"
    conn.exec_driver_sql(PROGRESS_DDL_PG if postgres else PROGRESS_DDL_SQLITE)
    if again:
        conn.execute(sa.text(f"DELETE FROM {PROGRESS} WHERE table_name = :t"), {"t": table})
    row = conn.execute(
        sa.text(f"SELECT finished_at FROM {PROGRESS} WHERE table_name = :t"), {"t": table}
    ).first()
    if row is not None:
        return SnapshotNeed(table, "pending" if row[0] is None else "finished", False)
    quoted = conn.dialect.identifier_preparer.quote_identifier(table)
    empty = conn.exec_driver_sql(f"SELECT 1 FROM {quoted} LIMIT 1").first() is None
    now = now_sql(postgres)
    conn.execute(
        sa.text(
            f"INSERT INTO {PROGRESS} (table_name, started_at, finished_at)"
            f" VALUES (:t, {now}, {now if empty else 'NULL'})"
        ),
        {"t": table},
    )
    return SnapshotNeed(table, "finished" if empty else "pending", True)


def holds_unsent_values(
    conn: Connection,
    table: str,
    before: tuple[SourceColumn, ...],
    after: tuple[SourceColumn, ...],
) -> bool:
    """Whether a column new in `after` (or of another type than in `before`) is not null in
    some row of `table`: values that no change carried, which only a snapshot can send."""
    old = set(before)
    changed = [c.name for c in after if c not in old]
    if not changed:
        return False
    quote = conn.dialect.identifier_preparer.quote_identifier
    held = " OR ".join(f"{quote(name)} IS NOT NULL" for name in changed)
    found = conn.exec_driver_sql(f"SELECT 1 FROM {quote(table)} WHERE {held} LIMIT 1").first()
    return found is not None
