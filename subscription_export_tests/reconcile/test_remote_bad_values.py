"""A remote field value the source column cannot hold (a string past `varchar(n)`/`char(n)`,
an integer past int2/int4, a number past `numeric(p, s)`, a NUL character) is one `invalid`
change, found before any write: audited with its cursor and the reason naming field, column
and limit, the other changes of the batch applied, the feed cursor advanced. Before, the
write-back raised `DataError` and failed the whole round. Real SQLite and PostgreSQL, real
HTTP servers.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.delivery.columns import identity_map, read_table_columns
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.apply import INVALID_SHOWN
from subscription_export.reconcile.audit_log import history
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import writer
from subscription_export_tests.reconcile import test_any_table_end_to_end as any_table
from subscription_export_tests.reconcile.test_any_table_end_to_end import (
    HOLDER,
    Keys,
    _deliver,
    accounts,
    add_account,
    write_mapped_destinations,
)
from subscription_export_tests.reconcile.test_reconcile import Clock, at
from subscription_export_tests.reconcile.test_remote_bad_ids import POLICY

keys = any_table.keys
accounts_settings = any_table.accounts_settings
servers = any_table.servers


def _narrow(engine: sa.Engine) -> None:
    """The table's text columns made as narrow as an ERP-facing schema often has them."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE accounts ALTER COLUMN plan TYPE varchar(8),"
            " ALTER COLUMN ccy TYPE char(3), ALTER COLUMN notes TYPE varchar(10)"
        )


@pytest.mark.parametrize("source_url", ["postgresql"], indirect=True)
def test_a_value_past_its_postgresql_column_is_invalid_and_the_rest_applies(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    clock, running = servers
    engine = writer(accounts_settings.source_url)
    _narrow(engine)
    for n in range(1, 6):
        add_account(engine, keys, n, f"{n}0.00")
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    erp = running["erp"].system  # type: ignore[attr-defined]

    clock.now = at(2)
    erp.edit(keys.text(1), name="Enterprise")  # 10 characters into varchar(8)
    erp.edit(keys.text(2), currency="EURO")  # char(3)
    erp.edit(keys.text(3), extra={"notes": "n" * 11})  # an extra column, varchar(10)
    erp.edit(keys.text(4), amount="1000000000000.00")  # numeric(12, 2)
    erp.edit(keys.text(5), amount="55.00", name="Pro")
    last = len(erp.feed)

    report = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)
    assert report.applied.outcomes["invalid"] == 4
    assert report.applied.written_back == 1
    held = accounts(engine, keys)
    assert (held[5]["monthly_fee"], held[5]["plan"]) == (Decimal("55.00"), "Pro")
    assert [held[n]["plan"] for n in (1, 2, 3, 4)] == ["Team"] * 4
    assert report.cursor == last and st.all_cursors(project.state)["erp"].applied == last

    reasons = [c["reason"] for c in report.summary()["invalid_changes"]]
    assert "'name'" in reasons[0] and "'plan'" in reasons[0] and "varchar(8)" in reasons[0]
    assert "'ccy'" in reasons[1] and "char(3)" in reasons[1]
    assert "'notes'" in reasons[2] and "varchar(10)" in reasons[2]
    assert "'amount'" in reasons[3] and "'monthly_fee'" in reasons[3]
    assert "numeric(12, 2)" in reasons[3]
    for cursor, n in enumerate((1, 2, 3, 4), start=1):
        [entry] = history(project.state, keys.text(n), "erp")
        assert (entry.outcome, entry.ref) == ("invalid", f"feed:{cursor}")
        assert entry.detail["cursor"] == cursor and entry.detail["error"] == reasons[cursor - 1]


@pytest.mark.parametrize("source_url", ["sqlite"], indirect=True)
def test_many_invalid_changes_are_counted_but_only_the_first_are_listed(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    """A NUL in a text value (PostgreSQL cannot hold it) is invalid on SQLite too; a
    thousand mistaken records make a summary of `INVALID_SHOWN` changes and their count."""
    clock, running = servers
    engine = writer(accounts_settings.source_url)
    add_account(engine, keys, 1, "10.00")
    add_account(engine, keys, 2, "20.00")
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    erp = running["erp"].system  # type: ignore[attr-defined]
    clock.now = at(2)
    bad = INVALID_SHOWN + 10
    for n in range(bad):
        erp.edit(keys.text(1), name=f"bad\x00{n}")
    erp.edit(keys.text(2), amount="22.00")

    report = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)
    summary = report.summary()
    assert summary["invalid"] == bad and report.applied.written_back == 1
    shown = summary["invalid_changes"]
    assert [c["cursor"] for c in shown] == list(range(1, 1 + INVALID_SHOWN))
    assert "NUL" in shown[0]["reason"] and "\x00" not in json.dumps(shown, ensure_ascii=False)
    assert summary["feed_cursor"] == len(erp.feed)
    assert accounts(engine, keys)[2]["monthly_fee"] == Decimal("22.00")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("declared", "fits", "too_big", "said"),
    [
        ("integer", 2147483647, 2147483648, "integer"),
        ("smallint", -32768, -32769, "smallint"),
        ("varchar(4)", "abcd", "abcde", "varchar(4)"),
        ("char(2)", "ab", "abc", "char(2)"),
    ],
)
def test_a_narrow_postgresql_column_bounds_the_values(
    pg_url: str, declared: str, fits: object, too_big: object, said: str
) -> None:
    """The logical type says `integer`/`text`; the catalog says how much the column holds."""
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE narrow (k bigint PRIMARY KEY, v {declared})")
    init_source(engine, "narrow")
    columns = identity_map(read_table_columns(engine, "narrow"))
    assert columns.value_error({"v": fits, "k": "1"}) is None
    assert columns.value_error({"v": None}) is None
    error = columns.value_error({"v": too_big})
    assert error is not None and "'v'" in error and said in error, error
    with pytest.raises(sa.exc.DataError), engine.begin() as conn:  # what the check spares
        conn.execute(sa.text("INSERT INTO narrow (k, v) VALUES (1, :v)"), {"v": too_big})
