"""Bidirectional sync end to end: source ⇄ real sandbox ERP/CRM/accounting servers on 127.0.0.1.

Each test writes a real source (SQLite file, and PostgreSQL where `settings` is parametrized),
cuts and exports windows, delivers them with the window delivery, lets users edit records in the
ERP and the CRM (sandbox `edit`/`delete`, which feed `GET /changes`), and runs reconcile cycles.
The sandbox clock is set by the test, so "who changed later" is exact.

Assertions compare every system's stored record with the documented result of the strategy,
and count what each server applied per idempotency key (echoes and duplicates would show).
The `World` harness here is shared with the property and Dagster tests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings
from subscription_export.delivery.config import DestinationsConfig
from subscription_export.delivery.mapping import (
    CRM_FIELD_NAMES,
    subscription_from_crm,
    subscription_from_erp,
)
from subscription_export.delivery.window import catch_up
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.apply import CRASH_ENV, CRASH_EXIT
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.feeds import feed_systems
from subscription_export.reconcile.manual_queue import describe_conflict, history, resolve_conflict
from subscription_export.reconcile.outbox import list_pushes
from subscription_export.reconcile.policies import (
    ENV_POLICY_FILE,
    ENV_STRATEGY,
    ConflictPolicies,
    load_policies,
)
from subscription_export.reconcile.source_side import column_types, normalize
from subscription_export.reconcile.strategies import DEFAULT_IGNORED, ConflictPolicy
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import RecordSystem, make_system
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.delivery.test_window_delivery import export_all, write_destinations
from subscription_export_tests.helpers import read_exported

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOLDER = "reconcile-test"
REPO = Path(__file__).resolve().parents[2]
BASE = {
    "user_id": "u1",
    "name": "Plan",
    "category": "software",
    "amount": Decimal("10.00"),
    "currency": "EUR",
    "billing_cycle": "monthly",
    "status": "active",
    "next_billing_date": dt.date(2027, 1, 31),
    "timezone": "Europe/Berlin",
}


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@dataclass
class Clock:
    """The sandbox systems' clock: a user's edit is stamped with the time the test sets."""

    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now


@contextmanager
def sandbox(clock: Clock, names: tuple[str, ...]) -> Iterator[dict[str, SandboxServer]]:
    servers: dict[str, SandboxServer] = {}
    try:
        for name in names:
            servers[name] = SandboxServer(make_system(name, clock=clock)).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _sql_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date | Decimal):
        return str(value)
    return value


@dataclass
class World:
    """One source, its state, the sandbox systems and the sync around them."""

    project: Project
    servers: dict[str, SandboxServer]
    destinations: DestinationsConfig
    policies: ConflictPolicies
    clock: Clock
    reports: list[rc.ReconcileReport] = field(default_factory=list)
    batch_limit: int = 100  # feed changes per reconcile run (1: one change per run)
    destinations_path: Path | None = None  # the file `destinations` was loaded from

    # -- the people editing ------------------------------------------------------------------

    def insert(self, sid: str, minutes: float = 0, **fields: Any) -> None:
        row = {"id": sid, **BASE, **fields, "created_at": at(minutes), "updated_at": at(minutes)}
        names = list(row)
        cols = ", ".join([*names, "version"])
        values = ", ".join([*(f":{n}" for n in names), "1"])
        with self._writer().begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO subscriptions ({cols}) VALUES ({values})"),
                {k: _sql_value(v) for k, v in row.items()},
            )

    def update(self, sid: str, minutes: float, **fields: Any) -> None:
        """An app edit: sets updated_at (the business time) and bumps version."""
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        params = {k: _sql_value(v) for k, v in fields.items()}
        with self._writer().begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE subscriptions SET {sets}, updated_at = :updated_at,"
                    " version = version + 1 WHERE id = :id"
                ),
                {**params, "id": sid, "updated_at": _sql_value(at(minutes))},
            )

    def delete(self, sid: str) -> None:
        with self._writer().begin() as conn:
            conn.execute(sa.text("DELETE FROM subscriptions WHERE id = :id"), {"id": sid})

    def remote_edit(self, system: str, sid: str, minutes: float, **fields: Any) -> None:
        self.clock.now = at(minutes)
        names = CRM_FIELD_NAMES if system == "crm" else {}
        self.system(system).edit(sid, **{names.get(k, k): v for k, v in fields.items()})

    def remote_delete(self, system: str, sid: str, minutes: float) -> None:
        self.clock.now = at(minutes)
        self.system(system).delete(sid)

    # -- the sync ------------------------------------------------------------------------------

    def deliver(self) -> None:
        export_all(self.project)
        for destination in self.destinations.destinations.values():
            catch_up(self.project, destination, HOLDER)

    def reconcile(self, system: str) -> rc.ReconcileReport:
        config = self.destinations.destinations[system]
        report = rc.reconcile_system(
            self.project,
            config,
            self.policies.for_destination(system),
            holder=HOLDER,
            page_size=self.batch_limit,
            max_changes=self.batch_limit,
        )
        self.reports.append(report)
        return report

    def step(self, name: str) -> None:
        if name == "deliver":
            self.deliver()
        else:
            self.reconcile(name)

    def cycle(self, order: tuple[str, ...] | None = None) -> None:
        for name in order or ("deliver", *self.feed_names):
            self.step(name)

    def settle(self, max_rounds: int = 6, order: tuple[str, ...] | None = None) -> int:
        """Cycles until one changes nothing anywhere; fails if that takes over `max_rounds`."""
        for rounds in range(1, max_rounds + 1):
            before = self.fingerprint()
            self.cycle(order)
            if self.fingerprint() == before:
                return rounds
        raise AssertionError(f"still exchanging changes after {max_rounds} rounds")

    def fingerprint(self) -> tuple[Any, ...]:
        with self.project.source.connect() as conn:
            top = conn.execute(sa.text("SELECT MAX(id) FROM subscription_change_log")).scalar()
        writes = tuple(sum(s.system.applications.values()) for s in self.servers.values())
        feeds = tuple(len(self.system(n).feed) for n in self.feed_names)
        pending = len([p for p in list_pushes(self.project.state) if p.status == "pending"])
        applied = tuple((k, c.applied) for k, c in st.all_cursors(self.project.state).items())
        return (top, writes, feeds, pending, applied)

    # -- what each system holds ---------------------------------------------------------------

    @property
    def feed_names(self) -> list[str]:
        return [d.name for d in feed_systems(self.destinations)]

    def system(self, name: str) -> RecordSystem:
        system = self.servers[name].system
        assert isinstance(system, RecordSystem)
        return system

    def types(self) -> dict[str, Any]:
        with self.project.source.connect() as conn:
            return column_types(conn)

    def source_record(self, sid: str) -> dict[str, Any] | None:
        with self.project.source.connect() as conn:
            row = (
                conn.execute(sa.text("SELECT * FROM subscriptions WHERE id = :id"), {"id": sid})
                .mappings()
                .first()
            )
        return _content(normalize(dict(row), self.types())) if row else None

    def remote_record(self, system: str, sid: str) -> dict[str, Any] | None:
        record = self.system(system).records.get(sid)
        if record is None:
            return None
        fields = (
            subscription_from_crm(sid, record) if system == "crm" else subscription_from_erp(record)
        )
        return _content(normalize(fields, self.types()))

    def records(self, sid: str) -> dict[str, dict[str, Any] | None]:
        out = {"source": self.source_record(sid)}
        out.update({name: self.remote_record(name, sid) for name in self.feed_names})
        return out

    def assert_converged(self, sid: str, expected: Mapping[str, Any] | None) -> None:
        want = None if expected is None else _content(normalize(expected, self.types()))
        held = self.records(sid)
        wrong = {
            name: {
                k: (v, (want or {}).get(k))
                for k, v in (got or {}).items()
                if (want or {}).get(k) != v
            }
            if got and want
            else got
            for name, got in held.items()
            if got != want
        }
        assert not wrong, f"systems differ from the expected record: {wrong}"

    def change_log(self, sid: str) -> list[tuple[str, str]]:
        with self.project.source.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT op, origin FROM subscription_change_log WHERE subscription_id = :s"
                    " ORDER BY id"
                ),
                {"s": sid},
            ).all()
        return [(r.op, r.origin) for r in rows]

    def _writer(self) -> sa.Engine:
        return engine_for(self.project.settings.source_url, writer=True)


def _content(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record without bookkeeping (every system rewrites updated_at and version)."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in DEFAULT_IGNORED}


def policies_of(mapping: Mapping[str, Any]) -> ConflictPolicies:
    return ConflictPolicies(ConflictPolicy.from_mapping(mapping))


@contextmanager
def world(
    settings: Settings,
    tmp_path: Path,
    policy: Mapping[str, Any],
    names: tuple[str, ...] = ("erp", "crm", "accounting"),
) -> Iterator[World]:
    clock = Clock()
    with sandbox(clock, names) as servers:
        destinations = write_destinations(tmp_path / "destinations.toml", servers, read_s=2.0)
        project = Project(settings)
        path = tmp_path / "destinations.toml"
        yield World(
            project, servers, destinations, policies_of(policy), clock, destinations_path=path
        )


def seeded(w: World, sid: str = "s1") -> None:
    """A subscription created in the source at T0 and delivered everywhere."""
    w.insert(sid)
    w.deliver()


def record(**changes: Any) -> dict[str, Any]:
    return {"id": "s1", **BASE, "created_at": T0, **changes}


# -- the same concurrent edit under every strategy ---------------------------------------------

# Source (at +1 min): amount 12.00, status past_due, name. ERP (at +2 min): amount 15.00,
# status paused, category. amount and status conflict; name and category are one-sided.
CONCURRENT = {
    "source_wins": ({"strategy": "source_wins"}, {"amount": "12.00", "status": "past_due"}),
    "remote_wins": ({"strategy": "remote_wins"}, {"amount": "15.00", "status": "paused"}),
    "last_writer_wins": ({"strategy": "last_writer_wins"}, {"amount": "15.00", "status": "paused"}),
    "field_ownership": (
        {"strategy": "field_ownership", "field_owners": {"amount": "erp", "status": "source"}},
        {"amount": "15.00", "status": "past_due"},
    ),
    "manual": ({"strategy": "manual"}, {"amount": "13.00", "status": "active"}),
}


@pytest.mark.parametrize("strategy", sorted(CONCURRENT))
def test_a_concurrent_edit_ends_as_documented_on_every_system(
    settings: Settings, tmp_path: Path, strategy: str
) -> None:
    policy, winners = CONCURRENT[strategy]
    with world(settings, tmp_path, policy) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00", status="past_due", name="Local name")
        w.remote_edit("erp", "s1", 2, amount=Decimal("15.00"), status="paused", category="erp")
        w.settle()
        if strategy == "manual":
            (queued,) = st.list_conflicts(w.project.state)
            assert (queued.destination, queued.subscription_id) == ("erp", "s1")
            assert queued.fields == ["amount", "status"]
            resolved = resolve_conflict(
                w.project,
                w.destinations,
                queued.id,
                "merged",
                ["amount=13.00", "status=active"],
            )
            assert resolved.written_back and resolved.push_planned
            assert st.list_conflicts(w.project.state) == []
            w.settle()
        expected = record(
            amount=Decimal(winners["amount"]),
            status=winners["status"],
            name="Local name",
            category="erp",
        )
        w.assert_converged("s1", expected)
        outcomes = [e["outcome"] for e in history(w.project, "s1")]
        assert outcomes == (["queued", "resolved"] if strategy == "manual" else ["resolved"])
        decision = history(w.project, "s1")[-1]
        assert decision["strategy"] == ("manual" if strategy == "manual" else strategy)
        assert decision["base"]["amount"] == "10.0000"
        assert decision["remote"]["amount"] == "15.0000"


# ERP deletes (at +2 min) while the source updates (at +1 min).
DELETE_VS_UPDATE = {
    "source_wins": ({"strategy": "source_wins"}, True),
    "remote_wins": ({"strategy": "remote_wins"}, False),
    "last_writer_wins": ({"strategy": "last_writer_wins"}, False),
    "field_ownership": (
        {"strategy": "field_ownership", "field_owners": {"status": "source"}},
        True,
    ),
}


@pytest.mark.parametrize("strategy", sorted(DELETE_VS_UPDATE))
def test_delete_against_update_follows_the_strategys_rule(
    settings: Settings, tmp_path: Path, strategy: str
) -> None:
    policy, survives = DELETE_VS_UPDATE[strategy]
    with world(settings, tmp_path, policy) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_delete("erp", "s1", 2)
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("12.00")) if survives else None)


def test_last_writer_wins_keeps_an_update_made_after_the_delete(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}) as w:
        seeded(w)
        w.remote_delete("erp", "s1", 1)
        w.update("s1", 2, amount="12.00")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("12.00")))


# -- echo suppression --------------------------------------------------------------------------


def test_an_erp_edit_comes_back_once_and_never_returns_to_the_erp(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}) as w:
        seeded(w)
        erp, crm = w.system("erp"), w.system("crm")
        erp_writes_before = erp.applications
        w.remote_edit("erp", "s1", 1, amount=Decimal("19.90"), name="Renamed in the ERP")
        rounds = w.settle()
        for _ in range(3):  # more cycles change nothing: no ping-pong
            before = w.fingerprint()
            w.cycle()
            assert w.fingerprint() == before
        assert rounds <= 3
        assert w.change_log("s1") == [("c", "app"), ("u", "erp")]
        exported = read_exported(w.project.settings.export_dir / "subscription_changes")
        rows = [r for r in exported.to_pylist() if r["id"] == "s1"]
        assert [(r["_op"], r["_origin"]) for r in rows] == [("c", "app"), ("u", "erp")]
        assert erp.applications == erp_writes_before  # the ERP received no write for its edit
        assert len(erp.feed) == 1
        lsn = _last_lsn(w, "s1")
        assert crm.applications.get(f"crm:{lsn:020d}-{lsn:020d}:{lsn}") == 1
        journal = w.servers["accounting"].system.journal  # type: ignore[attr-defined]
        assert [(e["lsn"], e["kind"], e["amount"]) for e in journal if e["lsn"] == lsn] == [
            (lsn, "revenue", "9.9000")
        ]
        w.assert_converged("s1", record(amount=Decimal("19.90"), name="Renamed in the ERP"))
        (merged,) = history(w.project, "s1")
        assert merged["outcome"] == "merged" and merged["merged"]["name"] == "Renamed in the ERP"


def _last_lsn(w: World, sid: str) -> int:
    with w.project.source.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT MAX(lsn) FROM subscription_change_log WHERE subscription_id = :s"),
                {"s": sid},
            ).scalar_one()
        )


def test_a_remote_change_equal_to_the_base_is_an_echo(settings: Settings, tmp_path: Path) -> None:
    """A system that reports our own write (same content as the base) is not merged again."""
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        seeded(w)
        w.update("s1", 1, name="Local")  # not yet delivered: the echo must not push it
        w.remote_edit("erp", "s1", 2, name="Plan")  # a write of what the ERP already holds
        report = w.reconcile("erp")
        assert report.applied.outcomes == {"echo": 1}
        assert report.pushes.pushed == 0 and w.change_log("s1") == [("c", "app"), ("u", "app")]
        w.settle()
        w.assert_converged("s1", record(name="Local"))


def test_a_remote_value_that_does_not_convert_makes_the_change_invalid(
    settings: Settings, tmp_path: Path
) -> None:
    """A bad value is not merged into the source (nor kept raw): the change is `invalid`, the
    audit log says which field, and the feed moves on."""
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        seeded(w)
        before = w.change_log("s1")
        w.remote_edit("erp", "s1", 1, next_billing_date="next tuesday", name="ERP name")
        report = w.reconcile("erp")
        assert report.applied.outcomes == {"invalid": 1}
        assert w.change_log("s1") == before  # nothing written back
        [entry] = [e for e in history(w.project, "s1") if e["outcome"] == "invalid"]
        assert "next_billing_date" in json.dumps(entry, default=str)
        assert st.all_cursors(w.project.state)["erp"].applied == report.cursor


def test_normalize_refuses_a_bad_remote_value_and_keeps_our_own() -> None:
    """Columns added to the source reach us from a remote's `extra`/custom fields unparsed:
    for a remote's record a bad one is a MappingError (-> `invalid`), never a raw value."""
    from subscription_export.delivery.mapping import MappingError
    from subscription_export.reconcile.source_side import normalize

    types = {"id": "text", "seats": "integer"}
    assert normalize({"id": "s1", "seats": "7"}, types, strict=True) == {"id": "s1", "seats": 7}
    with pytest.raises(MappingError, match="'seats'"):
        normalize({"id": "s1", "seats": "many"}, types, strict=True)
    assert normalize({"id": "s1", "seats": "many"}, types) == {"id": "s1", "seats": "many"}


