"""A session with `session_replication_role = replica` fires only triggers enabled ALWAYS or
REPLICA: logical replication's apply workers run so, and bulk loaders set it to skip foreign
keys. The capture triggers were plain (enabled on origin only), so those sessions' changes
were written to the table and never to the change log, and every run reported success."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import writer


@pytest.mark.integration
@pytest.mark.parametrize("partitioned", [False, True], ids=["plain", "partitioned"])
def test_changes_in_replica_sessions_are_captured(pg_url: str, partitioned: bool) -> None:
    engine = writer(pg_url)
    with engine.begin() as conn:
        if partitioned:
            conn.exec_driver_sql(
                "CREATE TABLE t (id integer, r text, v text, PRIMARY KEY (id, r))"
                " PARTITION BY LIST (r)"
            )
            conn.exec_driver_sql("CREATE TABLE t_a PARTITION OF t FOR VALUES IN ('a')")
        else:
            conn.exec_driver_sql("CREATE TABLE t (id integer, r text, v text, PRIMARY KEY (id, r))")
    init_source(engine, "t")
    if partitioned:  # created after init: its row triggers are clones of the parent's
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t_b PARTITION OF t FOR VALUES IN ('b')")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'a', 'x'), (2, 'b', 'y')")
        conn.exec_driver_sql("UPDATE t SET v = 'z' WHERE id = 2")
        conn.exec_driver_sql("DELETE FROM t WHERE id = 2")
        conn.exec_driver_sql("TRUNCATE t")
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT op, subscription_id FROM subscription_change_log ORDER BY id")
        ).all()
    assert [tuple(r) for r in logged] == [
        ("c", '[1, "a"]'),
        ("c", '[2, "b"]'),
        ("u", '[2, "b"]'),
        ("d", '[2, "b"]'),
        ("d", '[1, "a"]'),
    ]
