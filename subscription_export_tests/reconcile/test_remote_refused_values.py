"""A remote edit the source's own rules refuse - a CHECK constraint, a value outside a
PostgreSQL enum type - is one `invalid` change, its reason the database's message: audited, the
other changes of the batch applied, the feed cursor advanced. Before, the write-back's
`IntegrityError`/`DataError` failed the whole round on every run, so one such record stopped
the system's reconcile for good. Real SQLite and PostgreSQL, real HTTP servers.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.audit_log import history
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.manual_queue import resolve_conflict
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import writer
from subscription_export_tests.reconcile import test_any_table_end_to_end as any_table
from subscription_export_tests.reconcile.test_any_table_end_to_end import (
    HOLDER,
    TABLE,
    Keys,
    _deliver,
    accounts,
    add_account,
    change_account,
    write_mapped_destinations,
)
from subscription_export_tests.reconcile.test_reconcile import Clock, at
from subscription_export_tests.reconcile.test_remote_bad_ids import POLICY

keys = any_table.keys
servers = any_table.servers


@pytest.fixture
def guarded_settings(source_url: str, tmp_path: Path, keys: Keys) -> Settings:
    """`accounts` with the rules a real schema has: a fee that is never negative and, on
    PostgreSQL, a plan that is an enum type."""
    engine = writer(source_url)
    any_table.create_accounts(engine, keys.kind)
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.exec_driver_sql(
                "ALTER TABLE accounts ADD CONSTRAINT fee_not_negative CHECK (monthly_fee >= 0)"
            )
            conn.exec_driver_sql("CREATE TYPE plan_kind AS ENUM ('Team', 'Pro')")
            conn.exec_driver_sql(
                "ALTER TABLE accounts ALTER COLUMN plan TYPE plan_kind USING plan::plan_kind"
            )
        else:  # SQLite cannot add a CHECK to a table; a trigger refuses the same way
            conn.exec_driver_sql(
                "CREATE TRIGGER fee_not_negative BEFORE UPDATE OF monthly_fee ON accounts"
                " WHEN CAST(NEW.monthly_fee AS REAL) < 0"
                " BEGIN SELECT RAISE(ABORT, 'fee_not_negative'); END"
            )
    init_source(engine, TABLE)
    return any_table.settings_for_accounts(source_url, tmp_path)


def test_an_edit_the_source_refuses_is_invalid_and_the_rest_applies(
    guarded_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    clock, running = servers
    engine = writer(guarded_settings.source_url)
    postgres = is_postgres(engine)
    for n in range(1, 5):
        add_account(engine, keys, n, f"{n}0.00")
    project = Project(guarded_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    erp = running["erp"].system  # type: ignore[attr-defined]

    clock.now = at(2)
    erp.edit(keys.text(1), amount="-5.00")  # the CHECK (the trigger on SQLite) refuses it
    erp.edit(keys.text(2), amount="22.00")
    erp.edit(keys.text(3), name="Enterprise")  # not a plan_kind (text on SQLite: fine)
    erp.edit(keys.text(4), amount="44.00", name="Pro")
    last = len(erp.feed)

    report = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)

    refused = 2 if postgres else 1
    assert report.applied.outcomes["invalid"] == refused
    assert report.applied.written_back == 4 - refused
    held = accounts(engine, keys)
    assert held[1]["monthly_fee"] == Decimal("10.00")
    assert held[2]["monthly_fee"] == Decimal("22.00")
    assert str(held[3]["plan"]) == ("Team" if postgres else "Enterprise")
    assert (held[4]["monthly_fee"], str(held[4]["plan"])) == (Decimal("44.00"), "Pro")
    assert report.cursor == last and st.all_cursors(project.state)["erp"].applied == last

    reasons = {c["cursor"]: c["reason"] for c in report.summary()["invalid_changes"]}
    assert "fee_not_negative" in reasons[1] and "refused" in reasons[1], reasons
    if postgres:
        assert "plan_kind" in reasons[3] and "'Enterprise'" in reasons[3].replace('"', "'")
    for cursor, reason in reasons.items():
        [entry] = history(project.state, keys.text(cursor), "erp")
        assert (entry.outcome, entry.detail["error"]) == ("invalid", reason)

    # The next run starts after them: nothing is retried, nothing fails.
    again = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)
    assert sum(again.applied.outcomes.values()) == 0 and again.applied.written_back == 0


@pytest.mark.parametrize("source_url", ["postgresql"], indirect=True)
def test_a_refused_value_in_a_round_of_many_leaves_the_others_applied(
    guarded_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    """Thirty edits of distinct accounts decided in one round, one of them refused: the
    round is redone change by change, and only that one is set aside."""
    clock, running = servers
    engine = writer(guarded_settings.source_url)
    for n in range(1, 31):
        add_account(engine, keys, n, "10.00")
    project = Project(guarded_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    erp = running["erp"].system  # type: ignore[attr-defined]
    clock.now = at(2)
    for n in range(1, 31):
        erp.edit(keys.text(n), amount="-1.00" if n == 17 else f"{n}.50")

    report = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)

    assert report.applied.outcomes["invalid"] == 1 and report.applied.written_back == 29
    held = accounts(engine, keys)
    assert held[17]["monthly_fee"] == Decimal("10.00")
    assert all(held[n]["monthly_fee"] == Decimal(f"{n}.50") for n in range(1, 31) if n != 17)
    with engine.connect() as conn:  # each write-back logged once: nothing doubled by the redo
        logged = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE origin = 'erp'")
        ).scalar_one()
    assert logged == 29


def test_resolving_a_conflict_with_a_refused_value_says_why_and_keeps_it_open(
    guarded_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    """By hand the user chooses again: one line with the database's reason, the conflict
    still open and the row untouched - then a value the table takes settles it."""
    clock, running = servers
    engine = writer(guarded_settings.source_url)
    add_account(engine, keys, 7, "10.00")
    project = Project(guarded_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    change_account(engine, keys, 7, 1, monthly_fee="11.00")
    clock.now = at(2)
    running["erp"].system.edit(keys.text(7), amount="-15.00")  # type: ignore[attr-defined]
    manual = ConflictPolicy.from_mapping({"strategy": "manual"})
    rc.reconcile_system(project, config.destinations["erp"], manual, holder=HOLDER)
    (queued,) = st.list_conflicts(project.state)

    with pytest.raises(ReconcileError) as refused:
        resolve_conflict(project, config, queued.id, "remote")
    message = str(refused.value)
    assert f"conflict {queued.id}" in message and "fee_not_negative" in message, message
    assert "\n" not in message
    assert [c.id for c in st.list_conflicts(project.state)] == [queued.id]
    assert accounts(engine, keys)[7]["monthly_fee"] == Decimal("11.00")

    resolved = resolve_conflict(project, config, queued.id, "merged", ["amount=15.00"])
    assert resolved.written_back and st.list_conflicts(project.state) == []
    assert accounts(engine, keys)[7]["monthly_fee"] == Decimal("15.00")
