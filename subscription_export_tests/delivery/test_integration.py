"""Delivery against the real sandbox servers on 127.0.0.1, with seeded faults.

The claim under test: whatever the network does (5xx, 429, resets, lost answers, answers that
come too late, failing batch items), after delivery each system holds exactly the expected
state, every logical operation was applied exactly once, and only invalid rows are dead
letters. Faults are drawn per endpoint from seeded streams in arrival order; since every row
needs at least one request, the first draws - which include every kind of fault for these
seeds - are always used, so the faults asserted below really happen on every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from subscription_export.delivery.clients import (
    HELD_BACK,
    AccountingClient,
    CrmClient,
    DeliveryClient,
    ErpClient,
    idempotency_key,
)
from subscription_export.delivery.dispatch import deliver
from subscription_export.delivery.mapping import (
    crm_item,
    erp_record,
    is_delete,
    journal_plan,
    subscription_from_crm,
    subscription_from_erp,
)
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import SandboxServer, running_sandbox
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000000200"
BAD_IDS = {"bad_1"}
CLIENTS: dict[str, type[DeliveryClient]] = {
    "erp": ErpClient,
    "crm": CrmClient,
    "accounting": AccountingClient,
}

HOSTILE = FaultSpec(
    error=0.30,
    error_statuses=(500, 503),
    rate_limit=0.10,
    retry_after_s=1,  # capped by the client's 20 ms delay cap
    reset=0.03,
    lost_response=0.03,
    timeout=0.03,
    timeout_s=0.2,
    latency_s=0.001,
    item_failure=0.05,
)


def scenario(seed: int = 2024) -> list[dict[str, Any]]:
    """Creates, price and status changes, currency switches, deletes, and invalid rows."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    live: dict[str, dict[str, Any]] = {}

    def emit(sid: str, op: str, **fields: Any) -> None:
        row = change_row(len(rows) + 1, sid, op, **fields)
        rows.append(row)
        if op == "d":
            live.pop(sid)
        else:
            live[sid] = fields

    for n in range(30):
        amount = Decimal(rng.randrange(100, 5000)).scaleb(-2)
        status = "paused" if n % 7 == 0 else "active"
        currency = rng.choice(["EUR", "USD"])
        emit(f"sub_{n:02d}", "c", amount=amount, status=status, currency=currency, version=1)
    emit("bad_1", "c", currency="euro", version=1)
    for _ in range(110):
        sid = rng.choice(sorted(set(live) - BAD_IDS))
        fields = dict(live[sid])
        fields["version"] += 1
        action = rng.random()
        if action < 0.08:
            emit(sid, "d", **fields)
            continue
        if action < 0.55:
            fields["amount"] = Decimal(rng.randrange(100, 9999)).scaleb(-2) + Decimal("0.0001")
        elif action < 0.85:
            fields["status"] = rng.choice(["active", "paused", "cancelled", "past_due"])
        else:
            fields["currency"] = "USD" if fields["currency"] == "EUR" else "EUR"
        emit(sid, "u", **fields)
    emit("bad_1", "u", currency="euro", version=2, amount=Decimal("3.00"))
    return rows


def final_images(rows: list[dict[str, Any]], mapper: Any) -> tuple[dict[str, Any], set[str]]:
    records: dict[str, Any] = {}
    deleted: set[str] = set()
    for row in rows:
        if row["id"] in BAD_IDS:
            continue
        if is_delete(row):
            records.pop(row["id"])
            deleted.add(row["id"])
        else:
            records[row["id"]] = mapper(row)
    return records, deleted


def client_for(name: str, server: SandboxServer, **kwargs: Any) -> DeliveryClient:
    return CLIENTS[name](server.url, retry=fast_policy(**kwargs), timeout=(1.0, 0.1))


@pytest.fixture
def sandbox() -> Iterator[dict[str, SandboxServer]]:
    with running_sandbox(faults=FaultPlan(default=HOSTILE, seed=17)) as servers:
        yield servers


def assert_expected_state(servers: dict[str, SandboxServer], rows: list[dict[str, Any]]) -> None:
    valid = [row for row in rows if row["id"] not in BAD_IDS]
    erp, crm, accounting = (servers[n].system for n in ("erp", "crm", "accounting"))

    records, deleted = final_images(rows, erp_record)
    assert erp.records == records
    assert erp.deleted_ids == deleted
    assert erp.applications == {idempotency_key("erp", WINDOW, r["_lsn"]): 1 for r in valid}

    records, deleted = final_images(rows, lambda row: crm_item(row)["record"])
    assert crm.records == records
    assert crm.deleted_ids == deleted
    assert crm.applications == {idempotency_key("crm", WINDOW, r["_lsn"]): 1 for r in valid}

    plan = journal_plan(rows)
    expected_entries = {
        entry["entry_id"]: entry
        for lsn, entries in plan.items()
        if isinstance(entries, list)
        for entry in entries
        if entry["subscription_id"] not in BAD_IDS
    }
    journal = accounting.journal
    assert len(journal) == len(expected_entries)  # no entry booked twice
    assert {e["entry_id"]: {k: v for k, v in e.items() if k != "posted_at"} for e in journal} == (
        expected_entries
    )
    expected_keys = set()
    for entry in expected_entries.values():
        n = entry["entry_id"].rsplit("-", 1)[1]  # JE-{lsn}-{n}
        expected_keys.add(f"{idempotency_key('accounting', WINDOW, entry['lsn'])}.{n}")
    assert accounting.applications == dict.fromkeys(expected_keys, 1)


