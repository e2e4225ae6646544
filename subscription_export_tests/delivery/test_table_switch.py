"""A destination without a `table` key is fed by the first captured table. Reordering
SUBSCRIPTION_EXPORT_TABLES must not silently switch it to another table (the CRM would
suddenly receive another table's rows): the state remembers the table each destination was
last delivered from, and an implied change is refused before anything is sent. An explicit
`table` that changes is the user's decision: delivered, and logged. Real SQLite and
PostgreSQL sources, real sandbox CRM over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.delivery.config import DestinationConfigError, load_destinations
from subscription_export.delivery.window import catch_up
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.demo_table import create_demo_table, demo_table_ddl
from subscription_export.source.schema import init_tables
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import list_windows
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.delivery.test_window_delivery import FAST_RETRY
from subscription_export_tests.helpers import insert, writer
from subscription_export_tests.reconcile.test_reconcile import Clock, sandbox

HOLDER = "table-switch-test"
OTHER = "trials"  # a table of the demo's shape: the CRM would take its rows without a complaint


@pytest.fixture
def two_tables(source_url: str, tmp_path: Path) -> Settings:
    engine = writer(source_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        ddl = demo_table_ddl(is_postgres(engine))
        conn.exec_driver_sql(ddl.replace("EXISTS subscriptions", f"EXISTS {OTHER}"))
    init_tables(engine, ("subscriptions", OTHER))
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        tables=f"subscriptions,{OTHER}",
        window_max_changes=1_000,
        window_max_age_s=0.0,
    )


@pytest.fixture
def crm() -> Iterator[SandboxServer]:
    with sandbox(Clock(), ("crm",)) as running:
        yield running["crm"]


def _destinations(path: Path, crm: SandboxServer, table: str | None = None) -> Path:
    lines = ["[destinations.crm]", f'base_url = "{crm.url}"']
    lines += [f'table = "{table}"'] if table else []
    lines += ["[destinations.crm.retry]", *(f"{k} = {v}" for k, v in FAST_RETRY.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _export_and_deliver(project: Project, destinations: Path) -> None:
    cut_windows(project)
    for dataset in project.datasets:
        done = completed_keys(project.state, dataset.consumer("parquet"))
        for window in list_windows(project.state):
            if window.key not in done:
                export_window_file(project, "parquet", window, holder=HOLDER, dataset=dataset)
    (config,) = load_destinations(destinations).destinations.values()
    catch_up(project, config, HOLDER)


def _add_trial(settings: Settings, ident: str) -> None:
    with writer(settings.source_url).begin() as conn:
        insert(conn, "placeholder")  # the helper writes `subscriptions`; move the row over
        columns = "id, user_id, name, category, amount, currency, billing_cycle, status,"
        columns += " next_billing_date, timezone, created_at, updated_at, version"
        conn.execute(
            sa.text(
                f"INSERT INTO {OTHER} ({columns}) SELECT :id, user_id, name, category, amount,"
                f" currency, billing_cycle, status, next_billing_date, timezone, created_at,"
                f" updated_at, version FROM subscriptions WHERE id = 'placeholder'"
            ),
            {"id": ident},
        )
        conn.execute(sa.text("DELETE FROM subscriptions WHERE id = 'placeholder'"))


def test_reordered_tables_do_not_switch_a_destination_without_a_table_key(
    two_tables: Settings, crm: SandboxServer, tmp_path: Path
) -> None:
    destinations = _destinations(tmp_path / "destinations.toml", crm)
    with writer(two_tables.source_url).begin() as conn:
        insert(conn, "s1")
    _export_and_deliver(Project(two_tables), destinations)
    records = crm.system.records  # type: ignore[attr-defined]
    assert "s1" in records
    before = dict(records)

    reordered = Project(two_tables.model_copy(update={"tables": f"{OTHER},subscriptions"}))
    _add_trial(two_tables, "t1")
    with pytest.raises(DestinationConfigError) as refused:
        _export_and_deliver(reordered, destinations)
    message = str(refused.value)
    assert refused.value.exit_code == 2 and "\n" not in message
    assert 'table = "subscriptions"' in message and "[destinations.crm]" in message, message
    assert dict(crm.system.records) == before  # type: ignore[attr-defined]  # nothing sent


def test_an_explicit_table_change_is_delivered_and_logged(
    two_tables: Settings, crm: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with writer(two_tables.source_url).begin() as conn:
        insert(conn, "s1")
    _export_and_deliver(Project(two_tables), _destinations(tmp_path / "d.toml", crm))

    _add_trial(two_tables, "t1")
    explicit = _destinations(tmp_path / "d.toml", crm, table=OTHER)
    with caplog.at_level(logging.WARNING):
        _export_and_deliver(Project(two_tables), explicit)
    assert "t1" in crm.system.records  # type: ignore[attr-defined]
    assert any(
        "crm" in r.getMessage() and OTHER in r.getMessage() and "subscriptions" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_run_once_refuses_the_switch_on_one_line_with_exit_2(
    two_tables: Settings, crm: SandboxServer, tmp_path: Path
) -> None:
    """The same through `run --once` (Dagster runs, then the catch-up asks the table too)."""
    env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(_destinations(tmp_path / "d.toml", crm))}
    with writer(two_tables.source_url).begin() as conn:
        insert(conn, "s1")
    run_cli(["run", "--once"], two_tables, tmp_path, env=env)
    _add_trial(two_tables, "t1")
    reordered = two_tables.model_copy(update={"tables": f"{OTHER},subscriptions"})
    result = run_cli(["run", "--once"], reordered, tmp_path, check=False, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert 'set table = "subscriptions" under [destinations.crm]' in line, line
    assert sorted(crm.system.records) == ["s1"]  # type: ignore[attr-defined]
