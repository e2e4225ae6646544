"""The mock systems' semantics, called in-process (the HTTP layer is tested separately)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.messages import Request, Response
from subscription_export.sandbox.systems import (
    AccountingSystem,
    CrmSystem,
    ErpSystem,
    SandboxSystem,
    make_system,
)


def ticking_clock() -> Iterator[dt.datetime]:
    moment = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
    while True:
        moment += dt.timedelta(seconds=1)
        yield moment


def clock() -> Any:
    ticks = ticking_clock()
    return lambda: next(ticks)


def call(
    system: SandboxSystem,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    query: dict[str, str] | None = None,
) -> Response:
    headers = {"idempotency-key": key} if key else {}
    raw = json.dumps(body).encode() if body is not None else b""
    return system.handle(Request(method, path, query or {}, headers, raw))


def erp_record(ident: str = "s1", version: int = 1, **fields: Any) -> dict[str, Any]:
    record = {
        "id": ident,
        "user_id": "u1",
        "name": "Basic",
        "amount": "10.00",
        "currency": "EUR",
        "status": "active",
        "version": version,
    }
    record.update(fields)
    return record


def crm_upsert(ident: str, version: int = 1, key: str | None = None, **fields: Any) -> dict:
    record = {
        "customer_id": "u1",
        "plan_name": "Basic",
        "price": "10.00",
        "currency": "EUR",
        "status": "active",
        "version": version,
        **fields,
    }
    item = {"op": "upsert", "id": ident, "record": record}
    return {**item, "idempotency_key": key} if key else item


def entry(entry_id: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
    posted = {
        "entry_id": entry_id,
        "subscription_id": "s1",
        "kind": "revenue",
        "amount": "10.00",
        "currency": "EUR",
        "billing_date": "2026-06-01",
        "lsn": 1,
        **fields,
    }
    return {**posted, "idempotency_key": key} if key else posted


# -- ERP ---------------------------------------------------------------------------------------


def test_erp_upsert_versions_and_remote_versions() -> None:
    erp = ErpSystem()
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(version=1)).status == 201
    updated = call(erp, "PUT", "/subscriptions/s1", erp_record(version=2, amount="12.00"))
    assert (updated.status, updated.payload()["remote_version"]) == (200, 2)
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(version=2)).status == 200
    stale = call(erp, "PUT", "/subscriptions/s1", erp_record(version=1))
    assert (stale.status, stale.payload()["error"]) == (409, "stale_version")
    assert erp.records["s1"]["amount"] == "10.00"  # the equal-version write landed, not the stale
    assert erp.remote_versions == {"s1": 3}


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 10.0},
        {"amount": "ten"},
        {"currency": "eur"},
        {"status": "gone"},
        {"version": -1},
        {"id": "other"},
    ],
)
def test_erp_refuses_invalid_records(bad: dict) -> None:
    erp = ErpSystem()
    answer = call(erp, "PUT", "/subscriptions/s1", erp_record(**bad))
    assert answer.status == 422
    assert erp.records == {}


def test_erp_delete_semantics() -> None:
    erp = ErpSystem()
    assert call(erp, "DELETE", "/subscriptions/s1", {"version": 1}).status == 404
    call(erp, "PUT", "/subscriptions/s1", erp_record(version=3))
    assert call(erp, "DELETE", "/subscriptions/s1", {"version": 2}).status == 409
    assert call(erp, "DELETE", "/subscriptions/s1", query={"version": "3"}).status == 200
    assert erp.records == {} and erp.deleted_ids == {"s1"}
    # A write older than the deleted record cannot resurrect it; a newer one can.
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(version=2)).status == 409
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(version=4)).status == 201
    assert erp.deleted_ids == set()


def test_erp_idempotency_replay_and_mismatch() -> None:
    erp = ErpSystem()
    first = call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k1")
    replay = call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k1")
    assert (first.status, replay.status, replay.body) == (201, 201, first.body)
    assert replay.header("Idempotent-Replayed") == "true"
    reused = call(erp, "PUT", "/subscriptions/s1", erp_record(amount="11.00"), key="k1")
    assert (reused.status, reused.payload()["error"]) == (422, "idempotency_key_reused")
    assert erp.applications == {"k1": 1}
    assert erp.remote_versions == {"s1": 1}


def test_erp_routes() -> None:
    erp = ErpSystem()
    assert call(erp, "GET", "/nope").status == 404
    assert call(erp, "POST", "/subscriptions/s1", erp_record()).status == 405
    bad_json = erp.handle(Request("PUT", "/subscriptions/s1", {}, {}, b"{not json"))
    assert bad_json.status == 400


def test_request_faults_and_counters() -> None:
    erp = ErpSystem(FaultPlan(default=FaultSpec(rate_limit=1.0, retry_after_s=2)))
    limited = call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k")
    assert (limited.status, limited.header("Retry-After")) == (429, "2")
    erp.set_faults(FaultPlan(default=FaultSpec(error=1.0, error_statuses=(503,))))
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k").status == 503
    erp.set_faults(FaultPlan(default=FaultSpec(reset=1.0)))
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k").drop
    assert erp.records == {} and erp.applications == {}  # none of these applied anything

    erp.set_faults(FaultPlan(default=FaultSpec(lost_response=1.0)))
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k").drop
    assert erp.applications == {"k": 1}  # applied, but the answer was lost
    erp.set_faults(FaultPlan())
    assert call(erp, "PUT", "/subscriptions/s1", erp_record(), key="k").status == 201  # replay
    assert erp.applications == {"k": 1}
    assert erp.requests_by_status == {
        "429": 1,
        "503": 1,
        "reset": 1,
        "lost_response": 1,
        "201": 1,
    }
    assert erp.faults_injected == {
        "rate_limit": 1,
        "error": 1,
        "reset": 1,
        "lost_response": 1,
    }


# -- CRM ---------------------------------------------------------------------------------------


def test_crm_batch_reports_each_item() -> None:
    crm = CrmSystem()
    call(crm, "POST", "/batch", {"items": [crm_upsert("old", version=5)]})
    items = [
        crm_upsert("a"),
        crm_upsert("b", price=1.5),  # float money: refused
        crm_upsert("old", version=4),  # stale
        {"op": "delete", "id": "ghost", "version": 1},  # absent: fine
        {"op": "merge", "id": "a"},
    ]
    answer = call(crm, "POST", "/batch", {"items": items})
    assert answer.status == 200
    results = answer.payload()["results"]
    assert [(r["id"], r["status"], r["code"]) for r in results] == [
        ("a", "ok", 200),
        ("b", "error", 422),
        ("old", "error", 409),
        ("ghost", "ok", 200),
        ("a", "error", 422),
    ]
    assert results[3]["absent"] is True
    assert set(crm.records) == {"a", "old"}


def test_crm_items_are_applied_once_per_item_key_across_batches() -> None:
    crm = CrmSystem()
    call(crm, "POST", "/batch", {"items": [crm_upsert("a", key="ka")]}, key="b1")
    again = call(
        crm,
        "POST",
        "/batch",
        {"items": [crm_upsert("a", key="ka"), crm_upsert("b", key="kb")]},
        key="b2",
    )
    assert [r["status"] for r in again.payload()["results"]] == ["ok", "ok"]
    assert crm.applications == {"ka": 1, "kb": 1}
    assert crm.remote_versions == {"a": 1, "b": 1}
    changed = call(crm, "POST", "/batch", {"items": [crm_upsert("a", key="ka", price="2.00")]})
    assert changed.payload()["results"][0]["error"] == "idempotency_key_reused"


def test_crm_item_failures_apply_nothing_and_can_be_retried() -> None:
    crm = CrmSystem(FaultPlan(default=FaultSpec(item_failure=1.0)))
    items = [crm_upsert("a", key="ka"), crm_upsert("b", key="kb")]
    failed = call(crm, "POST", "/batch", {"items": items}, key="batch-1")
    assert {(r["status"], r["code"]) for r in failed.payload()["results"]} == {("error", 500)}
    assert crm.records == {} and crm.applications == {}
    # An answer with retryable item failures is not stored: the same batch key runs again.
    assert call(crm, "POST", "/batch", {"items": items}, key="batch-1").body == failed.body
    assert crm.faults_injected == {"item_failure": 4}
    crm.set_faults(FaultPlan())
    done = call(crm, "POST", "/batch", {"items": items}, key="batch-1")
    assert [r["status"] for r in done.payload()["results"]] == ["ok", "ok"]
    assert crm.applications == {"ka": 1, "kb": 1}
    # Now the answer is final and stored: the same key replays it, even with faults back on.
    crm.set_faults(FaultPlan(default=FaultSpec(item_failure=1.0)))
    replay = call(crm, "POST", "/batch", {"items": items}, key="batch-1")
    assert (replay.body, replay.header("Idempotent-Replayed")) == (done.body, "true")
    assert crm.applications == {"ka": 1, "kb": 1}


def test_crm_refuses_malformed_batches() -> None:
    crm = CrmSystem()
    assert call(crm, "POST", "/batch", {"items": "nope"}).status == 400
    assert call(crm, "POST", "/batch", {"items": [crm_upsert("a")] * 1001}).status == 422


# -- accounting --------------------------------------------------------------------------------


def test_accounting_posts_entries_once() -> None:
    ledger = AccountingSystem(clock=clock())
    answer = call(
        ledger,
        "POST",
        "/journal/batch",
        {"entries": [entry("JE-1-0", "k1"), entry("JE-2-0", "k2", kind="refund")]},
    )
    assert [r["status"] for r in answer.payload()["results"]] == ["ok", "ok"]
    # The same item key replays; the same entry under another key is a double booking.
    again = call(
        ledger,
        "POST",
        "/journal/batch",
        {"entries": [entry("JE-1-0", "k1"), entry("JE-1-0", "other")]},
    )
    assert [(r["status"], r["code"]) for r in again.payload()["results"]] == [
        ("ok", 200),
        ("error", 409),
    ]
    journal = ledger.journal
    assert [(e["entry_id"], e["kind"]) for e in journal] == [
        ("JE-1-0", "revenue"),
        ("JE-2-0", "refund"),
    ]
    assert journal[0]["posted_at"] == "2026-05-01T09:00:01Z"
    assert "idempotency_key" not in journal[0]
    assert ledger.applications == {"k1": 1, "k2": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "gift"},
        {"amount": "-1.00"},
        {"amount": "0"},
        {"amount": 12.5},
        {"billing_date": "2026-13-01"},
        {"lsn": "7"},
        {"currency": "EURO"},
    ],
)
def test_accounting_refuses_invalid_entries(bad: dict) -> None:
    ledger = AccountingSystem()
    answer = call(ledger, "POST", "/journal/batch", {"entries": [entry("JE-1-0", **bad)]})
    assert answer.payload()["results"][0]["code"] == 422
    assert ledger.journal == []


def test_accounting_has_no_change_feed() -> None:
    assert call(AccountingSystem(), "GET", "/changes").status == 404


# -- change feed -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["erp", "crm"])
def test_feed_has_user_edits_only(name: str) -> None:
    system = make_system(name, clock=clock())
    if name == "erp":
        call(system, "PUT", "/subscriptions/s1", erp_record(version=1))
        call(system, "PUT", "/subscriptions/s2", erp_record("s2", version=1))
    else:
        call(system, "POST", "/batch", {"items": [crm_upsert("s1"), crm_upsert("s2")]})
    assert system.changes()["changes"] == []  # our own writes are not echoed back

    edited = system.edit("s1", status="paused")
    assert edited["record"]["status"] == "paused"
    assert edited["record"]["updated_at"] == "2026-05-01T09:00:01Z"
    deleted = system.delete("s2")
    page = system.changes(after=0, limit=10)
    assert [(c["cursor"], c["id"], c["op"], c["remote_version"]) for c in page["changes"]] == [
        (1, "s1", "upsert", 2),
        (2, "s2", "delete", 2),
    ]
    assert page["changes"][1] == deleted
    assert page["changes"][1]["updated_at"] == "2026-05-01T09:00:02Z"
    assert page["next_cursor"] == 2
    assert system.changes(after=1, limit=1)["changes"][0]["id"] == "s2"
    assert system.changes(after=2) == {"changes": [], "next_cursor": 2}
    with pytest.raises(KeyError):
        system.edit("nobody", status="paused")


def test_feed_paging_over_the_route() -> None:
    erp = ErpSystem()
    call(erp, "PUT", "/subscriptions/s1", erp_record())
    for n in range(5):
        erp.edit("s1", name=f"Plan {n}")
    first = call(erp, "GET", "/changes", query={"after": "0", "limit": "2"}).payload()
    assert [c["cursor"] for c in first["changes"]] == [1, 2]
    rest = call(erp, "GET", "/changes", query={"after": str(first["next_cursor"])}).payload()
    assert [c["cursor"] for c in rest["changes"]] == [3, 4, 5]
    assert [c["remote_version"] for c in rest["changes"]] == [4, 5, 6]
    assert call(erp, "GET", "/changes", query={"limit": "0"}).status == 400
    assert call(erp, "GET", "/changes", query={"after": "x"}).status == 400