def test_delivery_under_seeded_faults_reaches_the_exact_expected_state(sandbox) -> None:
    rows = scenario()
    bad_lsns = [r["_lsn"] for r in rows if r["id"] in BAD_IDS]
    reports = {}
    for name, server in sandbox.items():
        with client_for(name, server) as client:
            reports[name] = deliver(
                rows, client, window_key=WINDOW, batch_size=8, max_concurrency=4
            )

    for name, report in reports.items():
        assert [r.lsn for r in report.results] == [r["_lsn"] for r in rows]
        assert [r.lsn for r in report.dead_letters] == bad_lsns, name
        errors = [r.error or "" for r in report.dead_letters]
        if name == "accounting":  # a ledger: every entry is refused on its own
            assert all("422" in e for e in errors)
        else:  # the record's later changes wait behind its first refusal (per-record order)
            assert "422" in errors[0] and set(errors[1:]) == {HELD_BACK}
        assert report.stats.retried_attempts > 0
    assert reports["erp"].stats.delivered == len(rows) - len(bad_lsns)
    assert reports["accounting"].stats.skipped > 0  # e.g. a paused subscription changed price

    assert_expected_state(sandbox, rows)

    erp_faults = sandbox["erp"].system.faults_injected
    for kind in ("error", "rate_limit", "reset", "lost_response", "timeout"):
        assert erp_faults.get(kind, 0) > 0, (kind, erp_faults)
    for name in ("crm", "accounting"):
        faults = sandbox[name].system.faults_injected
        assert faults.get("error", 0) > 0 and faults.get("item_failure", 0) > 0, (name, faults)


def test_redelivering_a_window_after_a_crash_applies_nothing_twice(sandbox) -> None:
    rows = scenario(seed=7)
    for name, server in sandbox.items():
        with client_for(name, server) as client:
            deliver(rows[:60], client, window_key=WINDOW, batch_size=8, max_concurrency=3)
            # The run "crashed" after part of the window; the retry sends the whole window.
            report = deliver(rows, client, window_key=WINDOW, batch_size=16, max_concurrency=2)
            assert {r.status for r in report.results} <= {"delivered", "skipped", "dead_letter"}
            assert [r.subscription_id for r in report.dead_letters] == ["bad_1", "bad_1"]
    assert_expected_state(sandbox, rows)


def test_stale_versions_are_dead_lettered_not_applied() -> None:
    with running_sandbox(("erp", "crm")) as servers:
        for name, server in servers.items():
            with client_for(name, server) as client:
                newer = change_row(2, "sub_1", "c", amount="20.00", version=5)
                older = change_row(3, "sub_1", "u", amount="10.00", version=4)
                results = client.send_rows([newer, older], window_key=WINDOW)
                assert [r.status for r in results] == ["delivered", "dead_letter"]
                assert "stale_version" in (results[1].error or "")
                assert results[1].attempts == 1


def test_change_feed_brings_back_user_edits_only(sandbox) -> None:
    rows = [change_row(1, "sub_1", version=1), change_row(2, "sub_2", version=1)]
    quiet = FaultPlan(endpoints={"GET /changes": FaultSpec(error=0.5, rate_limit=0.2)}, seed=5)
    for name in ("erp", "crm"):
        server = sandbox[name]
        server.system.set_faults(quiet)
        client = client_for(name, server)
        assert [r.status for r in client.send_rows(rows, window_key=WINDOW)] == ["delivered"] * 2
        assert client.fetch_changes().changes == []  # our own writes never come back

        price = {"amount": "12.50"} if name == "erp" else {"price": "12.50"}
        for body in (
            {"id": "sub_1", "fields": {**price, "status": "paused"}},
            {"id": "sub_2", "fields": {"name" if name == "erp" else "plan_name": "Gold"}},
            {"id": "sub_2", "delete": True},
        ):
            answer = requests.post(f"{server.url}/_sandbox/edit", json=body, timeout=5)
            assert answer.status_code == 200

        first = client.fetch_changes(after=0, limit=2)
        assert [(c.cursor, c.id, c.op) for c in first.changes] == [
            (1, "sub_1", "upsert"),
            (2, "sub_2", "upsert"),
        ]
        rest = client.fetch_changes(after=first.next_cursor, limit=2)
        assert [(c.cursor, c.id, c.op) for c in rest.changes] == [(3, "sub_2", "delete")]
        assert client.fetch_changes(after=rest.next_cursor).next_cursor == 3

        edited = first.changes[0]
        fields = (
            subscription_from_erp(edited.record)
            if name == "erp"
            else subscription_from_crm(edited.id, edited.record)
        )
        assert (fields["amount"], fields["status"]) == (Decimal("12.50"), "paused")
        assert edited.remote_version == 2  # our create, then the user's edit
        assert edited.updated_at.tzinfo is not None
        assert fields["updated_at"] == edited.updated_at
        client.close()
