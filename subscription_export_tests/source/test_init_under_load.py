"""`init` re-installing triggers while the application writes both tables in the other order.

`init` locks the captured tables in its configured order; an application transaction that
writes them in the opposite order would deadlock with it, and PostgreSQL would abort one of the
two. `init` must be the one that yields (a short lock wait, then a retry), never the
application's transaction, and it must not surface a raw deadlock error. Real PostgreSQL.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from subscription_export.core.errors import SourceBusyError
from subscription_export.source import schema
from subscription_export.source.demo_table import create_demo_table
from subscription_export.source.schema import CaptureSchema, init_tables
from subscription_export_tests.export.test_several_tables import PLANS_DDL
from subscription_export_tests.helpers import insert, writer

TABLES = ("subscriptions", "plans")


def _init_waits_for_plans(engine: sa.Engine, timeout_s: float = 120.0) -> None:
    """Until a backend waits for a lock on this test's `plans` (init's LOCK TABLE); other
    tests' `init`s in the same database may hold init's advisory lock for a while first."""
    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE relation = 'plans'::regclass AND NOT granted"
                )
            ).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("init never waited for the application's lock on plans")


def test_init_yields_to_a_writer_taking_the_tables_in_the_other_order(pg_url: str) -> None:
    engine = writer(pg_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
        conn.exec_driver_sql("INSERT INTO plans VALUES ('p1', 'Basic', 1)")
        insert(conn, "s1")
    init_tables(engine, TABLES)

    outcome: dict[str, object] = {}

    def reinit() -> None:
        try:
            outcome["schemas"] = init_tables(engine, TABLES)
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc

    thread = threading.Thread(target=reinit, daemon=True)
    with engine.connect() as app:
        app.exec_driver_sql("SET lock_timeout = '20s'")  # never hang the test on a bug
        app.exec_driver_sql("UPDATE plans SET version = 2 WHERE id = 'p1'")  # holds plans
        thread.start()
        _init_waits_for_plans(engine)  # init holds subscriptions, waits for plans
        app.exec_driver_sql("UPDATE subscriptions SET amount = 1 WHERE id = 's1'")
        app.commit()
    thread.join(timeout=60)

    assert "error" not in outcome, outcome.get("error")
    schemas = outcome["schemas"]
    assert isinstance(schemas, list) and all(isinstance(s, CaptureSchema) for s in schemas)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM plans")).scalar_one() == 2


def test_init_gives_up_with_one_line_when_a_transaction_keeps_a_table(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = writer(pg_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
        conn.exec_driver_sql("INSERT INTO plans VALUES ('p1', 'Basic', 1)")
    monkeypatch.setattr(schema, "_INIT_ATTEMPTS", 2)
    with engine.connect() as app:
        app.exec_driver_sql("UPDATE plans SET version = 2 WHERE id = 'p1'")  # left open
        with pytest.raises(SourceBusyError, match="init could not lock subscriptions, plans"):
            init_tables(engine, TABLES)
        app.rollback()
    assert init_tables(engine, TABLES)  # once the transaction ends
