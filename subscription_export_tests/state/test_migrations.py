"""The state schema's alembic migrations, on real SQLite files and PostgreSQL schemas: a new
database, one left by a release before alembic (frozen DDL snapshots), repeated and concurrent
upgrades, and a head that matches `state/tables.py`."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for
from subscription_export.core.errors import StateSchemaError
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.metrics.store import (
    ReconcileMetrics,
    load_capture_samples,
    load_exports,
    reconcile_outcomes,
    record_reconcile_metrics,
)
from subscription_export.reconcile import sync_bases
from subscription_export.reconcile import sync_state as st
from subscription_export.state import migrate
from subscription_export.state.progress import completed_keys
from subscription_export.state.tables import metadata
from subscription_export.state.watermarks import SqlWatermarkStore
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.state.legacy_state import (
    BASE_RECORD,
    KEY,
    RELEASES,
    T0,
    create_release_schema,
    write_legacy_state,
)


@pytest.fixture
def state(source_url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A brand-new database (SQLite file or PostgreSQL schema); `upgrade` forgets what it has
    checked before, so each call below really looks at the database."""
    monkeypatch.setattr(migrate, "_at_head", _Forgetful())
    return engine_for(source_url)


class _Forgetful(set[Any]):
    def add(self, item: Any) -> None:
        pass


def schema_diff(engine: Engine) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": migrate.include_name,
                "version_table": migrate.VERSION_TABLE,
                "compare_type": True,
            },
        )
        return list(compare_metadata(context, metadata))


def ddl_of(engine: Engine, action: Any) -> list[str]:
    """Statements other than reads that `action()` executes on `engine`."""
    seen: list[str] = []

    def keep(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA", "BEGIN", "WITH")):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", keep)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", keep)
    return seen


def test_head_constant_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_current_head() == migrate.HEAD
    assert scripts.get_base() == migrate.BASELINE


def test_a_new_database_upgrades_to_a_head_equal_to_the_models(state: Engine) -> None:
    assert migrate.current_revision(state) is None
    migrate.upgrade(state)
    assert migrate.current_revision(state) == migrate.HEAD
    assert schema_diff(state) == []
    assert set(metadata.tables) <= set(sa.inspect(state).get_table_names())


def test_upgrading_twice_is_a_no_op(state: Engine) -> None:
    migrate.upgrade(state)
    assert ddl_of(state, lambda: migrate.upgrade(state)) == []
    assert migrate.current_revision(state) == migrate.HEAD


@pytest.mark.parametrize("release", RELEASES)
def test_a_pre_alembic_release_upgrades_with_its_state_intact(state: Engine, release: str) -> None:
    create_release_schema(state, release)
    with_feed_columns = release != "state_pre_6bb99c7"
    write_legacy_state(state, with_feed_columns)
    with state.begin() as conn:  # someone's own alembic in the same database
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('their_own')")

    migrate.upgrade(state)

    assert migrate.current_revision(state) == migrate.HEAD
    assert schema_diff(state) == []
    with state.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM alembic_version").all() == [("their_own",)]
    assert SqlWatermarkStore(state).all() == {"erp": 100, "parquet": 100}
    assert list_windows(state) == [Window(1, 100)]
    assert completed_keys(state, "parquet") == {KEY}
    [letter] = list_dead_letters(state)
    assert (letter.destination, letter.lsn, letter.error, letter.status) == (
        "crm",
        42,
        "422 unprocessable",
        "open",
    )
    [conflict] = st.list_conflicts(state)
    assert (conflict.fields, conflict.remote, conflict.opened_cursor) == (
        ["amount"],
        BASE_RECORD | {"amount": "14.00"},
        8,
    )
    with state.connect() as conn:
        base = sync_bases.get_base(conn, "erp", "s1")
    assert base is not None
    assert (base.held_record, base.held_version, base.remote_cursor) == (BASE_RECORD, 3, 7)
    expected_feed = (BASE_RECORD, 3) if with_feed_columns else (None, None)
    assert (base.feed_record, base.feed_version) == expected_feed
    [export] = load_exports(state)
    assert (export.records, export.created, export.latency_p95_s) == (100, 60, 2.5)
    assert [s.last_lsn for s in load_capture_samples(state)] == [100]


def test_a_pre_alembic_database_gains_what_its_release_lacked(state: Engine) -> None:
    create_release_schema(state, "state_pre_6bb99c7")
    write_legacy_state(state, with_feed_columns=False)
    migrate.upgrade(state)

    record_reconcile_metrics(state, ReconcileMetrics("erp", 0, 8, {"merged": 2}, 1, 1, T0))
    assert reconcile_outcomes(state) == {"erp": {"merged": 2}}
    with state.begin() as conn:
        sync_bases.put_base(
            conn,
            "erp",
            "s1",
            held_record=BASE_RECORD,
            held_version=4,
            agreed_record=BASE_RECORD,
            log_id=42,
            remote_cursor=9,
            feed_record=BASE_RECORD,
            feed_version=4,
        )
        base = sync_bases.get_base(conn, "erp", "s1")
    assert base is not None and (base.feed_record, base.feed_version) == (BASE_RECORD, 4)


def test_a_database_from_a_newer_release_is_refused_clearly(state: Engine) -> None:
    migrate.upgrade(state)
    with state.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(StateSchemaError, match=r"revision '9999'.*newer release"):
        migrate.upgrade(state)


_UPGRADE_AT = """
import sys, time
from subscription_export.core.db import engine_for
from subscription_export.state import migrate
import alembic.command  # loaded before the start line, so both processes reach the lock together

engine = engine_for(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
migrate.upgrade(engine)
print(migrate.current_revision(engine))
"""


def test_two_processes_upgrading_at_once_both_succeed(state: Engine, source_url: str) -> None:
    start = str(time.time() + 4.0)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE_AT, source_url, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [migrate.HEAD, migrate.HEAD]
    with state.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).all()
    assert rows == [(migrate.HEAD,)]
    assert schema_diff(state) == []


_AT_HEAD = """
import sys
from subscription_export.core.db import engine_for
from subscription_export.state import migrate

migrate.upgrade(engine_for(sys.argv[1]))
sys.exit(1 if any(m == "alembic" or m.startswith("alembic.") for m in sys.modules) else 0)
"""


def test_a_database_at_head_costs_no_alembic(state: Engine, source_url: str) -> None:
    migrate.upgrade(state)
    done = subprocess.run([sys.executable, "-c", _AT_HEAD, source_url], timeout=120)
    assert done.returncode == 0
