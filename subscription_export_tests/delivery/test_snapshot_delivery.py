"""Issue 13: rows that existed before `init` reach every destination through the snapshot.

200 subscriptions are written into the application's table before capture is installed, then
`init` runs as a user runs it (a real process). Every row must be exported as `_op='r'`, reach
the ERP and the CRM as an upsert, and give the ledger an opening balance, so that 50 later
price changes of those rows book their differences and none becomes a dead letter.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.delivery.mapping import crm_item, erp_record, recognized_price
from subscription_export.delivery.window import deliver_window
from subscription_export.runtime import Project
from subscription_export.sandbox.server import running_sandbox
from subscription_export.source.demo_table import demo_table_ddl
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.delivery.test_window_delivery import (
    HOLDER,
    export_all,
    source_state,
    window_rows,
    write_destinations,
)
from subscription_export_tests.helpers import insert, update, writer


@pytest.fixture
def uncaptured(source_url: str, tmp_path: Path) -> Settings:
    """Settings for a source whose `subscriptions` table exists but has no capture yet."""
    engine = writer(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(demo_table_ddl(is_postgres(engine)))
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=100,
        window_max_age_s=0.0,
        read_batch_size=64,
    )


def run_cli(args: list[str], settings: Settings, tmp_path: Path) -> str:
    return _run(args, settings, tmp_path).stdout


def test_rows_that_existed_before_init_reach_every_destination(
    uncaptured: Settings, tmp_path: Path
) -> None:
    engine = writer(uncaptured.source_url)
    with engine.begin() as conn:
        for n in range(200):
            insert(conn, f"old{n:03d}", amount=f"{10 + n}.50")
        conn.execute(sa.text("UPDATE subscriptions SET status = 'paused' WHERE id LIKE '%7'"))
    out = run_cli(["init"], uncaptured, tmp_path)
    assert "snapshot of subscriptions: 200 rows" in out, out
    with engine.begin() as conn:
        for n in range(0, 200, 4):  # 50 price changes of rows that predate capture
            update(conn, f"old{n:03d}", amount=f"{20 + n}.25")

    project = Project(uncaptured)
    windows = export_all(project)
    rows = [row for window in windows for row in window_rows(project, window)]
    with running_sandbox() as servers:
        config = write_destinations(tmp_path / "destinations.toml", servers, batch_size=50)
        outcomes = {
            name: [deliver_window(project, config.destinations[name], w, HOLDER) for w in windows]
            for name in servers
        }
        dead = {name: sum(o.dead_lettered for o in outs) for name, outs in outcomes.items()}
        ops = defaultdict(int)
        for row in rows:
            ops[row["_op"]] += 1
        assert (dead, dict(ops)) == ({"erp": 0, "crm": 0, "accounting": 0}, {"r": 200, "u": 50})

        last = {row["id"]: row for row in rows}
        source = source_state(project)
        assert set(last) == set(source) and len(source) == 200
        assert servers["erp"].system.records == {i: erp_record(r) for i, r in last.items()}
        assert servers["crm"].system.records == {i: crm_item(r)["record"] for i, r in last.items()}
        # The ledger: an opening balance per billable old row, then the differences; each
        # subscription's balance is its current recognized price.
        journal = servers["accounting"].system.journal
        openings = [e for e in journal if e["kind"] == "opening"]
        assert len(openings) == sum(1 for i in source if not i.endswith("7"))
        balance: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for entry in journal:
            sign = -1 if entry["kind"] in ("credit", "refund") else 1
            balance[(entry["subscription_id"], entry["currency"])] += sign * Decimal(
                entry["amount"]
            )
        current = {}
        for ident, image in source.items():
            price = recognized_price({**image, "id": ident})
            if price is not None:
                current[(ident, price[0])] = price[1]
        assert {k: v for k, v in balance.items() if v} == current
