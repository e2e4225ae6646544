"""Deletes for rows that left a table while its capture was gone.

A table dropped and created again (or whose triggers were dropped or disabled) loses rows
without a trigger firing: the change log still says they exist, so every consumer keeps them.
When `init` finds such a table (installed.capture_installed was false), it logs a delete for
each key whose last change is not a delete and that the table no longer holds, with that
change's image as the before-image, before the table is snapshotted again.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The last change of each of the table's keys (largest id: insertion order, which is LSN order).
_LAST_PG = """
SELECT DISTINCT ON (subscription_id) subscription_id, op, COALESCE(after, before) AS image,
       schema_version
FROM subscription_change_log WHERE source_table = :t ORDER BY subscription_id, id DESC
"""
_LAST_SQLITE = """
SELECT l.subscription_id, l.op, COALESCE(l.after, l.before) AS image, l.schema_version
FROM subscription_change_log AS l
WHERE l.source_table = :t AND l.id = (
    SELECT MAX(m.id) FROM subscription_change_log AS m
    WHERE m.source_table = :t AND m.subscription_id = l.subscription_id)
"""


def log_vanished_rows(conn: Connection, table: str, alias: str, key_text: str) -> int:
    """In init's transaction: a `d` row for every key the log holds and `table` does not.
    `key_text`: the key's canonical text over `alias`, as the triggers build it. Returns how
    many were logged."""
    postgres = conn.dialect.name == "postgresql"
    quoted = conn.dialect.identifier_preparer.quote_identifier(table)
    held = f"SELECT 1 FROM {quoted} AS {alias} WHERE {key_text} = last.subscription_id"
    gone = (
        f"FROM ({_LAST_PG if postgres else _LAST_SQLITE}) AS last"
        f" WHERE last.op <> 'd' AND NOT EXISTS ({held})"
    )
    if postgres:  # numbered by the sequencer once init commits
        statement = (
            "INSERT INTO subscription_change_log (op, subscription_id, before, after, origin,"
            " schema_version, source_table) SELECT 'd', last.subscription_id, last.image, NULL,"
            f" 'app', last.schema_version, :t {gone} ORDER BY last.subscription_id"
        )
    else:  # SQLite numbers in the writing transaction, as its triggers do
        statement = (
            "INSERT INTO subscription_change_log (lsn, op, subscription_id, before, after,"
            " changed_at, origin, schema_version, source_table)"
            " SELECT (SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log)"
            " + ROW_NUMBER() OVER (ORDER BY last.subscription_id), 'd', last.subscription_id,"
            " last.image, NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'app',"
            f" last.schema_version, :t {gone} ORDER BY last.subscription_id"
        )
    return conn.execute(sa.text(statement), {"t": table}).rowcount