# -- edits in two systems at once --------------------------------------------------------------


def test_edits_in_the_erp_and_the_crm_merge_on_every_system(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}) as w:
        seeded(w)
        w.update("s1", 1, amount="11.00")
        w.remote_edit("erp", "s1", 2, status="paused")
        w.remote_edit("crm", "s1", 3, name="CRM name", amount=Decimal("14.00"))
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("14.00"), status="paused", name="CRM name"))
        origins = {origin for _, origin in w.change_log("s1")}
        assert origins == {"app", "erp", "crm"}


def test_a_remote_edit_clobbered_by_the_delivery_is_merged_and_pushed_back(
    settings: Settings, tmp_path: Path
) -> None:
    """The delivery overwrites the ERP after its user's edit; the edit still wins its fields."""
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_edit("erp", "s1", 2, name="ERP name")
        w.deliver()  # sends the app's update: the ERP loses its user's name
        assert w.remote_record("erp", "s1")["name"] == "Plan"  # type: ignore[index]
        report = w.reconcile("erp")
        assert report.applied.pushes_planned == 1 and report.pushes.pushed == 1
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("12.00"), name="ERP name"))
        keys = [p.idempotency_key for p in list_pushes(w.project.state)]
        assert keys == ["erp:reconcile:s1:1"]
        assert w.system("erp").applications["erp:reconcile:s1:1"] == 1


