"""A remote record whose id cannot be a key of the source table (`abc` or `12.5` for a bigint
key, `not-a-uuid` for a uuid key, a non-canonical spelling, an id longer than the state
tables hold) is one `invalid` change: audited with its cursor and the reason, the other changes
of the batch applied, the feed cursor advanced. Real SQLite and PostgreSQL, real HTTP servers.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.delivery.columns import (
    audit_id,
    identity_map,
    read_table_columns,
    shown_id,
)
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.audit_log import history
from subscription_export.reconcile.feeds import FeedBatch, fetch_changes
from subscription_export.reconcile.snapshot import load_snapshot, load_snapshots
from subscription_export.reconcile.source_side import destination_types
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.reconcile.three_way import decide
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

# that module's fixtures: a table `accounts` with a bigint or a uuid key, the sandbox servers
keys = any_table.keys
accounts_settings = any_table.accounts_settings
servers = any_table.servers

POLICY = ConflictPolicy.from_mapping({"strategy": "last_writer_wins"})


def bad_ids(keys: Keys) -> list[str]:
    """Ids a hostile or mistaken remote may send for this key type."""
    common = ["x" * 300, "bad\x00id"]
    if keys.kind == "bigint":
        return ["abc", "12.5", "99999999999999999999", " 1", "1_0", *common]
    upper = str(uuid.UUID(int=0xABC)).upper()  # a uuid, not in its canonical (lower) form
    return ["not-a-uuid", upper, "{" + keys.text(1) + "}", *common]


def _plant(server: SandboxServer, ident: str, like: str, amount: str) -> None:
    """A record the ERP's user created under `ident` (a copy of `like`), then edited."""
    system = server.system  # type: ignore[attr-defined]
    with system._lock:
        system._records[ident] = {**system._records[like], "id": ident}
    system.edit(ident, amount=amount)


def test_a_remote_id_that_is_not_a_key_is_invalid_and_the_rest_applies(
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
    erp = running["erp"]

    clock.now = at(2)
    erp.system.edit(one, amount="12.00")  # type: ignore[attr-defined]
    hostile = bad_ids(keys)
    for ident in hostile:
        _plant(erp, ident, two, "99.00")
    erp.system.edit(two, amount="22.00")  # type: ignore[attr-defined]
    last = len(erp.system.feed)  # type: ignore[attr-defined]

    # the job's load step (set-based snapshots) reads the batch without an exception too
    batch = fetch_changes(project, config.destinations["erp"])
    planned = load_snapshots(project, config.destinations["erp"], batch, POLICY)
    assert [s.error is not None for s in planned] == [False] + [True] * len(hostile) + [False]

    report = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)
    assert report.applied.outcomes["invalid"] == len(hostile)
    assert report.applied.written_back == 2
    held = accounts(engine, keys)
    assert sorted(held) == [1, 2]  # nothing inserted under a hostile id
    assert (held[1]["monthly_fee"], held[2]["monthly_fee"]) == (Decimal("12.00"), Decimal("22.00"))
    assert report.cursor == last and st.all_cursors(project.state)["erp"].applied == last

    summary = report.summary()
    assert summary["invalid"] == len(hostile)
    shown = summary["invalid_changes"]
    assert [c["cursor"] for c in shown] == list(range(2, 2 + len(hostile)))  # type: ignore[index]
    kind = "integer" if keys.kind == "bigint" else "uuid"
    for ident, change in zip(hostile, shown, strict=True):  # type: ignore[arg-type]
        assert f"({kind} key): id {shown_id(ident)}" in change["reason"], change
        assert "\x00" not in json.dumps(change, ensure_ascii=False)  # escaped, not raw

    for cursor, ident in enumerate(hostile, start=2):
        [entry] = history(project.state, audit_id(ident), "erp")
        assert (entry.outcome, entry.ref) == ("invalid", f"feed:{cursor}")
        assert entry.detail["cursor"] == cursor and "account_no" in entry.detail["error"]

    clock.now = at(4)  # a later edit of a real record still applies
    erp.system.edit(one, amount="14.00")  # type: ignore[attr-defined]
    again = rc.reconcile_system(project, config.destinations["erp"], POLICY, holder=HOLDER)
    assert dict(again.applied.outcomes) == {"merged": 1} or again.applied.written_back == 1
    assert accounts(engine, keys)[1]["monthly_fee"] == Decimal("14.00")


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_the_per_record_snapshot_of_a_bad_id_is_invalid(
    accounts_settings: Settings,
    keys: Keys,
    servers: tuple[Clock, dict[str, SandboxServer]],
    tmp_path: Path,
) -> None:
    """`load_snapshot` (per-record reads, no batch) gives the same `invalid` decision."""
    clock, running = servers
    engine = writer(accounts_settings.source_url)
    add_account(engine, keys, 1, "10.00")
    project = Project(accounts_settings)
    config = write_mapped_destinations(tmp_path / "destinations.toml", running)
    _deliver(project, config)
    clock.now = at(2)
    for ident in bad_ids(keys):
        _plant(running["erp"], ident, keys.text(1), "99.00")
    destination = config.destinations["erp"]
    batch: FeedBatch = fetch_changes(project, destination)
    types = destination_types(project, destination)
    with project.source.connect() as conn, project.state.connect() as state:
        for change in batch.changes:
            snap = load_snapshot(
                conn, state, destination, change, types=types, ignored=POLICY.ignored, lock=True
            )
            assert snap.error is not None and decide(snap, POLICY).outcome == "invalid"
            assert repr(change.id[:40])[1:-1] in snap.error


@pytest.mark.integration
@pytest.mark.parametrize(
    ("declared", "fits", "too_big"),
    [
        ("integer", "2147483647", "2147483648"),  # int4: an int64 id past it fails the INSERT
        ("smallint", "-32768", "40000"),
        ("varchar(12)", "a" * 12, "a" * 13),
    ],
)
def test_a_narrow_postgresql_key_column_bounds_the_ids(
    pg_url: str, declared: str, fits: str, too_big: str
) -> None:
    """The logical type says `integer`/`text`; the catalog says how much the column holds."""
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE narrow (k {declared} PRIMARY KEY, v text)")
    init_source(engine, "narrow")
    columns = identity_map(read_table_columns(engine, "narrow"))
    assert columns.key_error(fits) is None
    error = columns.key_error(too_big)
    assert error is not None and ("range" in error or "longer than the key column" in error)
    with pytest.raises(sa.exc.DataError), engine.begin() as conn:  # what the check spares
        conn.execute(sa.text("INSERT INTO narrow (k) VALUES (:k)"), {"k": _bound(too_big)})


def _bound(ident: str) -> object:
    return int(ident) if ident.lstrip("-").isdigit() else ident
