"""Several captured tables, each destination fed by the table its `table` names (issue 13).

`subscriptions` (text ids "1", "2") and `accounts` (bigint keys 1, 2) are captured into one
stream; the ERP and accounting read `accounts`, the CRM reads `subscriptions`. Equal keys in
the two tables must not meet: each destination receives only its table's rows, and the
accounting's previous images (what an update is booked against) come from its own table.
Real SQLite and PostgreSQL, real sandbox HTTP servers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.defs.definitions import build_definitions
from subscription_export.delivery.config import load_destinations
from subscription_export.delivery.window import catch_up, lagging_window
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.demo_table import create_demo_table
from subscription_export.source.schema import init_tables
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import list_windows
from subscription_export_tests.delivery.test_window_delivery import FAST_RETRY
from subscription_export_tests.helpers import insert, update, writer
from subscription_export_tests.reconcile.test_any_table_end_to_end import (
    ACCOUNTING_MAPPING,
    MAPPING,
    TABLE,
    Keys,
    accounts,
    add_account,
    change_account,
    create_accounts,
)
from subscription_export_tests.reconcile.test_reconcile import Clock, at, sandbox

HOLDER = "destination-tables-test"
FEEDS = {"erp": TABLE, "crm": "subscriptions", "accounting": TABLE}


@pytest.fixture
def two_tables(source_url: str, tmp_path: Path) -> Settings:
    engine = writer(source_url)
    create_demo_table(engine)
    create_accounts(engine, "bigint")
    init_tables(engine, ("subscriptions", TABLE))
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        tables=f"subscriptions,{TABLE}",
        window_max_changes=1_000,
        window_max_age_s=0.0,
    )


@pytest.fixture
def servers() -> Iterator[dict[str, SandboxServer]]:
    with sandbox(Clock(), tuple(FEEDS)) as running:
        yield running


def _destinations_file(path: Path, servers: dict[str, SandboxServer]) -> Path:
    lines = []
    for name, server in servers.items():
        lines += [f"[destinations.{name}]", f'base_url = "{server.url}"']
        lines += [f'table = "{FEEDS[name]}"', f"[destinations.{name}.retry]"]
        lines += [f"{k} = {v}" for k, v in FAST_RETRY.items()]
        if FEEDS[name] == TABLE:
            mapping = ACCOUNTING_MAPPING if name == "accounting" else MAPPING
            lines.append(f"[destinations.{name}.columns]")
            lines += [f'{field} = "{column}"' for field, column in mapping.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _export_and_deliver(project: Project, destinations_file: Path) -> None:
    cut_windows(project)
    for dataset in project.datasets:
        done = completed_keys(project.state, dataset.consumer("parquet"))
        for window in list_windows(project.state):
            if window.key not in done:
                export_window_file(project, "parquet", window, holder=HOLDER, dataset=dataset)
    for destination in load_destinations(destinations_file).destinations.values():
        outcomes = catch_up(project, destination, HOLDER)
        assert all(o.dead_lettered == 0 for o in outcomes), outcomes


def test_each_destination_gets_its_own_tables_rows_and_prior_images(
    two_tables: Settings, servers: dict[str, SandboxServer], tmp_path: Path
) -> None:
    engine, keys = writer(two_tables.source_url), Keys("bigint")
    project = Project(two_tables)
    destinations = _destinations_file(tmp_path / "destinations.toml", servers)
    add_account(engine, keys, 1, "10.00")
    add_account(engine, keys, 2, "20.50")
    with engine.begin() as conn:  # the same keys in the other table, written after
        insert(conn, "1", amount="99.00")
        insert(conn, "2", amount="77.00")
    _export_and_deliver(project, destinations)

    change_account(engine, keys, 2, 1, monthly_fee="25.00")
    with engine.begin() as conn:
        update(conn, "1", amount="5.00")
    _export_and_deliver(project, destinations)

    assert len(list_windows(project.state)) == 2
    erp = servers["erp"].system.records  # type: ignore[attr-defined]
    assert {k: (r["user_id"], r["amount"]) for k, r in erp.items()} == {
        "1": ("cust-1", "10.00"),
        "2": ("cust-2", "25.00"),
    }
    crm = servers["crm"].system.records  # type: ignore[attr-defined]
    assert {k: r["price"] for k, r in crm.items()} == {"1": "5.0000", "2": "77.0000"}
    balance: dict[str, Decimal] = defaultdict(Decimal)
    for entry in servers["accounting"].system.journal:  # type: ignore[attr-defined]
        sign = -1 if entry["kind"] in ("credit", "refund") else 1
        balance[entry["subscription_id"]] += sign * Decimal(entry["amount"])
    # Booked against account 2's own 20.50, not subscription "2"'s later 77.00.
    assert dict(balance) == {"1": Decimal("10.00"), "2": Decimal("25.00")}


def test_a_sync_asset_depends_on_its_destinations_table(
    two_tables: Settings, servers: dict[str, SandboxServer], tmp_path: Path
) -> None:
    destinations = _destinations_file(tmp_path / "destinations.toml", servers)
    defs = build_definitions(two_tables, destinations)
    graph = defs.resolve_asset_graph()
    parents = {
        name: {key.to_user_string() for key in graph.get(dg.AssetKey(f"{name}_sync")).parent_keys}
        for name in FEEDS
    }
    assert parents == {
        "erp": {"accounts_changes"},
        "crm": {"subscription_changes"},
        "accounting": {"accounts_changes"},
    }


def test_a_reconcile_reads_only_its_tables_history(two_tables: Settings, tmp_path: Path) -> None:
    """ERP edits of accounts 1 and 2 while subscriptions "1" and "2" (same key text, other
    table) were changed and deleted here since the last delivery: under `manual` that is no
    conflict, the edits are applied to the accounts and the subscriptions are left alone."""
    clock = Clock()
    with sandbox(clock, ("erp",)) as running:
        engine, keys = writer(two_tables.source_url), Keys("bigint")
        project = Project(two_tables)
        path = _destinations_file(tmp_path / "destinations.toml", running)
        add_account(engine, keys, 1, "10.00")
        add_account(engine, keys, 2, "20.00")
        with engine.begin() as conn:
            insert(conn, "1", amount="99.00")
            insert(conn, "2", amount="98.00")
        _export_and_deliver(project, path)

        with engine.begin() as conn:  # local changes of the other table's "1"
            update(conn, "1", amount="50.00")
            conn.execute(sa.text("DELETE FROM subscriptions WHERE id = '2'"))
        clock.now = at(2)
        running["erp"].system.edit("1", amount="12.00")  # type: ignore[attr-defined]
        running["erp"].system.edit("2", amount="22.00")  # type: ignore[attr-defined]
        config = load_destinations(path).destinations["erp"]
        rc.reconcile_system(project, config, ConflictPolicy.from_mapping({"strategy": "manual"}))

    assert st.list_conflicts(project.state) == []
    held = accounts(engine, keys)
    assert (held[1]["monthly_fee"], held[2]["monthly_fee"]) == (Decimal("12.00"), Decimal("22.00"))
    with engine.connect() as conn:
        amount = conn.execute(sa.text("SELECT amount FROM subscriptions WHERE id = '1'")).scalar()
    assert Decimal(str(amount)) == Decimal("50.00")


def test_a_destination_behind_on_its_own_table_is_caught_up(
    two_tables: Settings, servers: dict[str, SandboxServer], tmp_path: Path
) -> None:
    """The catch-up asks each destination's own table: the ERP (accounts) lags on a window
    whose accounts export is done while the subscriptions export of it is not; the CRM
    (subscriptions) cannot be delivered that window yet."""
    engine, keys = writer(two_tables.source_url), Keys("bigint")
    project = Project(two_tables)
    config = load_destinations(_destinations_file(tmp_path / "d.toml", servers))
    add_account(engine, keys, 1, "10.00")
    cut_windows(project)
    (window,) = list_windows(project.state)
    accounts_data = project.dataset_of(TABLE)
    export_window_file(project, "parquet", window, holder=HOLDER, dataset=accounts_data)

    by_name = config.destinations
    assert lagging_window(project, [by_name["erp"], by_name["accounting"]]) == window
    assert lagging_window(project, [by_name["crm"]]) is None
