"""Bidirectional sync of a subscription the source held before capture: its snapshot row (`r`)
is the base every system starts from, and edits on all sides merge as for a created one."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.source.demo_table import demo_table_ddl
from subscription_export.source.schema import init_source
from subscription_export.source.snapshot import run_snapshot
from subscription_export_tests.helpers import writer
from subscription_export_tests.reconcile.test_reconcile import record, world


def test_a_snapshotted_subscription_syncs_both_ways(source_url: str, tmp_path: Path) -> None:
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=1_000,
        window_max_age_s=0.0,
    )
    engine = writer(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(demo_table_ddl(is_postgres(engine)))
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}) as w:
        w.insert("s1")  # before capture exists
        init_source(engine)
        run_snapshot(engine)
        w.deliver()
        assert w.change_log("s1") == [("r", "app")]
        w.assert_converged("s1", record())  # ERP and CRM got the snapshot row as an upsert

        w.update("s1", 1, amount="11.00")
        w.remote_edit("erp", "s1", 2, status="paused")
        w.remote_edit("crm", "s1", 3, name="CRM name")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("11.00"), status="paused", name="CRM name"))
        assert w.change_log("s1")[:2] == [("r", "app"), ("u", "app")]
        assert {origin for _, origin in w.change_log("s1")} == {"app", "erp", "crm"}
        journal = w.servers["accounting"].system.journal  # type: ignore[attr-defined]
        kinds = [(e["kind"], e["amount"]) for e in journal]
        assert kinds == [("opening", "10.0000"), ("revenue", "1.0000"), ("credit", "11.0000")]
        assert list_dead_letters(w.project.state) == []