# -- configuration -----------------------------------------------------------------------------


def test_policies_come_from_the_env_and_a_file_per_destination(tmp_path: Path) -> None:
    assert load_policies(env={}).default.strategy.value == "last_writer_wins"
    assert load_policies(env={ENV_STRATEGY: "source_wins"}).default.strategy.value == (
        "source_wins"
    )
    path = tmp_path / "conflicts.toml"
    path.write_text(
        '[default]\nstrategy = "field_ownership"\n[default.field_owners]\namount = "erp"\n'
        '[destinations.crm]\nstrategy = "manual"\n'
    )
    policies = load_policies(env={ENV_POLICY_FILE: str(path)})
    assert policies.for_destination("erp").field_owners == {"amount": "erp"}
    assert policies.for_destination("crm").strategy.value == "manual"
    path.write_text('[destinations.crm]\nstrategy = "manual"\nfield_owners = {amount = "erp"}\n')
    with pytest.raises(ConfigError, match=r"destinations.crm.*field_owners"):
        load_policies(path, env={})
    with pytest.raises(ConfigError, match=ENV_STRATEGY):
        load_policies(env={ENV_STRATEGY: "newest"})


def test_manual_resolution_refuses_what_it_cannot_apply(settings: Settings, tmp_path: Path) -> None:
    with world(settings, tmp_path, {"strategy": "manual"}, ("erp",)) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_edit("erp", "s1", 2, amount=Decimal("15.00"))
        w.settle()
        (queued,) = st.list_conflicts(w.project.state)
        with pytest.raises(ReconcileError, match="needs --set for amount"):
            resolve_conflict(w.project, w.destinations, queued.id, "merged")
        with pytest.raises(ReconcileError, match="amount='x'"):
            resolve_conflict(w.project, w.destinations, queued.id, "local", ["amount=x"])
        w.remote_edit("erp", "s1", 3, name="Later ERP edit")  # joins the open conflict
        w.settle()
        (queued,) = st.list_conflicts(w.project.state)
        assert queued.remote["name"] == "Later ERP edit"  # type: ignore[index]
        resolve_conflict(w.project, w.destinations, queued.id, "remote")
        with pytest.raises(ReconcileError, match="already resolved"):
            resolve_conflict(w.project, w.destinations, queued.id, "remote")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("15.00"), name="Later ERP edit"))
        assert [e["outcome"] for e in history(w.project, "s1")] == [
            "queued",
            "queued",
            "resolved",
        ]


