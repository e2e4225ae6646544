"""Issue 13 item 4: a captured table that is not the demo's works with every destination.

The table `accounts` has a bigint or a uuid key (`account_no`) and its own column names; the
destinations file maps each destination's fields to those columns. Its changes reach the
sandbox ERP, CRM and accounting servers; edits made in the ERP and the CRM come back into
`accounts` (the key written in its own type); a both-sided edit under `manual` is queued as a
conflict and resolved by hand. Real SQLite and PostgreSQL, real HTTP servers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.delivery.config import DestinationsConfig, load_destinations
from subscription_export.delivery.window import catch_up
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.manual_queue import resolve_conflict
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.schema import init_source
from subscription_export_tests.delivery.test_window_delivery import FAST_RETRY, export_all
from subscription_export_tests.helpers import writer
from subscription_export_tests.reconcile.test_query_count import EDITS, TARGET, counting
from subscription_export_tests.reconcile.test_reconcile import Clock, at, sandbox

HOLDER = "any-table-test"
TABLE = "accounts"
_COLUMNS = (
    "customer text NOT NULL, plan text NOT NULL, monthly_fee {fee} NOT NULL,"
    " ccy text NOT NULL, state text NOT NULL, renews_on date, rev integer NOT NULL,"
    " modified_at {ts}, notes text"
)
# Each destination's fields come from the table's own columns (`id` defaults to the key).
MAPPING = {
    "user_id": "customer",
    "name": "plan",
    "amount": "monthly_fee",
    "currency": "ccy",
    "status": "state",
    "version": "rev",
    "next_billing_date": "renews_on",
    "updated_at": "modified_at",
}
ACCOUNTING_MAPPING = {k: MAPPING[k] for k in ("amount", "currency", "status", "next_billing_date")}


KEY_TYPES = {  # (PostgreSQL, SQLite) declaration of the key
    "bigint": ("account_no bigint PRIMARY KEY", "account_no INTEGER PRIMARY KEY"),
    "uuid": ("account_no uuid PRIMARY KEY", "account_no uuid PRIMARY KEY"),
}


class Keys:
    """Account n's key in the table's type, and the text remotes know it by."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def value(self, n: int) -> Any:
        return n if self.kind == "bigint" else str(uuid.UUID(int=n))

    def text(self, n: int) -> str:
        return str(self.value(n))

    def number(self, held: Any) -> int:
        return int(held) if self.kind == "bigint" else uuid.UUID(str(held)).int


def create_accounts(engine: sa.Engine, kind: str) -> None:
    postgres = is_postgres(engine)
    key = KEY_TYPES[kind][0 if postgres else 1]
    # SQLite: a decimal declared TEXT DECIMAL(p, s) keeps the digits as written
    fee = "numeric(12, 2)" if postgres else "TEXT DECIMAL(12, 2)"
    columns = _COLUMNS.format(fee=fee, ts="timestamptz" if postgres else "TIMESTAMP")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} ({key}, {columns})")


def _sql(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date | Decimal):
        return str(value)
    return value


def add_account(engine: sa.Engine, keys: Keys, number: int, fee: str) -> None:
    row = {
        "account_no": keys.value(number),
        "customer": f"cust-{number}",
        "plan": "Team",
        "monthly_fee": fee,
        "ccy": "EUR",
        "state": "active",
        "renews_on": "2027-01-31",
        "rev": 1,
        "modified_at": _sql(at(0)),
        "notes": f"note {number}",
    }
    names = ", ".join(row)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"INSERT INTO {TABLE} ({names}) VALUES ({', '.join(':' + n for n in row)})"),
            row,
        )


def change_account(
    engine: sa.Engine, keys: Keys, number: int, minutes: float, **values: Any
) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {TABLE} SET {sets}, modified_at = :m, rev = rev + 1 WHERE account_no = :n"
            ),
            {**{k: _sql(v) for k, v in values.items()}, "m": _sql(at(minutes))}
            | {"n": keys.value(number)},
        )


