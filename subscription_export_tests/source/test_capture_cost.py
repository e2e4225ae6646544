"""The change log's LSN index is partial (`WHERE lsn IS NOT NULL`): a writer's insert adds no
entry to it, every reader's LSN query can still use it, and `init` upgrades a log that has the
older full `UNIQUE (lsn)` (docs/architecture.md, "Capture cost")."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.source.schema import init_source
from subscription_export.source.sequencer import sequence
from subscription_export_tests.helpers import insert, update, writer
from subscription_export_tests.source.test_snapshot import app_table

pytestmark = pytest.mark.integration

_LSN_INDEXES = sa.text(
    "SELECT c.relname, i.indisunique, pg_get_expr(i.indpred, i.indrelid)"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " WHERE i.indrelid = 'subscription_change_log'::regclass AND i.indnatts = 1"
    " AND a.attname = 'lsn'"
)
# The LSN queries of the reader, the delivery and the capture sample, as they filter.
_LSN_QUERIES = (
    "SELECT lsn FROM subscription_change_log WHERE lsn BETWEEN 1 AND 2 ORDER BY lsn",
    "SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log",
    "SELECT changed_at FROM subscription_change_log WHERE lsn = 2",
    "SELECT lsn FROM subscription_change_log WHERE lsn IS NOT NULL ORDER BY lsn DESC LIMIT 1",
)


def _uses_lsn_index(conn: Connection, query: str) -> bool:
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # may it, not: does it on 3 rows
    plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + query))
    return "subscription_change_log_lsn" in plan


def test_init_replaces_the_full_lsn_unique_constraint_with_a_partial_index(pg_url: str) -> None:
    engine = app_table(pg_url, 0)
    init_source(engine)
    with engine.begin() as conn:  # the log as the releases before this one created it
        conn.exec_driver_sql("DROP INDEX IF EXISTS subscription_change_log_lsn")
        conn.exec_driver_sql("ALTER TABLE subscription_change_log ADD UNIQUE (lsn)")
        insert(conn, "a")
        insert(conn, "b")
    sequence(engine)
    with engine.begin() as conn:
        update(conn, "a", amount="2.00")  # left unnumbered across the upgrade

    init_source(writer(pg_url))
    init_source(writer(pg_url))  # and again: nothing left to upgrade

    with engine.connect() as conn:
        indexes = conn.execute(_LSN_INDEXES).all()
        constraints = conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint"
            " WHERE conrelid = 'subscription_change_log'::regclass AND contype = 'u'"
        ).all()
    assert constraints == []
    assert [tuple(r) for r in indexes] == [
        ("subscription_change_log_lsn", True, "(lsn IS NOT NULL)")
    ]
    assert sequence(engine).numbered == 1
    with engine.connect() as conn:
        lsns = conn.exec_driver_sql(
            "SELECT subscription_id, lsn FROM subscription_change_log ORDER BY lsn"
        ).all()
        assert [tuple(r) for r in lsns] == [("a", 1), ("b", 2), ("a", 3)]
        conn.rollback()
        with conn.begin():
            usable = {q: _uses_lsn_index(conn, q) for q in _LSN_QUERIES}
        assert usable == dict.fromkeys(_LSN_QUERIES, True)
    # still unique among numbered rows
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.exec_driver_sql(
            "INSERT INTO subscription_change_log (lsn, op, subscription_id, schema_version,"
            " source_table) VALUES (2, 'u', 'z', 1, 'subscriptions')"
        )