# -- crash between the write-back and the push -------------------------------------------------

_CHILD = """
from subscription_export.runtime import Project
from subscription_export.core.settings import Settings
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile.policies import load_policies
from subscription_export.delivery.config import load_destinations

destinations = load_destinations()
erp = destinations.get("erp")
policy = load_policies().for_destination("erp")
rc.reconcile_system(Project(Settings.from_env()), erp, policy, holder="reconcile-test")
raise SystemExit("the crash hook did not fire")
"""


@pytest.mark.parametrize(
    ("backend", "point", "one_database"),
    [
        ("sqlite", "after_write_back", False),
        ("sqlite", "after_write_back", True),
        ("sqlite", "before_push", False),
        pytest.param("postgresql", "after_write_back", True, marks=pytest.mark.integration),
        pytest.param("postgresql", "before_push", True, marks=pytest.mark.integration),
    ],
)
def test_a_reconcile_killed_before_its_push_converges_on_rerun_without_duplicates(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, point: str, one_database: bool
) -> None:
    """The child process dies (`os._exit`, no cleanup) right after the write-back committed, or
    right before the push is sent; `one_database`: the state lives in the source database, so
    the sync base and the pending push commit with the write-back."""
    if backend == "postgresql":
        source = request.getfixturevalue("pg_url")
    else:
        source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    settings = Settings(
        source_url=source,
        state_url=source if one_database else f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp", "crm")) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_edit("erp", "s1", 2, name="ERP name", amount=Decimal("15.00"))
        w.deliver()
        env = {
            **os.environ,
            **settings.as_env(),
            "SUBSCRIPTION_EXPORT_DESTINATIONS": str(tmp_path / "destinations.toml"),
            ENV_STRATEGY: "source_wins",
            CRASH_ENV: point,
            "PYTHONPATH": str(REPO),
        }
        child = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60
        )
        assert child.returncode == CRASH_EXIT, child.stderr
        assert w.change_log("s1")[-1] == ("u", "erp")  # the write-back committed
        assert w.system("erp").applications.get("erp:reconcile:s1:1") is None
        recorded = list_pushes(w.project.state)
        assert len(recorded) == (0 if point == "after_write_back" and not one_database else 1)

        w.reconcile("erp")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("12.00"), name="ERP name"))
        assert w.system("erp").applications["erp:reconcile:s1:1"] == 1
        assert [o for o in w.change_log("s1") if o[1] == "erp"] == [("u", "erp")]
        assert [e["ref"] for e in history(w.project, "s1")] == ["feed:1"]


def test_history_and_conflicts_are_json_ready(settings: Settings, tmp_path: Path) -> None:
    with world(settings, tmp_path, {"strategy": "manual"}, ("erp",)) as w:
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_edit("erp", "s1", 2, amount=Decimal("15.00"))
        w.settle()
        (queued,) = st.list_conflicts(w.project.state)
        shown = json.loads(json.dumps(describe_conflict(queued)))
        assert shown["local"]["amount"] == "12.0000" and shown["remote"]["amount"] == "15.0000"
        assert shown["remote_changed_at"] == "2026-03-01T12:02:00.000000Z"
        (entry,) = json.loads(json.dumps(history(w.project, "s1")))
        assert entry["detail"]["conflicts"] == ["amount"]
