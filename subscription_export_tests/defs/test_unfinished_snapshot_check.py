"""In the Dagster UI an unfinished snapshot is a failed check, not a quiet success.

An `init` killed mid-snapshot leaves the rows it did not reach out of the stream; `run` exits 3
and `status` says so, but a window exported by the daemon showed only green checks. Each
table's Parquet asset now has the non-blocking ERROR check `snapshot_finished`: a window
exported while the table's snapshot is unfinished fails it, naming the table, the rows done and
the command that finishes it; once finished, the next window passes. The window's own files
stay complete for its LSN range, so the downstream steps still run.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.defs.runner import run_cycle
from subscription_export.source.schema import init_source
from subscription_export.source.snapshot import run_snapshot
from subscription_export_tests.source.snapshot_load import app_table


def _checks(instance: dg.DagsterInstance, run_id: str, name: str) -> list[dg.AssetCheckEvaluation]:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    found = [e.dagster_event.event_specific_data for e in events]  # type: ignore[union-attr]
    return [c for c in found if c.check_name == name]  # type: ignore[union-attr]


def _snapshot_checks(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    return _checks(instance, run_id, "snapshot_finished")


_INSERT = (
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, 'u',"
    " 'n', 'software', 1, 'EUR', 'monthly', 'active', '2027-01-01', 'UTC',"
    " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 1)"
)


def _trigger_names(conn: sa.Connection) -> list[str]:
    if conn.dialect.name == "postgresql":
        query = (
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'subscriptions'::regclass"
            " AND NOT tgisinternal"
        )
    else:
        query = (
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'subscriptions'"
        )
    return [str(r[0]) for r in conn.exec_driver_sql(query)]


def _drop_trigger(engine: sa.Engine, name: str) -> str:
    quoted = engine.dialect.identifier_preparer.quote_identifier(name)
    return f"DROP TRIGGER {quoted}" + (" ON subscriptions" if is_postgres(engine) else "")


def test_a_window_exported_during_an_unfinished_snapshot_fails_its_snapshot_check(
    source_url: str, tmp_path: Path
) -> None:
    engine = app_table(source_url, 30)
    init_source(engine)
    partial = run_snapshot(engine, chunk_size=10, max_chunks=1)  # init killed after one chunk
    assert not partial.finished
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    instance = dg.DagsterInstance.ephemeral()

    first = run_cycle(settings, instance=instance)
    [run] = first.runs
    assert run.success  # the window's files are whole for its LSN range
    [check] = _snapshot_checks(instance, run.run_id)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    description = check.description or ""
    assert "snapshot of subscriptions unfinished (10 rows so far)" in description
    assert "subscription-export snapshot --table subscriptions" in description

    run_snapshot(engine, chunk_size=10)
    with engine.begin() as conn:  # a change, so that the cycle has a window to export
        conn.execute(sa.text("UPDATE subscriptions SET amount = amount + 1 WHERE id = 'k000001'"))
    second = run_cycle(settings, instance=instance)
    assert [r.success for r in second.runs] == [True]
    [check] = _snapshot_checks(instance, second.runs[0].run_id)
    assert check.passed


def test_a_window_of_a_table_whose_triggers_are_gone_fails_its_capture_check(
    source_url: str, tmp_path: Path
) -> None:
    """A table dropped and created again (or its triggers dropped) sends its changes to no
    window; `run` exits 3 for it, and under the daemon its windows showed green."""
    engine = app_table(source_url, 0)
    init_source(engine)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    instance = dg.DagsterInstance.ephemeral()
    with engine.begin() as conn:
        conn.execute(sa.text(_INSERT), {"id": "k1"})
    [run] = run_cycle(settings, instance=instance).runs
    [check] = _checks(instance, run.run_id, "capture_installed")
    assert check.passed

    with engine.begin() as conn:
        conn.execute(sa.text(_INSERT), {"id": "k2"})  # logged: the next window has a change
        triggers = [
            name
            for name in _trigger_names(conn)
            if "truncate" not in name.lower()  # the row triggers are what capture a write
        ]
        for name in triggers:
            conn.exec_driver_sql(_drop_trigger(engine, name))
    [run] = run_cycle(settings, instance=instance).runs
    assert run.success
    [check] = _checks(instance, run.run_id, "capture_installed")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "table subscriptions is not captured" in (check.description or "")