def accounts(engine: sa.Engine, keys: Keys) -> dict[int, dict[str, Any]]:
    """The table's rows by account number."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {TABLE}")).mappings()
        held = {keys.number(row["account_no"]): dict(row) for row in rows}
    for row in held.values():  # SQLite holds the fee as text
        row["monthly_fee"] = Decimal(str(row["monthly_fee"]))
    return held


def write_mapped_destinations(path: Path, servers: dict[str, SandboxServer]) -> DestinationsConfig:
    lines = []
    for name, server in servers.items():
        mapping = ACCOUNTING_MAPPING if name == "accounting" else MAPPING
        lines += [
            f"[destinations.{name}]",
            f'base_url = "{server.url}"',
            f'table = "{TABLE}"',
            f"[destinations.{name}.timeouts]",
            "read_s = 2.0",
            f"[destinations.{name}.retry]",
            *(f"{k} = {v}" for k, v in FAST_RETRY.items()),
            f"[destinations.{name}.columns]",
            *(f'{field} = "{column}"' for field, column in mapping.items()),
            "",
        ]
    path.write_text("\n".join(lines))
    return load_destinations(path)


@pytest.fixture(params=sorted(KEY_TYPES))
def keys(request: pytest.FixtureRequest) -> Keys:
    return Keys(request.param)


@pytest.fixture
def accounts_settings(source_url: str, tmp_path: Path, keys: Keys) -> Settings:
    engine = writer(source_url)
    create_accounts(engine, keys.kind)
    init_source(engine, TABLE)
    return settings_for_accounts(source_url, tmp_path)


def settings_for_accounts(source_url: str, tmp_path: Path) -> Settings:
    """The settings every `accounts` test runs with (the table captured already)."""
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        table=TABLE,
        window_max_changes=1_000,
        window_max_age_s=0.0,
        read_batch_size=256,
    )


@pytest.fixture
def servers() -> Iterator[tuple[Clock, dict[str, SandboxServer]]]:
    clock = Clock()
    with sandbox(clock, ("erp", "crm", "accounting")) as running:
        yield clock, running


def _deliver(project: Project, config: DestinationsConfig) -> None:
    export_all(project)
    for destination in config.destinations.values():
        outcomes = catch_up(project, destination, HOLDER)
        assert all(o.dead_lettered == 0 for o in outcomes), outcomes


def _reconcile(project: Project, config: DestinationsConfig, system: str, strategy: str) -> None:
    policy = ConflictPolicy.from_mapping({"strategy": strategy})
    rc.reconcile_system(project, config.destinations[system], policy, holder=HOLDER)


def test_a_table_with_its_own_key_and_columns_is_delivered_to_every_system(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    _clock, running = servers
    engine = writer(accounts_settings.source_url)
    for number, fee in ((1, "10.00"), (2, "20.50"), (3, "7.25")):
        add_account(engine, keys, number, fee)
    change_account(engine, keys, 2, 1, monthly_fee="25.00")
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {TABLE} WHERE account_no = :n"), {"n": keys.value(3)})
    one, two, three = keys.text(1), keys.text(2), keys.text(3)
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)

    erp = running["erp"].system.records  # type: ignore[attr-defined]
    assert sorted(erp) == sorted([one, two])
    assert erp[two] | {"updated_at": None} == {
        "id": two,
        "user_id": "cust-2",
        "name": "Team",
        "category": None,
        "amount": "25.00",
        "currency": "EUR",
        "billing_cycle": None,
        "status": "active",
        "next_billing_date": "2027-01-31",
        "timezone": None,
        "created_at": None,
        "updated_at": None,
        "version": 2,
        "extra": {"notes": "note 2"},
    }
    crm = running["crm"].system.records  # type: ignore[attr-defined]
    assert sorted(crm) == sorted([one, two])
    assert (crm[one]["customer_id"], crm[one]["price"], crm[one]["custom_fields"]) == (
        "cust-1",
        "10.00",
        {"notes": "note 1"},
    )
    balance: dict[str, Decimal] = defaultdict(Decimal)
    for entry in running["accounting"].system.journal:  # type: ignore[attr-defined]
        sign = -1 if entry["kind"] in ("credit", "refund") else 1
        balance[entry["subscription_id"]] += sign * Decimal(entry["amount"])
    assert dict(balance) == {one: Decimal("10.00"), two: Decimal("25.00"), three: Decimal(0)}


def test_remote_edits_come_back_into_the_table_with_its_key_type(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    clock, running = servers
    engine = writer(accounts_settings.source_url)
    add_account(engine, keys, 1, "10.00")
    add_account(engine, keys, 2, "20.00")
    one, two = keys.text(1), keys.text(2)
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)

    clock.now = at(2)  # an ERP user raises account 1's fee; a CRM user renames account 2's plan
    running["erp"].system.edit(one, amount="12.00")  # type: ignore[attr-defined]
    running["crm"].system.edit(two, plan_name="Enterprise")  # type: ignore[attr-defined]
    _reconcile(project, config, "erp", "last_writer_wins")
    _reconcile(project, config, "crm", "last_writer_wins")
    held = accounts(engine, keys)
    assert (held[1]["monthly_fee"], held[2]["plan"]) == (Decimal("12.00"), "Enterprise")
    _deliver(project, config)  # the merged records reach the other systems
    assert running["crm"].system.records[one]["price"] == "12.00"  # type: ignore[attr-defined]
    assert running["erp"].system.records[two]["name"] == "Enterprise"  # type: ignore[attr-defined]

    # remote_wins: the ERP's edit of an account deleted here brings it back, its key inserted
    # in the key's type (PostgreSQL has no bigint = varchar or uuid = varchar operator; SQLite's
    # column affinity would convert a text '2' itself, so there the type check is a record)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {TABLE} WHERE account_no = :n"), {"n": keys.value(2)})
    clock.now = at(5)
    running["erp"].system.edit(two, amount="30.00")  # type: ignore[attr-defined]
    _reconcile(project, config, "erp", "remote_wins")
    with engine.connect() as conn:
        key_type = conn.execute(
            sa.text(
                f"SELECT pg_typeof(account_no)::text FROM {TABLE}"
                if is_postgres(engine)
                else f"SELECT typeof(account_no) FROM {TABLE}"
            )
        ).all()
    expected = {"bigint": ("bigint", "integer"), "uuid": ("uuid", "text")}[keys.kind]
    assert {t for (t,) in key_type} == {expected[0] if is_postgres(engine) else expected[1]}
    restored = accounts(engine, keys)[2]
    assert (restored["monthly_fee"], restored["plan"], restored["notes"]) == (
        Decimal("30.00"),
        "Enterprise",
        "note 2",
    )


def test_a_both_sided_edit_is_queued_and_resolved_by_hand(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    clock, running = servers
    engine = writer(accounts_settings.source_url)
    add_account(engine, keys, 7, "10.00")
    seven = keys.text(7)
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)

    change_account(engine, keys, 7, 1, monthly_fee="11.00")
    clock.now = at(2)
    running["erp"].system.edit(seven, amount="15.00")  # type: ignore[attr-defined]
    _reconcile(project, config, "erp", "manual")
    (queued,) = st.list_conflicts(project.state)
    assert (queued.destination, queued.subscription_id, queued.fields) == ("erp", seven, ["amount"])
    assert accounts(engine, keys)[7]["monthly_fee"] == Decimal("11.00")  # nothing applied yet

    resolved = resolve_conflict(project, config, queued.id, "merged", ["amount=13.00"])
    assert resolved.written_back and st.list_conflicts(project.state) == []
    held = accounts(engine, keys)[7]
    assert (held["monthly_fee"], held["customer"]) == (Decimal("13.00"), "cust-7")
    _deliver(project, config)  # the ERP gets the change it lacked, then the resolution's push
    _reconcile(project, config, "erp", "manual")
    assert running["erp"].system.records[seven]["amount"] == "13.00"  # type: ignore[attr-defined]


def _accounts_statements_per_edit(settings: Settings, keys: Keys, tmp_path: Path) -> float:
    """The ≤ 3 bound on a table that is not the demo's: `accounts`, a bigint key and its own
    column names, mapped in the destinations file (`test_any_table_end_to_end`)."""
    engine = writer(settings.source_url)
    for number in range(1, EDITS + 1):
        add_account(engine, keys, number, "10.00")
    clock = Clock()
    with sandbox(clock, ("erp",)) as running:
        project = Project(settings)
        config = write_mapped_destinations(tmp_path / "destinations.toml", running)
        export_all(project)
        catch_up(project, config.destinations["erp"], HOLDER)
        clock.now = at(2)
        for number in range(1, EDITS + 1):
            running["erp"].system.edit(keys.text(number), amount="12.00")  # type: ignore[attr-defined]
        policy = ConflictPolicy.from_mapping({"strategy": "last_writer_wins"})
        with counting() as statements:
            report = rc.reconcile_system(project, config.destinations["erp"], policy, holder=HOLDER)
    assert report.applied.written_back == EDITS
    fees = {row["monthly_fee"] for row in accounts(engine, keys).values()}
    assert fees == {Decimal("12.00")}
    return len(statements) / EDITS


@pytest.mark.parametrize("keys", ["bigint"], indirect=True)
@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_at_most_three_statements_per_edit_on_a_mapped_table(
    accounts_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    assert _accounts_statements_per_edit(accounts_settings, keys, tmp_path) <= TARGET
