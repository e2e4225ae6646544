"""The capture triggers' names, and whether a table's capture is in place right now.

A captured table can lose its triggers without anyone touching this product: `DROP TABLE` and
`CREATE TABLE` again (a migration tool's "recreate"), `DROP TRIGGER`, or on PostgreSQL
`ALTER TABLE … DISABLE TRIGGER`. Its changes then never reach the change log while every run
goes on exporting the other tables and reporting success, so `run` and `status` check it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.datasets import DEFAULT_TABLE

# Trigger names are per table on PostgreSQL, so one fixed name cannot collide with another
# table's (nor, cut at 63 bytes, with this table's `{table}_capture`).
TRUNCATE_TRIGGER = "subscription_capture_truncate"
SQLITE_TRIGGER_SUFFIXES = ("insert", "update", "rekey", "delete")

# An enabled row trigger of the table that runs the capture function (tgtype bit 0: ROW).
_PG_INSTALLED = """
SELECT COUNT(*) FROM pg_trigger
WHERE tgrelid = to_regclass(:table) AND tgfoid = to_regproc(:function)
  AND tgenabled <> 'D' AND tgtype & 1 = 1
"""


def trigger_names(table: str) -> tuple[str, str]:
    """(PostgreSQL function, trigger prefix); the default table keeps the names of releases
    that captured only `subscriptions`, so re-running `init` replaces them."""
    if table == DEFAULT_TABLE:
        return "subscription_capture", "subscriptions_capture"
    return _pg_function_name(table), f"{table}_capture"


_PG_NAME_BYTES = 63  # PostgreSQL cuts longer identifiers to this (NAMEDATALEN - 1)


def _pg_function_name(table: str) -> str:
    """`subscription_capture_{table}`, unique per table within PostgreSQL's 63 bytes.

    Functions share one namespace: cut at 63 bytes, two long table names with a common start
    got one function, and `init` of the second replaced the first's, so the first table's
    changes were logged as the second's. A name too long is cut and ends with a hash of the
    table's name instead (names that fit are as before)."""
    name = f"subscription_capture_{table}"
    if len(name.encode()) <= _PG_NAME_BYTES:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:12]
    head = name.encode()[: _PG_NAME_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


def capture_installed(conn: Connection, table: str) -> bool:
    """Whether `table`'s capture triggers exist (and, on PostgreSQL, are enabled)."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    function, prefix = trigger_names(table)
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            sa.text(_PG_INSTALLED), {"table": quote(table), "function": quote(function)}
        ).scalar_one()
        return bool(found)
    rows = conn.execute(
        sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
        {"t": table},
    ).scalars()
    # SQLite names are case-insensitive: a table recreated as "LEDGER" is still "ledger".
    names = {name.lower() for name in rows}
    return all(f"{prefix}_{s}".lower() in names for s in SQLITE_TRIGGER_SUFFIXES)


# Every partition below the table, at any depth (`regclass` text: quoted, qualified if need be).
_PG_PARTITIONS = """
SELECT relid::regclass::text FROM pg_partition_tree(to_regclass(:table))
WHERE relid <> to_regclass(:table) ORDER BY level, relid::regclass::text
"""


def pg_partitions(conn: Connection, table: str) -> list[str]:
    """The partitions of a partitioned `table` (none for a plain table)."""
    quoted = conn.dialect.identifier_preparer.quote_identifier(table)
    return list(conn.execute(sa.text(_PG_PARTITIONS), {"table": quoted}).scalars())


def truncate_uncaptured(conn: Connection, table: str) -> list[str]:
    """`table`'s partitions whose TRUNCATE is not captured: created after `init` (PostgreSQL
    clones row triggers to a new partition, not the statement trigger that captures it)."""
    if conn.dialect.name != "postgresql":
        return []
    quote = conn.dialect.identifier_preparer.quote_identifier
    function, _prefix = trigger_names(table)
    found = conn.execute(
        sa.text(
            "SELECT t.tgrelid::regclass::text FROM pg_trigger t WHERE t.tgname = :name"
            " AND t.tgfoid = to_regproc(:function) AND t.tgenabled <> 'D'"
        ),
        {"name": TRUNCATE_TRIGGER, "function": quote(function)},
    ).scalars()
    covered = set(found)
    return [p for p in pg_partitions(conn, table) if p not in covered]


def capture_gaps(engine: Engine, tables: Sequence[str]) -> dict[str, list[str]]:
    """Per configured table, its partitions whose TRUNCATE is not captured (only those with)."""
    with engine.connect() as conn:
        gaps = {t: truncate_uncaptured(conn, t) for t in tables}
    return {t: parts for t, parts in gaps.items() if parts}


def truncate_gap_line(table: str, partitions: Sequence[str]) -> str:
    """What `run` and `status` say about them (one line: it names the command)."""
    return (
        f"table {table}: TRUNCATE of partition(s) {', '.join(partitions)} is not captured"
        " (created after init): a TRUNCATE there would reach no export; run"
        " `subscription-export init`"
    )


def uncaptured_tables(engine: Engine, tables: Sequence[str]) -> list[str]:
    """The configured tables whose changes are not being captured now."""
    with engine.connect() as conn:
        return [t for t in tables if not capture_installed(conn, t)]


def uncaptured_line(table: str) -> str:
    """What `run` and `status` say about such a table (one line: it names the command)."""
    return (
        f"table {table} is not captured: its capture triggers are missing or disabled (was it"
        " dropped and created again?), so its changes since then are in no export; run"
        " `subscription-export init`, which reinstalls them and snapshots the table again"
    )
